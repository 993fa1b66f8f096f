"""How much of a gap between two arms of the experiments is noise of torch's global random stream.

A local arm draws its ``t_reg`` from torch's global stream (``LocallyRegularized`` without
``generator=``), so on tasks whose training also reads that stream (the latent ODE's ``z0`` sample,
an SDE's Brownian seeds) everything drawn after it differs from the vanilla arm's of the same seed:
the two arms train on other noise. This script trains the vanilla arm of each task and seed twice,
as the runner does and with one extra draw from the global stream per iteration (what a ``t_reg``
draw does to it), and prints the ratio of the second to the first: the gap a regularizer must
exceed to be more than that noise. Results in docs/results.md ("Two arms of one seed, on other
noise").

    python experiments/stream_noise_floor.py --out results/stream_noise_floor
    python experiments/stream_noise_floor.py --out results/stream_noise_floor --tasks latent_ode --seeds 0 1 2

Each run is saved as ``OUT/TASK_sSEED_{plain,shifted}.json`` when it finishes; a rerun skips those
(the name holds no ``--size``: runs of another size go to another ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from local_reg.experiments import runner
from local_reg.experiments.tasks import REGISTRY


def train(task_name: str, seed: int, shifted: bool, size: str = "quick") -> dict:
    task_class = type(REGISTRY[task_name])
    training_loss = task_class.training_loss

    def with_one_more_draw(self, model, batch):
        torch.rand((), dtype=torch.float64)  # what a local arm's t_reg draw takes from the stream
        return training_loss(self, model, batch)

    if shifted:
        task_class.training_loss = with_one_more_draw
    try:
        with tempfile.TemporaryDirectory() as scratch:
            spec = runner.RunSpec(task_name, "vanilla", seed, size, "direct", {})
            record = runner.train_run(spec, Path(scratch), progress=False)
    finally:
        task_class.training_loss = training_loss
    metric = REGISTRY[task_name].metric
    return {"test_metric": record["test"][metric], "test_nfe": record["test_nfe"], "metric": metric}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=["latent_ode", "spiral_sde", "nsde_digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", choices=runner.SIZES, default="quick")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = []
    for task_name in args.tasks:
        for seed in args.seeds:
            pair = {}
            for shifted in (False, True):
                path = args.out / f"{task_name}_s{seed}_{'shifted' if shifted else 'plain'}.json"
                if not path.exists():
                    result = train(task_name, seed, shifted, args.size)
                    scratch = path.with_suffix(".tmp")
                    scratch.write_text(json.dumps(result))
                    scratch.replace(path)
                pair[shifted] = json.loads(path.read_text())
            rows.append((task_name, seed, pair[False], pair[True]))
            plain, shifted_run = pair[False], pair[True]
            print(
                f"{task_name} seed {seed}: test {plain['metric']} {plain['test_metric']:.4g} -> "
                f"{shifted_run['test_metric']:.4g}, test NFE {plain['test_nfe']:.1f} -> "
                f"{shifted_run['test_nfe']:.1f}",
                flush=True,
            )
    print(
        "\n| task | metric | per seed: shifted / plain | ratio of means | test NFE per seed "
        "| test NFE ratio of means |"
    )
    print("|---|---|---|---|---|---|")
    for task_name in args.tasks:
        pairs = [(plain, shifted) for name, _, plain, shifted in rows if name == task_name]
        metric = pairs[0][0]["metric"]

        def ratio(key: str, pairs: list[tuple[dict, dict]] = pairs) -> float:
            return statistics.mean(s[key] for _, s in pairs) / statistics.mean(p[key] for p, _ in pairs)

        per_seed = " / ".join(f"{s['test_metric'] / p['test_metric']:.3f}" for p, s in pairs)
        per_seed_nfe = " / ".join(f"{s['test_nfe'] / p['test_nfe']:.2f}" for p, s in pairs)
        print(
            f"| {task_name} | {metric} | {per_seed} | {ratio('test_metric'):.3f} | {per_seed_nfe} | "
            f"{ratio('test_nfe'):.3f} |"
        )


if __name__ == "__main__":
    main()
