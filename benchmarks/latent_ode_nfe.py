"""The latent_ode task's vanilla model: forward NFE of local_reg beside torchdiffeq.

Trains the task's vanilla latent ODE (``--quick`` data and settings: 25 output times, tanh MLP
dynamics, rtol = atol = 1e-6, Adam 1e-2, batch 50) once per backend from the same seed, and reports
the NFE of a forward solve on the test batch (250 series) at initialization and after training:
``local_reg`` tsit5 interpolating at the output times (the default), ``local_reg`` tsit5 landing on
each (``step_to_outputs=True``), ``local_reg`` dopri5 (with its default PI controller, and with
an integral controller like torchdiffeq's, ``PIController(beta1=0.2, beta2=0)``; and both again
with torchdiffeq's error estimate, 2/3 of Hairer's), and torchdiffeq dopri5. The NFE of the
trained models are also measured on one common model (the one ``local_reg`` tsit5 trained), so
that the solvers are compared on identical dynamics.

Last, the step-size controllers at equal error: the common model's latent ODE, copied to float64,
from the test batch's posterior means over [0, 5] at rtol = atol = 1e-4 ... 1e-9, the error at t = 5
against scipy's DOP853 at 1e-13, and the NFE ratio at equal error (``peers.equal_error_ratio``).

With ``--observation-times irregular`` each series has its own times and the batch is solved at
their union (hundreds of output times), the task's default.

    python benchmarks/latent_ode_nfe.py [--iterations 400] [--observation-times grid] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
import torchdiffeq
from fields import CallCounter
from peers import equal_error_ratio, reference
from torch.utils.data import DataLoader
from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU

from local_reg import PIController, Regularized, odeint
from local_reg.experiments.tasks.latent_ode import LatentODETask, masked_mse
from local_reg.tableaus import DOPRI5

# local_reg's dopri5 with torchdiffeq's error estimate: the same solution, torchdiffeq's embedded weights
# (its Dormand--Prince--Shampine tableau), whose estimate is 2/3 of Hairer's (local_reg's).
DOPRI5_TORCHDIFFEQ_ESTIMATE = dataclasses.replace(
    DOPRI5,
    name="dopri5_torchdiffeq_estimate",
    error_weights=tuple(float(w) for w in _DORMAND_PRINCE_SHAMPINE_TABLEAU.c_error),
)

SOLVERS = {
    "local_reg tsit5": {"backend": "local_reg", "method": "tsit5"},
    "local_reg tsit5, step_to_outputs": {
        "backend": "local_reg",
        "method": "tsit5",
        "options": {"step_to_outputs": True},
    },
    "local_reg dopri5": {"backend": "local_reg", "method": "dopri5"},
    # torchdiffeq's controller: integral, exponent 1 / order (order 5 for dopri5), safety 0.9, factors
    # in [0.2, 10] (torchdiffeq also never shrinks an accepted step).
    "local_reg dopri5, integral controller": {
        "backend": "local_reg",
        "method": "dopri5",
        "options": {"controller": PIController(beta1=0.2, beta2=0.0)},
    },
    "local_reg dopri5, torchdiffeq's error estimate": {
        "backend": "local_reg",
        "method": DOPRI5_TORCHDIFFEQ_ESTIMATE,
    },
    "local_reg dopri5, torchdiffeq's error estimate, integral controller": {
        "backend": "local_reg",
        "method": DOPRI5_TORCHDIFFEQ_ESTIMATE,
        "options": {"controller": PIController(beta1=0.2, beta2=0.0)},
    },
    "torchdiffeq dopri5": {"backend": "torchdiffeq", "method": "dopri5"},
}


def build(task: LatentODETask, settings: dict, solver: dict, seed: int):
    torch.manual_seed(seed)
    field = CallCounter(task.build_dynamics(settings))
    block = Regularized(field, rtol=settings["solver"]["rtol"], atol=settings["solver"]["atol"], **solver)
    return task.build_network(block, settings), field


def test_nfe(model, field, test) -> tuple[int, float]:
    values, mask = test[:2]
    model.eval()
    field.calls = 0
    with torch.no_grad():
        prediction, _ = model(*test)
    model.train()
    return field.calls, float(masked_mse(prediction, values, mask))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--observation-times", choices=("grid", "irregular"), default="grid")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be at least 1 (the table reports the NFE per training call)")
    torch.set_num_threads(args.threads)
    task = LatentODETask()
    settings = {**task.settings("quick"), "observation_times": args.observation_times}
    data = task.load_data(settings, args.seed)
    test = data.test.tensors
    trained = {}
    print(f"latent_ode quick, {args.observation_times} times, {args.iterations} iterations, seed {args.seed}")
    print("| solver (training and test) | NFE at init | NFE trained | test mse | train NFE / iteration |")
    print("|---|---|---|---|---|")
    for name, solver in SOLVERS.items():
        model, field = build(task, settings, solver, args.seed)
        initial, _ = test_nfe(model, field, test)
        if args.observation_times == "irregular" and "step_to_outputs" in name:
            # A step per union time: thousands of NFE per iteration. Measured on the common model only.
            print(f"| {name} | {initial} | (not trained) | | |")
            continue
        optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
        loader = DataLoader(
            data.train,
            batch_size=settings["batch_size"],
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        iteration, train_calls = 0, 0
        while iteration < args.iterations:
            for batch in loader:
                field.calls = 0
                loss, _ = task.training_loss(model, batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                train_calls += field.calls
                iteration += 1
                if iteration == args.iterations:
                    break
        final, mse = test_nfe(model, field, test)
        trained[name] = model
        print(f"| {name} | {initial} | {final} | {mse:.4f} | {train_calls / args.iterations:.0f} |")
    # The same trained dynamics under every solver.
    common_model = trained["local_reg tsit5"]
    print("\nOn the model local_reg tsit5 trained:")
    print("| solver | test NFE | test mse |")
    print("|---|---|---|")
    for name, solver in SOLVERS.items():
        model, field = build(task, settings, solver, args.seed)
        model.load_state_dict(common_model.state_dict())
        nfe, mse = test_nfe(model, field, test)
        print(f"| {name} | {nfe} | {mse:.4f} |")
    equal_error_table(common_model, test)


def equal_error_table(model, test) -> None:
    """NFE and error of each solver on the model's own latent ODE, in float64, and the ratios to
    torchdiffeq dopri5 at equal error."""
    with torch.no_grad():
        z0 = model.encode(*test)[0].double()
    field = CallCounter(copy.deepcopy(model.block.func.field).double())
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    exact = reference(field, z0, 5.0)
    solvers = {
        "local_reg tsit5": lambda tol: odeint(field, z0, t, method="tsit5", rtol=tol, atol=tol).ys[-1],
        "local_reg dopri5": lambda tol: odeint(field, z0, t, method="dopri5", rtol=tol, atol=tol).ys[-1],
        "torchdiffeq dopri5": lambda tol: torchdiffeq.odeint(field, z0, t, rtol=tol, atol=tol)[-1],
    }
    rows = {}
    print("\nThe same latent ODE in float64, error at t = 5 against DOP853 at 1e-13:")
    print("| rtol = atol | " + " | ".join(f"{name} NFE (error)" for name in solvers) + " |")
    print("|---|" + "---|" * len(solvers))
    for tol in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        cells = []
        for name, solve in solvers.items():
            field.calls = 0
            with torch.no_grad():
                error = (solve(tol) - exact).abs().max().item()
            rows[(name, tol)] = (error, field.calls)
            cells.append(f"{field.calls} ({error:.1e})")
        print(f"| {tol:.0e} | " + " | ".join(cells) + " |")
    for name in list(solvers)[:2]:
        span = equal_error_ratio(rows, name, "torchdiffeq dopri5", 1)
        ratio = "n/a" if span is None else f"{span[0]:.2f}-{span[1]:.2f}x"
        print(f"NFE {name} / torchdiffeq dopri5 at equal error: {ratio}")


if __name__ == "__main__":
    main()
