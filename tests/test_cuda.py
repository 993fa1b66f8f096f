"""The library on a CUDA device: every public path run there against the same computation on the CPU
in float64 (or an analytic solution), and everything it returns on the device it was given.

Skipped where no CUDA device is present (CI has none). ``LOCAL_REG_TEST_DEVICE=cpu`` runs the module
on the CPU instead, to check the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torchdiffeq
import torchsde
from problems import lotka_volterra

import local_reg.compat
from local_reg import (
    TABLEAUS,
    BacksolveAdjoint,
    GloballyRegularized,
    LocallyRegularized,
    RNODERegularized,
    SteerRegularized,
    TayNODERegularized,
    odeint,
    odeint_event,
    sdeint,
)

DEVICE = torch.device(os.environ.get("LOCAL_REG_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device"
)

DT = torch.float64
ADAPTIVE = [name for name, tableau in TABLEAUS.items() if tableau.adaptive]
GRADIENTS = ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
T = torch.linspace(0.0, 1.0, 5, dtype=DT)


class MLPField(torch.nn.Module):
    """A small time-dependent neural vector field, the same weights on every device."""

    def __init__(self, dim: int = 2, hidden: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.l1 = torch.nn.Linear(dim + 1, hidden, dtype=DT)
        self.l2 = torch.nn.Linear(hidden, dim, dtype=DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=DT) / math.sqrt(p.shape[-1]))

    def forward(self, t, y):
        t_column = t.to(y.dtype).expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, t_column], dim=-1))))


def y0_batch() -> torch.Tensor:
    return torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=DT)


def on_device(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert tensor.device.type == DEVICE.type, f"a result on {tensor.device}, not {DEVICE}"


def assert_same(device_value: torch.Tensor, cpu_value: torch.Tensor, rtol: float) -> None:
    on_device(device_value)
    torch.testing.assert_close(device_value.cpu(), cpu_value, rtol=rtol, atol=rtol * 1e-2)


def parameter_gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


# The solver -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ADAPTIVE)
def test_every_adaptive_tableau_solves_as_on_the_cpu(method):
    y0 = torch.tensor([1.0, 1.0], dtype=DT)
    tolerance = 1e-8 if TABLEAUS[method].order >= 4 else 1e-6  # low orders: a few hundred steps
    cpu = odeint(lotka_volterra, y0, T, method=method, rtol=tolerance, atol=tolerance)
    device = odeint(
        lotka_volterra, y0.to(DEVICE), T.to(DEVICE), method=method, rtol=tolerance, atol=tolerance
    )
    # Rounding may differ between the devices' kernels, so a step decision near the tolerance may
    # too: the solutions agree far below the tolerance and the step counts within a step or two.
    assert_same(device.ys, cpu.ys, rtol=1e-9)
    n_stages = TABLEAUS[method].n_stages
    assert abs(device.stats.nfe - cpu.stats.nfe) <= 2 * n_stages


def test_outputs_dense_solution_and_recorded_states_live_on_the_device():
    func = MLPField().to(DEVICE)
    y0 = y0_batch().to(DEVICE)
    solution = odeint(func, y0, T.to(DEVICE), rtol=1e-7, atol=1e-9, dense=True, record_states=True)
    reference = odeint(MLPField(), y0_batch(), T, rtol=1e-7, atol=1e-9, dense=True, record_states=True)
    assert_same(solution.ys, reference.ys, rtol=1e-9)
    inside = torch.tensor([0.13, 0.61, 0.97], dtype=DT)
    assert_same(solution.evaluate(inside.to(DEVICE)), reference.evaluate(inside), rtol=1e-9)
    assert_same(solution.evaluate(0.42), reference.evaluate(0.42), rtol=1e-9)
    on_device(solution.steps.states[-1])


def test_interpolated_outputs_cost_no_extra_steps_on_the_device():
    func, y0 = MLPField().to(DEVICE), y0_batch().to(DEVICE)
    two = odeint(func, y0, torch.tensor([0.0, 1.0], dtype=DT, device=DEVICE), rtol=1e-7, atol=1e-9)
    many = odeint(func, y0, torch.linspace(0, 1, 101, dtype=DT, device=DEVICE), rtol=1e-7, atol=1e-9)
    assert many.stats.nfe == two.stats.nfe
    assert_same(many.ys[-1], two.ys[-1].cpu(), rtol=1e-12)


def test_float32_solve_on_the_device_is_within_its_tolerance():
    reference = odeint(MLPField(), y0_batch(), T, rtol=1e-12, atol=1e-12).ys
    func = MLPField().to(DEVICE, torch.float32)
    ys = odeint(func, y0_batch().to(DEVICE, torch.float32), T.float().to(DEVICE), rtol=1e-5, atol=1e-6).ys
    assert ys.dtype == torch.float32
    assert_same(ys.double(), reference, rtol=1e-4)


def test_tuple_state_on_the_device():
    def field(t, state):
        position, velocity = state
        return velocity, -position

    state = (torch.ones(3, dtype=DT, device=DEVICE), torch.zeros(3, dtype=DT, device=DEVICE))
    ys = odeint(field, state, T.to(DEVICE), rtol=1e-10, atol=1e-12).ys
    on_device(*ys)
    torch.testing.assert_close(ys[0][:, 0].cpu(), torch.cos(T), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ys[1][:, 0].cpu(), -torch.sin(T), rtol=1e-8, atol=1e-10)


def test_event_time_on_the_device_is_the_analytic_one():
    """``y' = -y`` from 1 crosses 1/2 at ``ln 2``."""
    y0 = torch.ones(1, dtype=DT, device=DEVICE)
    t0 = torch.tensor(0.0, dtype=DT, device=DEVICE)
    event_t, solution = odeint_event(
        lambda t, y: -y, y0, t0, event_fn=lambda t, y: y[0] - 0.5, rtol=1e-10, atol=1e-12
    )
    on_device(event_t, solution.ys)
    assert abs(float(event_t) - math.log(2.0)) < 1e-8


# Gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_every_gradient_method_on_the_device_gives_the_cpu_gradient(gradient):
    method = BacksolveAdjoint(rtol=1e-11, atol=1e-12) if gradient == "adjoint" else gradient

    def loss_and_gradients(device: torch.device):
        func = MLPField().to(device)
        y0 = y0_batch().to(device).requires_grad_()
        ys = odeint(func, y0, T.to(device), rtol=1e-9, atol=1e-11, gradient=method).ys
        loss = ys.pow(2).sum()
        return loss, torch.autograd.grad(loss, [y0, *func.parameters()])

    cpu_loss, cpu_gradients = loss_and_gradients(torch.device("cpu"))
    device_loss, device_gradients = loss_and_gradients(DEVICE)
    assert_same(device_loss, cpu_loss, rtol=1e-10)
    for device_gradient, cpu_gradient in zip(device_gradients, cpu_gradients, strict=True):
        assert_same(device_gradient, cpu_gradient, rtol=1e-7 if gradient == "adjoint" else 1e-9)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_exact_gradient_methods_equal_direct_on_the_device(gradient):
    """Gradients through outputs interpolated inside steps, as the CPU tests check them."""
    func = MLPField().to(DEVICE)
    y0 = y0_batch().to(DEVICE)
    t = torch.tensor([0.0, 0.1, 0.37, 0.8, 1.3], dtype=DT, device=DEVICE)

    def gradients(method: str) -> list[torch.Tensor]:
        ys = odeint(func, y0, t, rtol=1e-6, atol=1e-8, gradient=method).ys
        return parameter_gradients(
            func, (ys * torch.linspace(-1, 1, 5, dtype=DT, device=DEVICE)[:, None, None]).sum()
        )

    for exact, direct in zip(gradients(gradient), gradients("direct"), strict=True):
        on_device(exact)
        torch.testing.assert_close(exact, direct, rtol=1e-10, atol=1e-12)


def test_compat_odeint_on_the_device_matches_torchdiffeq():
    func, y0 = MLPField().to(DEVICE), y0_batch().to(DEVICE)
    ours = local_reg.compat.odeint(func, y0, T.to(DEVICE), rtol=1e-9, atol=1e-11)
    theirs = torchdiffeq.odeint(func, y0, T.to(DEVICE), rtol=1e-9, atol=1e-11)
    on_device(ours)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)


@pytest.mark.filterwarnings("error:torch.compile could not build")
@pytest.mark.parametrize("compile", [True, {"mode": "reduce-overhead"}], ids=["inductor", "cuda-graphs"])
def test_compiled_step_on_the_device_equals_the_eager_one(compile):
    """With CUDA graphs each replay reuses the last one's output memory, which the loop still holds.
    A step the compiler cannot build would run eagerly (the test would compare eager with eager):
    that warning fails the test."""
    func, y0 = MLPField().to(DEVICE), y0_batch().to(DEVICE)
    eager = odeint(func, y0, T.to(DEVICE), rtol=1e-7, atol=1e-9)
    compiled = odeint(func, y0, T.to(DEVICE), rtol=1e-7, atol=1e-9, compile=compile)
    assert compiled.stats.nfe == eager.stats.nfe
    on_device(compiled.ys)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-12)
    eager_gradients = parameter_gradients(func, eager.ys.pow(2).sum())
    compiled_gradients = parameter_gradients(func, compiled.ys.pow(2).sum())
    for compiled_gradient, eager_gradient in zip(compiled_gradients, eager_gradients, strict=True):
        torch.testing.assert_close(compiled_gradient, eager_gradient, rtol=1e-10, atol=1e-12)


# SDEs -------------------------------------------------------------------------------------------


def test_sdeint_on_the_device_converges_to_the_analytic_gbm_path():
    """``dy = mu y dt + sigma y dW`` has ``y(1) = y0 exp((mu - sigma^2/2) + sigma W(1))`` on the
    Brownian path the solve used; Euler--Maruyama's strong error falls like ``h^(1/2)``."""
    mu, sigma = 0.5, 0.6

    class GBM(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return mu * y

        def g(self, t, y):
            return sigma * y

    y0 = torch.full((256, 1), 1.0, dtype=DT, device=DEVICE)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(256, 1), dtype=DT, device=DEVICE, entropy=5)
    exact = y0 * torch.exp(torch.tensor(mu - 0.5 * sigma**2) + sigma * bm(0.0, 1.0))
    errors = []
    for h in (2.0**-4, 2.0**-8):
        solution = sdeint(GBM(), y0, torch.tensor([0.0, 1.0], dtype=DT, device=DEVICE), step_size=h, bm=bm)
        on_device(solution.ys)
        errors.append(float((solution.ys[-1] - exact).abs().mean()))
    assert errors[1] < errors[0] / 2.5  # sqrt(16) = 4 in expectation; 2.5 leaves room for the draw
    adaptive = sdeint(
        GBM(), y0, torch.tensor([0.0, 1.0], dtype=DT, device=DEVICE), rtol=1e-3, atol=1e-3, bm=bm
    )
    on_device(adaptive.ys)
    assert float((adaptive.ys[-1] - exact).abs().mean()) < errors[0]


# Regularized modules ----------------------------------------------------------------------------


def regularized_loss_and_gradients(make, device: torch.device):
    """One training iteration of ``make(field)`` on ``device``: the task loss, ``reg_loss`` and the
    parameters' gradient of their sum. The draw comes from a CPU generator, the same on both."""
    model = make(MLPField()).to(device)
    model.train()
    ys = model(y0_batch().to(device), T.to(device))
    loss = ys.pow(2).mean()
    on_device(ys, model.reg_loss) if device.type == DEVICE.type else None
    return loss, model.reg_loss, parameter_gradients(model, loss + model.reg_loss)


REGULARIZED = {
    **{
        f"local-{sampling}-{gradient}": (
            lambda field, sampling=sampling, gradient=gradient: LocallyRegularized(
                field,
                sampling=sampling,
                gradient=gradient,
                rtol=1e-6,
                atol=1e-8,
                generator=torch.Generator().manual_seed(3),
            )
        )
        for sampling in ("random", "biased")
        for gradient in GRADIENTS
    },
    "local-paper-probe": lambda field: LocallyRegularized(
        field,
        penalty="error-dt",
        weight=1.0,
        rtol=1e-6,
        atol=1e-8,
        generator=torch.Generator().manual_seed(3),
    ),
    "global": lambda field: GloballyRegularized(field, rtol=1e-6, atol=1e-8),
    "rnode": lambda field: RNODERegularized(
        field, rtol=1e-6, atol=1e-8, generator=torch.Generator().manual_seed(3)
    ),
    "steer": lambda field: SteerRegularized(
        field, b=0.1, rtol=1e-6, atol=1e-8, generator=torch.Generator().manual_seed(3)
    ),
    "taynode": lambda field: TayNODERegularized(field, rtol=1e-6, atol=1e-8),
}


@pytest.mark.parametrize("name", list(REGULARIZED))
def test_regularized_module_on_the_device_computes_what_it_computes_on_the_cpu(name):
    make = REGULARIZED[name]
    cpu_loss, cpu_reg, cpu_gradients = regularized_loss_and_gradients(make, torch.device("cpu"))
    device_loss, device_reg, device_gradients = regularized_loss_and_gradients(make, DEVICE)
    assert name == "steer" or float(cpu_reg.detach()) > 0  # steer perturbs the end time instead
    # The error estimate is a difference of stage values that cancels down to the tolerance's size:
    # rounding differences of 1e-16 between the devices' kernels move it by about 1e-7 relative (on
    # the CPU alone a relative change of 1e-15 in the weights moves these penalties by 1e-7), so the
    # penalties built on it, like the backsolve adjoint's gradients, agree to 1e-5; the others to 1e-8.
    rtol = 1e-5 if "adjoint" in name or name in ("local-paper-probe", "global") else 1e-8
    assert_same(device_loss, cpu_loss, rtol=1e-9)
    assert_same(device_reg, cpu_reg, rtol=rtol)
    for device_gradient, cpu_gradient in zip(device_gradients, cpu_gradients, strict=True):
        assert_same(device_gradient, cpu_gradient, rtol=rtol)


def test_a_module_trained_on_the_device_resumes_on_the_cpu():
    """``state_dict`` (weights and the sampler's generator) carries a run between devices: the next
    draw and penalty are the ones the device run would have made."""

    def make() -> LocallyRegularized:
        return LocallyRegularized(
            MLPField(), rtol=1e-6, atol=1e-8, generator=torch.Generator().manual_seed(3)
        )

    model = make().to(DEVICE)
    model(y0_batch().to(DEVICE), T.to(DEVICE))
    state = model.state_dict()
    model(y0_batch().to(DEVICE), T.to(DEVICE))
    on_device_t, on_device_reg = model.stats.t_reg, model.reg_loss

    resumed = make()
    resumed.load_state_dict(
        {key: value.cpu() if torch.is_tensor(value) else value for key, value in state.items()}
    )
    resumed(y0_batch(), T)
    assert resumed.stats.t_reg == on_device_t
    torch.testing.assert_close(resumed.reg_loss, on_device_reg.cpu(), rtol=1e-8, atol=0)


def test_a_generator_on_the_device_draws_the_regularization_time():
    generator = torch.Generator(device=DEVICE).manual_seed(4)
    model = LocallyRegularized(MLPField(), rtol=1e-6, atol=1e-8, generator=generator).to(DEVICE)
    draws = []
    for _ in range(3):
        model(y0_batch().to(DEVICE), T.to(DEVICE))
        on_device(model.reg_loss)
        draws.append(model.stats.t_reg)
    assert len(set(draws)) == 3 and all(0.0 <= t_reg <= 1.0 for t_reg in draws)
