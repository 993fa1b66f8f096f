"""Dense output: the interpolants, interpolated outputs, their gradients and ``Solution.evaluate``."""

import contextlib
import dataclasses
import math
import re
import warnings
import weakref

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from local_reg import TABLEAUS, ButcherTableau, Interpolant, odeint, sdeint, step
from local_reg.interpolants import get_interpolant
from tests.problems import CountingField, DecaySDE, scipy_reference, to_numpy_field

DTYPE = torch.float64
ADAPTIVE = [name for name, tableau in TABLEAUS.items() if tableau.adaptive]


def rotation(t, y):
    # y = (cos t, -sin t) from (1, 0).
    return torch.stack([y[..., 1], -y[..., 0]], dim=-1)


def logistic(t, y):
    return y * (1 - y) + 0.0 * t


def logistic_exact(t, y0):
    return y0 * math.exp(t) / (1 - y0 + y0 * math.exp(t))


class TinyField(torch.nn.Module):
    """A small time-dependent MLP vector field (float64)."""

    def __init__(self, dim: int = 3, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, dim)
        ).to(DTYPE)

    def forward(self, t, y):
        return 2.0 * self.net(y) * torch.cos(3 * t)


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_interpolant_weights_end_on_the_step_and_sum_to_theta(name):
    interpolant = get_interpolant(name)
    tableau = TABLEAUS[name]
    b = [*tableau.b, 0.0] if interpolant.extra_stage else list(tableau.b)
    assert interpolant.weights(0.0) == [0.0] * interpolant.n_stages
    np.testing.assert_allclose(interpolant.weights(1.0), b, rtol=0, atol=1e-14)
    # Consistency: y' = 1 is interpolated exactly.
    for theta in (0.3, 0.7):
        assert sum(interpolant.weights(theta)) == pytest.approx(theta, abs=1e-14)


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_interpolant_has_its_empirical_order(name):
    # One step from the exact state; the local error of the dense output at theta = 0.4 must shrink
    # like dt^(order + 1): from both sides, since a lower bound alone accepts an understated order.
    interpolant = get_interpolant(name)
    tableau = TABLEAUS[name]
    y0 = torch.tensor([0.2], dtype=DTYPE)
    errors = []
    # An eighth-order step is so accurate that its fifth-order dense output reaches round-off by
    # dt = 0.025: it is measured at larger steps.
    sizes = [0.3, 0.15, 0.075] if tableau.order > 5 else [0.1, 0.05, 0.025]
    for dt in sizes:
        result = step(logistic, 0.0, y0, dt, tableau)
        stages = result.stages
        if interpolant.extra_stage:
            stages = (*stages, logistic(torch.tensor(dt, dtype=DTYPE), result.y1))
        theta = 0.4
        y = y0 + dt * sum(w * k for w, k in zip(interpolant.weights(theta), stages, strict=True))
        errors.append(abs(float(y) - logistic_exact(theta * dt, 0.2)))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert min(slopes) > interpolant.order + 1 - 0.3, (name, slopes)
    assert max(slopes) < interpolant.order + 1 + 0.5, (name, slopes)


# Per adaptive tableau: rtol, scipy's method of about its order, and bounds on the largest error of
# the interpolated outputs over rtol and over scipy's dense output's error, about 4x the measured
# (tsit5 7.4 and 0.22, dopri5 29 and 0.84, bosh3 24 and 0.32, dopri8 30 and 2.5 (scipy's DOP853),
# fehlberg2 750 and 26, heun_euler 1.8 and 0.06). fehlberg2's first-order estimate understates the
# error of its second-order steps (test_solver.py: test_linear_system_against_analytic_solution),
# hence its bounds. A pair's own dense output is needed to meet a fifth-order pair's: with the
# cubic Hermite fallback its outputs are hundreds of times less accurate. A new adaptive tableau
# fails on the KeyError until it has its bounds.
DENSE_OUTPUT_BOUNDS = {
    "tsit5": (1e-8, "RK45", 30, 1),
    "dopri5": (1e-8, "RK45", 100, 3),
    "bosh3": (1e-6, "RK45", 100, 1.5),
    "dopri8": (1e-10, "DOP853", 120, 10),
    "fehlberg2": (1e-5, "RK23", 3000, 100),
    "heun_euler": (1e-4, "RK23", 10, 0.3),
}


@pytest.mark.parametrize("method", ADAPTIVE)
def test_interpolated_outputs_match_scipy_dense_output(method):
    rtol, scipy_method, bound, bound_over_scipy = DENSE_OUTPUT_BOUNDS[method]
    y0 = torch.tensor([1.0, 1.0], dtype=DTYPE)
    times = np.linspace(0.0, 6.0, 241)

    def lotka_volterra(t, y):
        return torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])

    solution = odeint(lotka_volterra, y0, torch.from_numpy(times), method=method, rtol=rtol, atol=rtol * 1e-2)
    # Most outputs come from the dense output.
    ends = set((solution.steps.t + solution.steps.dt).tolist())
    assert len(set(times[1:-1].tolist()) & ends) < len(times) // 10
    scipy_dense = solve_ivp(
        to_numpy_field(lotka_volterra),
        (0.0, 6.0),
        y0.numpy(),
        method=scipy_method,
        rtol=rtol,
        atol=rtol * 1e-2,
        dense_output=True,
    )
    exact = scipy_reference(lotka_volterra, y0, times).numpy()
    error_ours = np.abs(solution.ys.numpy() - exact).max()
    error_scipy = np.abs(scipy_dense.sol(times).T - exact).max()
    assert error_ours < bound * rtol, error_ours / rtol
    assert error_ours < bound_over_scipy * error_scipy, error_ours / error_scipy


def test_a_pair_registered_in_dense_outputs_interpolates_with_its_own_dense_output(monkeypatch):
    """A pair's own dense output was picked by an if-chain on three names: any other pair, a
    user-made tableau included, was interpolated by cubic Hermite."""
    from local_reg import interpolants

    tsit5 = TABLEAUS["tsit5"]
    mine = ButcherTableau("mine", tsit5.c, tsit5.a, tsit5.b, tsit5.order, tsit5.error_weights)
    assert get_interpolant(mine).order == 3  # unregistered: cubic Hermite
    own = get_interpolant("tsit5")
    monkeypatch.setitem(interpolants.DENSE_OUTPUTS, mine, Interpolant("mine", own.coefficients, own.order))
    assert get_interpolant(mine).coefficients == own.coefficients
    times = torch.linspace(0.0, 3.0, 17, dtype=DTYPE)
    y0 = torch.tensor([1.0, 0.0], dtype=DTYPE)
    assert torch.equal(odeint(rotation, y0, times, method=mine).ys, odeint(rotation, y0, times).ys)
    # A tableau of a registered pair's name but other fields is not that pair.
    assert get_interpolant(dataclasses.replace(tsit5, stability_size=3.0)).order == 3
    monkeypatch.setitem(interpolants.DENSE_OUTPUTS, mine, Interpolant("mine", own.coefficients[:-1], 4))
    with pytest.raises(ValueError, match="mine"):
        get_interpolant(mine)


def test_an_interpolant_registered_for_a_tableau_must_fit_it(monkeypatch):
    """Only the number of rows was checked: an interpolant with a typo (one weight doubled), which
    no longer ends the step on its solution, moved every interpolated output silently (1.6e-2 off
    on y' = -y, against 5e-8 with the pair's own)."""
    from local_reg import interpolants

    tsit5 = TABLEAUS["tsit5"]
    mine = ButcherTableau("mine", tsit5.c, tsit5.a, tsit5.b, tsit5.order, tsit5.error_weights)
    own = get_interpolant("tsit5").coefficients
    doubled = ((2.0 * own[0][0], *own[0][1:]), *own[1:])
    monkeypatch.setitem(interpolants.DENSE_OUTPUTS, mine, Interpolant("mine", doubled, 4))
    with pytest.raises(ValueError, match=r"tableau 'mine' does not end the step on its solution: B_i\(1\)"):
        odeint(
            rotation,
            torch.tensor([1.0, 0.0], dtype=DTYPE),
            torch.linspace(0.0, 3.0, 5, dtype=DTYPE),
            method=mine,
        )
    # Weights that end the step right but do not sum to theta between (a row's middle changed).
    shifted = tuple(
        (row[0], row[1] + 0.1, row[2] - 0.1, *row[3:]) if index == 1 else row for index, row in enumerate(own)
    )
    monkeypatch.setitem(interpolants.DENSE_OUTPUTS, mine, Interpolant("mine", shifted, 4))
    with pytest.raises(ValueError, match="is not consistent"):
        get_interpolant(mine)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "dopri8", "bosh3", "heun_euler"])
def test_number_of_steps_does_not_depend_on_the_output_times(method):
    field = CountingField(TinyField())
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    nfe = {}
    starts = {}
    rtol = {"heun_euler": 1e-3, "bosh3": 1e-5}.get(method, 1e-6)
    for n in (2, 11, 51, 101):
        solution = odeint(field, y0, torch.linspace(0.0, 3.0, n, dtype=DTYPE), method=method, rtol=rtol)
        nfe[n] = solution.stats.nfe
        starts[n] = solution.steps.t.tolist()
    # The same steps for every n. A pair that is not FSAL evaluates f(t1, y1) for a step holding
    # outputs and hands it to the next step as k1, kept across a rejection (so it may even save
    # evaluations); at the last step it is one evaluation more.
    for n in (11, 51, 101):
        assert starts[n] == starts[2]
        if TABLEAUS[method].fsal:
            assert nfe[n] == nfe[2]
        else:
            assert nfe[n] <= nfe[2] + 1
    # Landing on every output time takes more steps.
    many = torch.linspace(0.0, 3.0, 101, dtype=DTYPE)
    landing = odeint(field, y0, many, method=method, rtol=rtol, step_to_outputs=True)
    assert landing.stats.n_accepted > len(starts[2])


def _loss(ys):
    weights = torch.arange(1, ys.shape[0] + 1, dtype=ys.dtype).reshape(-1, 1)
    return (weights * ys**2).sum() + ys[1].sin().sum()


def _gradient(field, y0, times, gradient, **kwargs):
    y0 = y0.clone().requires_grad_(True)
    solution = odeint(field, y0, times, gradient=gradient, **kwargs)
    grads = torch.autograd.grad(_loss(solution.ys), (y0, *field.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]), solution


def _relative_error(x, reference):
    return float((x - reference).norm() / reference.norm())


# Several outputs inside one step (0.4, 0.4004, 0.4008) and others in other steps.
GRADIENT_TIMES = [0.0, 0.4, 0.4004, 0.4008, 1.1, 1.7, 2.0]


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_exact_gradients_through_interpolated_outputs(method, gradient):
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    order = TABLEAUS[method].order
    rtol = {2: 1e-3, 3: 1e-5}.get(order, 1e-6)
    options = {"method": method, "rtol": rtol, "atol": rtol * 1e-2, "first_step": 1.0}
    reference, solution = _gradient(field, y0, GRADIENT_TIMES, "direct", **options)
    assert solution.stats.n_rejected > 0
    # Some step holds more than one output strictly inside it.
    ends = set((solution.steps.t + solution.steps.dt).tolist())
    assert not set(GRADIENT_TIMES[1:-1]) & ends
    starts = solution.steps.t.tolist()
    holders = [sum(s < t for s in starts) for t in GRADIENT_TIMES[1:-1]]
    assert len(set(holders)) < len(holders)
    ours, _ = _gradient(field, y0, GRADIENT_TIMES, gradient, **options)
    assert _relative_error(ours, reference) <= 1e-10


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_exact_gradients_through_interpolated_outputs_backwards_in_time(gradient):
    # From t = 2 to 0 the steps are negative: theta = (t_i - t_n) / dt_n is in (0, 1) all the same.
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    times = GRADIENT_TIMES[::-1]
    options = {"method": "tsit5", "rtol": 1e-3, "atol": 1e-5}
    reference, solution = _gradient(field, y0, times, "direct", **options)
    assert not set(times[1:-1]) & set((solution.steps.t + solution.steps.dt).tolist())  # read inside steps
    ours, _ = _gradient(field, y0, times, gradient, **options)
    assert _relative_error(ours, reference) <= 1e-10


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_exact_gradients_with_checkpoint_budget(gradient):
    from local_reg import Checkpoint, Symplectic

    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    reference, _ = _gradient(field, y0, GRADIENT_TIMES, "direct", rtol=1e-7)
    method = {"checkpoint": Checkpoint, "symplectic": Symplectic}[gradient](checkpoints=3)
    ours, _ = _gradient(field, y0, GRADIENT_TIMES, method, rtol=1e-7)
    assert _relative_error(ours, reference) <= 1e-10


class _StackedStates(TorchDispatchMode):
    """Records the operation and shape of each result that stacks more than ``most`` and fewer than
    ``whole`` states of ``shape`` in storage of its own (not a view of an argument)."""

    def __init__(self, shape: torch.Size, most: int, whole: int) -> None:
        super().__init__()
        self.shape, self.most, self.whole = shape, most, whole
        self.found: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if (
            isinstance(result, torch.Tensor)
            and result.shape[1:] == self.shape
            and self.most < len(result) < self.whole
        ):
            viewed = {
                argument.untyped_storage().data_ptr()
                for argument in pytree.tree_leaves((args, kwargs))
                if isinstance(argument, torch.Tensor)
            }
            if result.untyped_storage().data_ptr() not in viewed:
                self.found.append((str(func), tuple(result.shape)))
        return result


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_the_backward_pass_holds_no_state_per_output_inside_a_step(gradient):
    # The outputs read from one step's dense output enter its backward step as a view of their
    # cotangents and through the step's stages: a stacked copy of the cotangents, or the outputs
    # re-made on checkpoint's graph, held one more state per output (1.24x the peak at 200 outputs
    # in a step of a large state).
    y0 = torch.tensor([[0.5, -0.3, 0.8], [0.1, 0.2, -0.4]], dtype=DTYPE, requires_grad=True)
    times = torch.linspace(0.0, 2.0, 200, dtype=DTYPE)
    solution = odeint(TinyField(), y0, times, method="tsit5", rtol=1e-3, gradient=gradient)
    starts = solution.steps.t.tolist()
    per_step = np.bincount([sum(s < t for s in starts) for t in times.tolist()])
    stages = TABLEAUS["tsit5"].n_stages
    assert per_step.max() > stages
    cotangents = torch.randn_like(solution.ys)
    # Not counted: a tensor of every output's cotangent (the pass's check that they are finite).
    stacked = _StackedStates(y0.shape, stages, len(times))
    with stacked:
        torch.autograd.grad(solution.ys, y0, cotangents)
    assert stacked.found == []


def test_direct_gradient_through_interpolated_outputs_matches_the_analytic_one():
    # y' = A y: y(t) = expm(A t) y0, so d/dy0 sum_i w_i . y(t_i) = sum_i expm(A t_i)^T w_i.
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.3]], dtype=DTYPE)
    times = [0.0, 0.13, 0.5, 0.77, 1.5]
    weights = torch.randn(len(times), 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    y0 = torch.tensor([1.0, 0.5], dtype=DTYPE, requires_grad=True)
    solution = odeint(lambda t, y: a @ y, y0, times, rtol=1e-11, atol=1e-12)
    ends = set((solution.steps.t + solution.steps.dt).tolist())
    assert not set(times[1:-1]) & ends
    (grad,) = torch.autograd.grad((weights * solution.ys).sum(), y0)
    expected = sum(expm(a.numpy() * t).T @ w.numpy() for t, w in zip(times, weights, strict=True))
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_gradcheck_through_an_interpolated_output_with_frozen_steps():
    # With the step sequence frozen (first_step and a loose tolerance that accepts every step), the
    # interpolated output is a smooth function of y0 and of a parameter: gradcheck each method.
    scale = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)

    def field(t, y):
        return -scale * y**3 + torch.sin(t)

    for gradient in ("direct", "checkpoint", "symplectic"):

        def output(y0, scale_, gradient=gradient):
            solution = odeint(
                field,
                y0,
                [0.0, 0.35, 0.9],
                rtol=10.0,
                atol=10.0,
                first_step=0.5,
                gradient=gradient,
                adjoint_params=(scale,),
            )
            assert solution.stats.n_rejected == 0 and solution.stats.n_accepted == 2
            return solution.ys[1:]

        y0 = torch.tensor([0.4, -0.2], dtype=DTYPE, requires_grad=True)
        assert torch.autograd.gradcheck(output, (y0, scale), eps=1e-6, atol=1e-8)


def test_adjoint_converges_to_direct_through_interpolated_outputs():
    from local_reg import BacksolveAdjoint

    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    reference, _ = _gradient(field, y0, GRADIENT_TIMES, "direct", rtol=1e-10, atol=1e-12)
    errors = [
        _relative_error(
            _gradient(
                field, y0, GRADIENT_TIMES, BacksolveAdjoint(rtol=tol, atol=tol * 1e-2), rtol=1e-10, atol=1e-12
            )[0],
            reference,
        )
        for tol in (1e-4, 1e-7, 1e-10)
    ]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 1e-7


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_step_to_outputs_is_available_to_every_gradient_method(gradient):
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    reference, solution = _gradient(field, y0, GRADIENT_TIMES, "direct", step_to_outputs=True)
    ends = set((solution.steps.t + solution.steps.dt).tolist())
    assert set(GRADIENT_TIMES[1:]) <= ends
    ours, landed = _gradient(field, y0, GRADIENT_TIMES, gradient, step_to_outputs=True)
    assert landed.steps.t.tolist() == solution.steps.t.tolist()
    assert _relative_error(ours, reference) <= (1e-3 if "adjoint" in gradient else 1e-10)


def test_fixed_steps_land_on_output_times():
    y0 = torch.tensor([0.2], dtype=DTYPE)
    solution = odeint(logistic, y0, [0.0, 0.33, 1.0], method="rk4", step_size=0.1)
    ends = (solution.steps.t + solution.steps.dt).tolist()
    assert 0.33 in ends


@pytest.mark.parametrize("method", ["tsit5", "dopri5"])
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
def test_step_to_outputs_takes_one_step_per_interval_when_steps_are_longer(method, direction):
    """Output times 0.1 apart on the harmonic oscillator, where the controller's own steps are
    longer: one step per interval. A step shortened to land keeps the controller's memory of the
    last full step's error; the shortened step's (near zero on a sliver) would shrink the next step
    through the PI term, and every interval would end in a sliver (two steps each)."""
    y0 = torch.tensor([1.0, 0.0], dtype=DTYPE)
    times = direction * torch.linspace(0.0, 10.0, 101, dtype=DTYPE)
    kwargs = dict(method=method, rtol=1e-7, atol=1e-9)
    interpolating = odeint(rotation, y0, times, **kwargs)
    assert interpolating.stats.n_accepted < len(times) - 1
    landing = odeint(rotation, y0, times, step_to_outputs=True, **kwargs)
    assert landing.stats.n_accepted <= len(times) - 1 + 5
    exact = torch.stack([torch.cos(times), -torch.sin(times)], dim=-1)
    assert (landing.ys - exact).abs().max() < 1e-5


def test_symplectic_backward_cost_counts_the_stages_of_steps_holding_outputs():
    field = CountingField(TinyField())
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE, requires_grad=True)
    solution = odeint(field, y0, GRADIENT_TIMES, method="dopri5", gradient="symplectic")
    before = field.calls
    _loss(solution.ys).backward()
    starts = solution.steps.t.tolist()
    holding = len({sum(s < t for s in starts) for t in GRADIENT_TIMES[1:-1]})
    # dopri5: 5 + 6 evaluations per step; a step holding outputs also needs k7 (its dense output
    # uses it): 6 + 7.
    assert field.calls - before == solution.stats.nfe_backward
    assert solution.stats.nfe_backward == 11 * solution.stats.n_accepted + 2 * holding


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "dopri8", "bosh3", "fehlberg2"])
@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
def test_evaluate_at_step_ends_is_the_step_state(method, gradient):
    field = TinyField().requires_grad_(False)
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    times = [0.0, 0.7, 2.0]
    solution = odeint(field, y0, times, method=method, dense=True, record_states=True, gradient=gradient)
    for t, state in zip(solution.steps.t, solution.steps.states, strict=True):
        assert torch.equal(solution.evaluate(float(t)), state)
    assert torch.equal(solution.evaluate(2.0), solution.ys[-1])
    # At output times the evaluation is the output itself; in between it is close to the exact flow.
    assert torch.equal(solution.evaluate(torch.tensor(times, dtype=DTYPE)), solution.ys)
    fine = torch.linspace(0.0, 2.0, 41, dtype=DTYPE)
    reference = odeint(field, y0, fine, method="tsit5", rtol=1e-11, atol=1e-12).ys
    tolerance = {2: 1e-2, 3: 1e-3}.get(TABLEAUS[method].order, 1e-4)
    assert (solution.evaluate(fine) - reference).abs().max() < tolerance


def test_evaluate_at_the_last_output_time_is_the_final_state_where_start_plus_size_rounds_off():
    """The last step's start plus its size need not round back to the output time it landed on
    (here: a backward solve ending just below 0); ``evaluate`` there is still the final state."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    checked = 0
    for k in range(1, 61):
        t_end = -k / 3700.0
        solution = odeint(lambda t, y: -y, y0, [1.0, t_end], rtol=1e-3, atol=1e-3, dense=True)
        last_start, last_size = solution.steps.t[-1].item(), solution.steps.dt[-1].item()
        checked += last_start + last_size != t_end
        assert torch.equal(solution.evaluate(t_end), solution.ys[-1])
    assert checked > 0  # the case the test is about occurred


@pytest.mark.parametrize("span", [[0.0, 0.1], [0.1, 0.0], [0.3]])
def test_evaluate_at_its_own_float32_times_is_the_solution_there(span):
    """A float32 state solved at float64 times: ``ts`` holds them rounded to float32 (0.1 rounds up,
    out of the span); ``evaluate(ts)`` is still the outputs, bit for bit, while a time two float32
    spacings further out stays outside the span."""
    y0 = torch.tensor([1.0, 2.0])
    solution = odeint(lambda t, y: -y, y0, span, dense=True)
    assert solution.ts.dtype == torch.float32 and solution.ts.tolist() != span
    assert torch.equal(solution.evaluate(solution.ts), solution.ys)
    assert torch.equal(solution.evaluate(solution.ts[-1]), solution.ys[-1])
    beyond = torch.nextafter(solution.ts[-1], solution.ts[-1] + (1 if span[-1] >= span[0] else -1))
    farther = torch.nextafter(beyond, beyond + (1 if span[-1] >= span[0] else -1))
    with pytest.raises(ValueError, match="outside the solved span"):
        solution.evaluate(farther)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_evaluate_under_a_graph_free_method_refuses_a_backward_pass_not_a_wrong_gradient(gradient):
    """The graph-free methods record no graph for the dense output. Its values used to be plain
    constants, so a loss on them and ``ys`` silently lacked their part of the gradient (and before
    that, the first step's state was the caller's ``y0``, differentiated as the identity)."""
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE, requires_grad=True)
    fine = torch.linspace(0.0, 2.0, 9, dtype=DTYPE)
    direct = odeint(field, y0, [0.0, 2.0], dense=True).evaluate(fine)
    assert direct.requires_grad
    solution = odeint(field, y0, [0.0, 2.0], dense=True, gradient=gradient)
    values = solution.evaluate(fine)
    torch.testing.assert_close(values, direct.detach(), rtol=0, atol=0)
    loss = solution.ys.sum() + values.sum()
    with pytest.raises(RuntimeError, match=f"no gradient under gradient='{gradient}'.*gradient='direct'"):
        loss.backward()
    # The outputs alone still differentiate, and without grad mode the values are plain tensors.
    solution.ys.sum().backward()
    assert y0.grad is not None
    with torch.no_grad():
        assert not solution.evaluate(fine).requires_grad
    assert not solution.evaluate(fine).detach().requires_grad


def test_evaluate_needs_dense_and_stays_in_the_span():
    solution = odeint(logistic, torch.tensor([0.2], dtype=DTYPE), [0.0, 1.0])
    with pytest.raises(ValueError, match="dense=True"):
        solution.evaluate(0.5)
    solution = odeint(logistic, torch.tensor([0.2], dtype=DTYPE), [0.0, 1.0], dense=True)
    with pytest.raises(ValueError, match="outside"):
        solution.evaluate(1.5)
    for bad in (torch.tensor([0.5 + 0j]), torch.tensor([True])):
        with pytest.raises(TypeError, match="t must be a real tensor"):
            solution.evaluate(bad)
    with pytest.raises(TypeError, match="dense must be a bool"):
        odeint(logistic, torch.tensor([0.2], dtype=DTYPE), [0.0, 1.0], dense="yes")
    # Backward in time too.
    backward = odeint(logistic, torch.tensor([0.6], dtype=DTYPE), [1.0, 0.0], dense=True)
    assert float(backward.evaluate(0.5)) == pytest.approx(
        float(odeint(logistic, torch.tensor([0.6], dtype=DTYPE), [1.0, 0.5]).ys[-1]), abs=1e-6
    )


def test_evaluate_refuses_non_finite_times_and_takes_an_empty_tensor():
    y0 = torch.tensor([0.2, 0.4], dtype=DTYPE)
    solution = odeint(logistic, y0, [0.0, 1.0], dense=True)
    for bad in (math.nan, torch.tensor([0.5, math.nan], dtype=DTYPE), torch.tensor([math.inf], dtype=DTYPE)):
        with pytest.raises(ValueError, match="t must be finite"):
            solution.evaluate(bad)
    empty = solution.evaluate(torch.tensor([], dtype=DTYPE))
    assert empty.shape == (0, 2) and empty.dtype == DTYPE


def test_evaluate_of_a_solve_of_one_time_is_y0_there_only():
    y0 = torch.tensor([0.2, 0.4], dtype=DTYPE)
    solution = odeint(logistic, y0, [0.5], dense=True)
    assert torch.equal(solution.evaluate(0.5), y0)
    assert torch.equal(solution.evaluate(torch.tensor([0.5, 0.5], dtype=DTYPE)), torch.stack([y0, y0]))
    with pytest.raises(ValueError, match=r"t=1.0 is outside the solved span \[0.5, 0.5\]"):
        solution.evaluate(1.0)


@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
def test_local_regularization_reads_u_t_reg_from_the_interpolant_at_no_extra_step(gradient):
    from local_reg import local_regularization

    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    times = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)
    _, reg, stats = local_regularization(
        field, y0, times, sampling="random", gradient=gradient, generator=torch.Generator().manual_seed(3)
    )
    assert float(stats.t_reg) not in times.tolist()
    plain = odeint(field, y0, times, dense=True, gradient=gradient)
    # The main solve took exactly the steps of the plain solve at the user's output times ...
    assert stats.nfe_main == plain.stats.nfe
    assert stats.n_accepted == plain.stats.n_accepted
    # ... and u(t_reg) is the dense output there, inside a step.
    ends = (plain.steps.t + plain.steps.dt).tolist()
    assert stats.t_reg not in ends and stats.t_reg not in plain.steps.t.tolist()
    torch.testing.assert_close(stats.state, plain.evaluate(stats.t_reg).detach(), rtol=0, atol=0)
    # Landing on t_reg instead costs at least one more step.
    landing = odeint(field, y0, sorted([*times.tolist(), stats.t_reg]), step_to_outputs=True)
    assert landing.stats.n_accepted > plain.stats.n_accepted
    assert torch.isfinite(reg) and float(reg.detach()) > 0


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_exact_gradients_through_interpolated_outputs_backward_in_time(gradient):
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    times = [2.0, 1.6, 1.59, 0.9, 0.0]
    options = {"method": "tsit5", "rtol": 1e-6, "first_step": 1.0}
    reference, solution = _gradient(field, y0, times, "direct", **options)
    ends = set((solution.steps.t + solution.steps.dt).tolist())
    assert not set(times[1:-1]) & ends
    ours, _ = _gradient(field, y0, times, gradient, **options)
    assert _relative_error(ours, reference) <= 1e-10


def test_evaluate_takes_times_as_odeint_takes_them():
    # A list, tuple or numpy array of times was refused ("got list") where odeint's t takes them.
    y0 = torch.tensor([0.2, 0.4], dtype=DTYPE)
    solution = odeint(logistic, y0, [0.0, 1.0], dense=True)
    expected = solution.evaluate(torch.tensor([0.2, 0.5], dtype=DTYPE))
    for times in ([0.2, 0.5], (0.2, torch.tensor(0.5)), np.array([0.2, 0.5])):
        assert torch.equal(solution.evaluate(times), expected)
    assert solution.evaluate([]).shape == (0, 2) and solution.evaluate([0.5]).shape == (1, 2)
    # A float32 solve's own ts, as an array or a list of its 0-dim tensors: the span's end rounded to
    # float32 (0.1 lies just outside the span there) is the end, as for the tensor itself.
    narrow = odeint(logistic, y0.float(), [0.0, 0.1], dense=True)
    at_ends = narrow.evaluate(narrow.ts)
    assert torch.equal(narrow.evaluate(narrow.ts.numpy()), at_ends)
    assert torch.equal(narrow.evaluate(list(narrow.ts)), at_ends)
    # A numpy scalar is a time as the same value in an array is (np.float32 was refused, "got
    # float32"), its float32 end included; its derivative too.
    assert torch.equal(narrow.evaluate(np.float32(narrow.ts[-1])), at_ends[-1])
    assert torch.equal(solution.evaluate(np.int64(1)), solution.evaluate(1.0))
    assert torch.equal(solution.derivative(np.float32(0.5)), solution.derivative([np.float32(0.5)])[0])
    # A 0-dim array is a time as a 0-dim tensor is ("must be a 1-D array of times, got shape ()").
    assert torch.equal(narrow.evaluate(np.array(narrow.ts[-1].item(), dtype=np.float32)), at_ends[-1])
    assert torch.equal(solution.derivative(np.array(0.5)), solution.derivative(0.5))
    for not_real in (
        np.array(0.5, dtype=object),
        np.array("0.5"),
        np.timedelta64(1, "s"),
        np.clongdouble(0.5),
    ):
        with pytest.raises(TypeError, match="t must be a real number or array, got dtype"):  # not torch's
            solution.evaluate(not_real)
    # Real numbers torch has no dtype for are their values, as in a 1-D array.
    assert torch.equal(
        solution.evaluate(np.longdouble(0.5)), solution.evaluate(np.array([0.5], np.longdouble))[0]
    )
    assert torch.equal(solution.evaluate(np.uint64(1)), solution.evaluate(1.0))
    with pytest.raises(ValueError, match=re.escape("not differentiable w.r.t. t")):
        solution.evaluate([0.2, torch.tensor(0.5, requires_grad=True)])
    with pytest.raises(
        TypeError, match="t must be a float, a tensor, an array or a sequence of times, got str"
    ):
        solution.evaluate("0.5")
    y, s = odeint(
        lambda t, state: (-state[0], state[0].sum()), (y0, y0.sum()), [0.0, 1.0], dense=True
    ).evaluate([0.2, 0.5])
    assert y.shape == (2, 2) and s.shape == (2,)


def test_evaluate_of_a_tuple_state_is_a_tuple():
    y0 = (torch.tensor([1.0, 2.0], dtype=torch.float64), torch.zeros((), dtype=torch.float64))

    def field(t, state):
        y, s = state
        return -y, y.sum()

    times = [0.0, 0.3, 1.0]
    solution = odeint(field, y0, times, dense=True)
    y, s = solution.evaluate(torch.tensor(times, dtype=torch.float64))
    torch.testing.assert_close(y, solution.ys[0])
    torch.testing.assert_close(s, solution.ys[1])
    # s(t) = 3 (1 - exp(-t)) for y0 = (1, 2).
    _, s_half = solution.evaluate(0.5)
    assert abs(float(s_half) - 3.0 * (1.0 - math.exp(-0.5))) < 1e-5


@pytest.mark.parametrize(
    ("dtype", "inside"),
    [(torch.bfloat16, 1 - 2.0**-7), (torch.float16, 1 - 2.0**-11), (torch.float32, 1 - 2.0**-24)],
)
def test_evaluate_takes_a_narrow_time_inside_the_span_as_given(dtype, inside):
    """Only a time equal to a span end rounded to its dtype is that end; the float just inside the
    end (exactly representable) is evaluated there, as its float64 value is: ``exp(-t)``."""
    solution = odeint(
        lambda t, y: -y, torch.ones(1, dtype=DTYPE), [0.0, 1.0], rtol=1e-10, atol=1e-12, dense=True
    )
    t = torch.tensor(inside, dtype=dtype)
    assert float(t) == inside < 1.0
    torch.testing.assert_close(solution.evaluate(t), solution.evaluate(inside), rtol=0, atol=0)
    assert float(solution.evaluate(t)) == pytest.approx(math.exp(-inside), rel=1e-9)
    assert float(solution.evaluate(t)) != pytest.approx(math.exp(-1.0), rel=1e-9)


def test_the_step_records_keep_their_own_copy_of_y0():
    """A caller that refills ``y0``'s memory after the solve (a reused buffer) changes neither the
    dense output nor the recorded states: they are the solve's, ``exp(-t)``."""
    y0 = torch.ones(1, dtype=DTYPE)
    solution = odeint(lambda t, y: -y, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12, dense=True, record_states=True)
    first_end = solution.steps.t[0] + solution.steps.dt[0]
    before = (solution.evaluate(0.0), solution.evaluate(first_end / 2), solution.steps.states[0])
    y0.fill_(5.0)
    after = (solution.evaluate(0.0), solution.evaluate(first_end / 2), solution.steps.states[0])
    for was, now in zip(before, after, strict=True):
        torch.testing.assert_close(now, was, rtol=0, atol=0)
    assert float(after[1]) == pytest.approx(math.exp(-first_end / 2), rel=1e-9)
    # A field that returns its input, or a view of it, makes y0's memory the first stage: ``y' = y``
    # written ``y`` or ``y.reshape(y.shape)``.
    for field in (lambda t, y: y, lambda t, y: y.reshape(y.shape), lambda t, y: y[:]):
        y0 = torch.ones(1, dtype=DTYPE)
        growth = odeint(field, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12, dense=True)
        inside = (growth.steps.t[0] + growth.steps.dt[0]) / 2
        before = growth.evaluate(inside)
        y0.fill_(5.0)
        torch.testing.assert_close(growth.evaluate(inside), before, rtol=0, atol=0)
        assert float(before) == pytest.approx(math.exp(inside), rel=1e-9)
    # A solve of one time, which takes no step, too.
    y0 = torch.ones(1, dtype=DTYPE)
    single = odeint(lambda t, y: -y, y0, [0.5], dense=True)
    y0.fill_(5.0)
    assert float(single.evaluate(0.5)) == 1.0


def test_evaluate_of_an_sde_solution_says_sdeint_keeps_no_dense_output():
    solution = sdeint(
        DecaySDE(), torch.ones(2, 1, dtype=DTYPE), [0.0, 1.0], generator=torch.Generator().manual_seed(0)
    )
    with pytest.raises(ValueError, match="sdeint does not keep"):
        solution.evaluate(0.5)


@pytest.mark.parametrize("span", [(0.0, 0.7), (1.0, 0.1)], ids=["forward", "backward"])
def test_a_float_at_a_float32_span_end_is_that_end(span):
    """A float32 ``t`` ends at float32(0.7) = 0.69999998..., so ``evaluate(0.7)`` (a Python float or a
    list of them) was refused as outside the span; rounded as the solve's times it is the end. A
    float beyond that rounding is still refused, and one inside the span stays where it is."""
    solution = odeint(lambda t, y: -y, torch.ones(2), torch.tensor(span), dense=True)
    torch.testing.assert_close(solution.evaluate(span[1]), solution.ys[-1], rtol=0, atol=0)
    torch.testing.assert_close(solution.evaluate([span[0], span[1]]), solution.ys, rtol=0, atol=0)
    beyond = span[1] + (1e-4 if span[1] > span[0] else -1e-4)
    with pytest.raises(ValueError, match="outside the solved span"):
        solution.evaluate(beyond)
    # Beside a float32 tensor in one list, a plain float inside the span stays where it is.
    inside_end = float(torch.tensor(span[1])) - 1e-9 * (1 if span[1] > span[0] else -1)
    mixed = solution.evaluate([torch.tensor(span[0]), inside_end])
    torch.testing.assert_close(mixed[1], solution.evaluate(inside_end), rtol=0, atol=0)
    # A float64 state with float32 times: a time inside the span is not moved onto the end.
    wide = odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), torch.tensor(span), dense=True)
    inside = float(torch.tensor(span[1])) - 1e-9 * (1 if span[1] > span[0] else -1)
    torch.testing.assert_close(
        wide.evaluate(inside), wide.evaluate(torch.tensor(inside, dtype=torch.float64)), rtol=0, atol=0
    )


def test_a_float32_query_at_the_start_of_a_span_shorter_than_its_ulp_is_the_start():
    """Both ends of [1000, 1000.00001] round to float32's 1000.0: the rounded start was mapped to
    the end, so a float32 query at exactly t0 returned y(t1)."""
    t = torch.tensor([1000.0, 1000.00001], dtype=torch.float64)
    solution = odeint(lambda t, y: -1e5 * y, torch.ones(1, dtype=torch.float64), t, dense=True)
    for query in (1000.0, torch.tensor(1000.0), np.float32(1000.0)):
        assert float(solution.evaluate(query)) == 1.0
    assert float(solution.evaluate(t[1])) == pytest.approx(math.exp(-1.0), rel=1e-5)


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_interpolant_derivative_weights_are_the_derivatives_of_its_weights(name):
    # Against central differences of the weights themselves (a polynomial of degree <= 8 in theta):
    # an independent reading of what derivative_matrix computes by Horner's rule.
    interpolant = get_interpolant(name)
    thetas = [0.0, 0.25, 0.6, 1.0]
    h = 1e-5
    central = (
        interpolant.weight_matrix([x + h for x in thetas])
        - interpolant.weight_matrix([x - h for x in thetas])
    ) / (2 * h)
    np.testing.assert_allclose(interpolant.derivative_matrix(thetas), central, rtol=0, atol=1e-7)
    # Every interpolant starts on the step's first stage and ends on its last (the field at y1).
    ends = interpolant.derivative_matrix([0.0, 1.0])
    np.testing.assert_allclose(ends[0], np.eye(interpolant.n_stages)[0], atol=1e-12)
    np.testing.assert_allclose(ends[1], np.eye(interpolant.n_stages)[-1], atol=1e-12)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "dopri8", "bosh3", "fehlberg2", "rk4"])
@pytest.mark.parametrize("span", [(0.0, 6.0), (6.0, 0.0)], ids=["forward", "backward"])
def test_derivative_is_the_field_along_the_dense_solution(method, span):
    # The rotation's exact solution is known: y = (cos t, -sin t), dy/dt = (-sin t, -cos t).
    y0 = torch.tensor([math.cos(span[0]), -math.sin(span[0])], dtype=DTYPE)
    fixed = {"step_size": 0.01} if method == "rk4" else {"rtol": 1e-9, "atol": 1e-11}
    solution = odeint(rotation, y0, list(span), method=method, dense=True, **fixed)
    times = torch.linspace(0.0, 6.0, 37, dtype=DTYPE)
    derivative = solution.derivative(times)
    exact = torch.stack([-torch.sin(times), -torch.cos(times)], dim=-1)
    assert derivative.shape == (37, 2)
    torch.testing.assert_close(derivative, exact, rtol=0, atol=2e-6)
    # One float or 0-dim tensor gives one state's shape, as evaluate.
    assert solution.derivative(2.5).shape == (2,)
    assert solution.derivative(torch.tensor(2.5, dtype=DTYPE)).shape == (2,)
    # At every step start, and at the span's end, it is the field at the recorded state.
    dense = solution.steps.dense_output
    starts = torch.tensor([*dense.t, dense.t_end], dtype=DTYPE)
    at_starts = solution.derivative(starts)
    states = torch.stack(dense.states)
    torch.testing.assert_close(at_starts, rotation(starts, states), rtol=0, atol=1e-12)


def test_derivative_between_steps_is_the_slope_of_evaluate():
    # Inside a step the derivative is that of the interpolant evaluate reads, to central
    # differences' accuracy (far finer than the solution's own error).
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE)
    solution = odeint(field, y0, [0.0, 2.0], dense=True, rtol=1e-5, atol=1e-7)
    dense = solution.steps.dense_output
    inside = [start + 0.37 * dt for start, dt in zip(dense.t, dense.dt, strict=True)]
    h = 1e-6 * min(abs(dt) for dt in dense.dt)
    central = (solution.evaluate([t + h for t in inside]) - solution.evaluate([t - h for t in inside])) / (
        2 * h
    )
    torch.testing.assert_close(solution.derivative(inside), central, rtol=1e-6, atol=1e-8)


def switched_rate(t, y):
    # dy/dt = 1 before t = 0.5 and -2 from it on.
    return torch.where(t < 0.5, 1.0, -2.0) * torch.ones_like(y)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "fehlberg2", "bosh3"])
@pytest.mark.parametrize(
    ("span", "at_jump"), [((0.0, 1.0), 1.0), ((1.0, 0.0), -2.0)], ids=["forward", "backward"]
)
def test_derivative_at_a_jump_is_the_limit_from_the_side_the_solve_came_from(method, span, at_jump):
    """At a jump the step ending there and the step starting there disagree: the derivative takes
    the step the solve reached the time through, as the gradient w.r.t. an output time at a jump
    does; it took the step starting there, the side the solve went on into."""
    from local_reg import PIController

    y0 = torch.zeros(1, dtype=DTYPE)
    solution = odeint(
        switched_rate, y0, list(span), method=method, controller=PIController(jump_ts=[0.5]), dense=True
    )
    beside = torch.tensor([0.5 - 1e-9, 0.5, 0.5 + 1e-9, 0.0, 1.0], dtype=DTYPE)
    expected = torch.tensor([1.0, at_jump, -2.0, 1.0, -2.0], dtype=DTYPE)
    torch.testing.assert_close(solution.derivative(beside).flatten(), expected, rtol=0, atol=1e-12)


def test_derivative_differentiates_under_direct_and_refuses_the_graph_free_methods():
    field = TinyField()
    y0 = torch.tensor([0.5, -0.3, 0.8], dtype=DTYPE, requires_grad=True)
    loss = odeint(field, y0, [0.0, 1.0], dense=True, rtol=1e-10, atol=1e-12).derivative(0.4).sum()
    (grad,) = torch.autograd.grad(loss, [y0])
    # Finite differences in y0 (the steps are those of a tight tolerance: their sizes move little).
    eps = 1e-6
    for i in range(3):
        shift = torch.zeros(3, dtype=DTYPE)
        shift[i] = eps
        with torch.no_grad():
            plus = odeint(field, y0 + shift, [0.0, 1.0], dense=True, rtol=1e-10, atol=1e-12)
            minus = odeint(field, y0 - shift, [0.0, 1.0], dense=True, rtol=1e-10, atol=1e-12)
            fd = (plus.derivative(0.4).sum() - minus.derivative(0.4).sum()) / (2 * eps)
        assert float(grad[i]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)
    solution = odeint(field, y0, [0.0, 1.0], dense=True, gradient="symplectic")
    with pytest.raises(
        RuntimeError, match=r"Solution.derivative's states have no gradient under gradient='symplectic'"
    ):
        solution.derivative(0.4).sum().backward()


def test_derivative_of_a_tuple_state_and_its_refusals():
    y0 = (torch.tensor([1.0, 2.0], dtype=DTYPE), torch.zeros((), dtype=DTYPE))

    def field(t, state):
        y, s = state
        return -y, y.sum()

    solution = odeint(field, y0, [0.0, 1.0], dense=True, rtol=1e-9, atol=1e-11)
    dy, ds = solution.derivative(torch.tensor([0.5, 0.8], dtype=DTYPE))
    # y = y0 exp(-t), s' = 3 exp(-t).
    times = torch.tensor([0.5, 0.8], dtype=DTYPE)
    torch.testing.assert_close(dy, -torch.exp(-times)[:, None] * y0[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(ds, 3.0 * torch.exp(-times), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="outside"):
        solution.derivative(1.5)
    with pytest.raises(ValueError, match=re.escape("derivative is not differentiable w.r.t. t")):
        solution.derivative(torch.tensor(0.5, dtype=DTYPE, requires_grad=True))
    with pytest.raises(ValueError, match=re.escape("derivative needs the step records")):
        odeint(field, y0, [0.0, 1.0]).derivative(0.5)
    with pytest.raises(ValueError, match=re.escape("the derivative at t[0] is func(t[0], y0)")):
        odeint(field, y0, [0.5], dense=True).derivative(0.5)
    sde_solution = sdeint(DecaySDE(), torch.ones(1, 1, dtype=DTYPE), [0.0, 0.1], step_size=0.05)
    with pytest.raises(ValueError, match="sdeint does not keep"):
        sde_solution.derivative(0.05)


@pytest.mark.parametrize("jumps", [[], [0.5], [0.25, 0.5, 0.75]])
def test_a_hermite_dense_record_costs_one_end_derivative_per_solve_and_per_jump(jumps):
    """A Hermite pair without FSAL needs ``f`` at each step's end: the next step's first stage,
    except after the last step and at a jump, where the next step starts on the far side. What the
    docs say it costs, counted."""
    from local_reg import PIController

    def field(t, y):
        field.calls += 1
        return torch.sin(3 * t) * torch.ones_like(y) - 0.5 * y

    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    counted = []
    for dense in (False, True):
        field.calls = 0
        solution = odeint(
            field, y0, t, method="fehlberg2", controller=PIController(jump_ts=jumps), dense=dense
        )
        assert solution.stats.nfe == field.calls
        counted.append(field.calls)
    assert counted[1] - counted[0] == 1 + len(jumps)


class _PeakBytes(TorchDispatchMode):
    """The most bytes held at once by storages that operations made while the mode was on (a
    storage is let go when the last tensor made on it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.holders: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                key = tensor.untyped_storage().data_ptr()
                if key not in self.holders:
                    self.holders[key] = 0
                    self.sizes[key] = tensor.untyped_storage().nbytes()
                    self.live += self.sizes[key]
                    self.peak = max(self.peak, self.live)
                self.holders[key] += 1
                weakref.finalize(tensor, self._let_go, key)
        return result

    def _let_go(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key]
            self.live -= self.sizes.pop(key)


@pytest.mark.parametrize("gradient", ["inference", "checkpoint", "symplectic"])
def test_a_solve_without_a_graph_holds_each_output_once(gradient):
    # The outputs were listed and stacked at the end: each held twice at that moment (the forward
    # pass's peak, 2.1x the outputs' size with many of them). Now written into one tensor as they come.
    y0 = torch.randn(50, 3, dtype=DTYPE)
    times = torch.linspace(0.0, 2.0, 400, dtype=DTYPE)
    outputs_size = times.numel() * y0.numel() * y0.element_size()
    field = TinyField()
    if gradient != "inference":
        y0.requires_grad_(True)
    with _PeakBytes() as memory, torch.no_grad() if gradient == "inference" else contextlib.nullcontext():
        solution = odeint(field, y0, times, gradient="direct" if gradient == "inference" else gradient)
    assert 1.0 <= memory.peak / outputs_size < 1.3
    with torch.no_grad():
        expected = odeint(field, y0.detach(), times, gradient="direct").ys
    with torch.enable_grad():
        listed = odeint(field, y0.detach().requires_grad_(True), times, gradient="direct").ys
    assert torch.equal(solution.ys, expected) and torch.equal(expected, listed.detach())


def test_outputs_without_autograd_equal_those_with_it_to_the_bit_and_keep_the_memory_format():
    # Interpolated 16 at a time without autograd, a step holding 16k + 1 outputs left one to a
    # kernel of its own, whose float32 rounding differed (dopri8: the last bit of one output); and
    # the outputs' tensor was contiguous where torch.stack keeps a channels_last state's format.
    torch.manual_seed(0)
    weights = torch.randn(64, 64) / 8
    y0 = torch.randn(64)
    times = torch.linspace(0.0, 1.0, 66)
    options = {"method": "dopri8", "rtol": 1e-3, "atol": 1e-3}

    def field(t, y):
        return torch.tanh(y @ weights)

    direct = odeint(field, y0.clone().requires_grad_(True), times, **options).ys.detach()
    checkpoint = odeint(
        field, y0.clone().requires_grad_(True), times, gradient="checkpoint", adjoint_params=(), **options
    )
    with torch.no_grad():
        inference = odeint(field, y0, times, **options).ys
    assert torch.equal(checkpoint.ys.detach(), direct) and torch.equal(inference, direct)

    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double().to(memory_format=torch.channels_last)
    image = torch.randn(2, 3, 8, 8, dtype=DTYPE).to(memory_format=torch.channels_last)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            ys = odeint(lambda t, y: torch.tanh(conv(y)), image, [0.0, 0.5, 1.0]).ys
        assert all(y.is_contiguous(memory_format=torch.channels_last) for y in ys)
    # A transposed state's outputs are contiguous, as torch.stack makes them (ys.view works).
    transposed = torch.randn(4, 3, dtype=DTYPE).T
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            assert odeint(lambda t, y: -y, transposed, [0.0, 0.5, 1.0]).ys.is_contiguous()


def test_a_steps_outputs_past_the_element_budget_are_interpolated_in_near_equal_batches(monkeypatch):
    # Batches of 16 outputs left a lone remainder (17 -> 16 + 1), whose float32 rounding differed.
    from local_reg import _integrate

    monkeypatch.setattr(_integrate, "INTERPOLATED_ELEMENTS", 10)
    cases = {
        3: [(0, []), (1, [1]), (3, [3]), (7, [3, 2, 2]), (17, [3] * 5 + [2])],
        30: [(2, [2]), (5, [3, 2])],
    }
    with torch.no_grad():
        for elements, sizes_of in cases.items():
            outputs = _integrate._OutputStates(torch.zeros(elements), 1)
            for n_times, sizes in sizes_of:
                times = [0.1 * i for i in range(n_times)]
                batches = outputs.batches(times)
                assert [len(batch) for batch in batches] == sizes and sum(batches, []) == times
    assert _integrate._OutputStates(torch.zeros(3), 1).batches([0.1] * 17) == [[0.1] * 17]  # autograd


def test_a_dense_solution_with_a_graph_pickles_and_its_copy_evaluates():
    """The direct method's check of the gradient through what evaluate returns is a closure on the
    dense record: a solution kept with its graph stopped pickling (torch.save, a worker's result)."""
    import pickle

    field = nn.Linear(2, 2).double()
    solution = odeint(lambda t, y: field(y), torch.ones(2, dtype=torch.float64), [0.0, 1.0], dense=True)
    assert solution.ys.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: the count's hook on ys will not be serialized
        copy = pickle.loads(pickle.dumps(solution))
    torch.testing.assert_close(copy.evaluate(0.4), solution.evaluate(0.4).detach(), rtol=0, atol=0)
