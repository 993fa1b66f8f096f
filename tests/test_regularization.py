"""Local [LR23] and global [GR21] regularization: the compatibility matrix, the one-step identity,
eval mode, sampling, schedules and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchdiffeq
from problems import ConstantNoiseSDE, CountingField, NetField, made_at

import local_reg
from local_reg import (
    ConstantWeight,
    ExponentialDecay,
    GloballyRegularized,
    LocallyRegularized,
    Regularized,
    RNODERegularized,
    StepResult,
    get_tableau,
    global_regularization,
    local_regularization,
    odeint,
    rnode_regularization,
    step,
    taynode_regularization,
)
from local_reg.regularization import WeightSchedule, _problems, _sampling
from local_reg.regularization._sampling import insert_time

DTYPE = torch.float64
RTOL, ATOL = 1e-4, 1e-6  # loose: few steps, a penalty well above rounding, fast tests
TSIT5 = get_tableau("tsit5")


def _case(backend: str, gradient: str):
    return pytest.param(backend, gradient, id=f"{backend}-{gradient}")


GRADIENT_CASES = [
    _case("local_reg", "direct"),
    _case("local_reg", "adjoint"),
    _case("local_reg", "checkpoint"),
    _case("local_reg", "symplectic"),
    _case("torchdiffeq", "direct"),  # torchdiffeq.odeint
    _case("torchdiffeq", "adjoint"),  # torchdiffeq.odeint_adjoint
]


class MLPField(torch.nn.Module):
    """A tiny time-dependent neural vector field."""

    def __init__(self, dim: int = 2, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(dim + 1, hidden).to(DTYPE)
        self.l2 = torch.nn.Linear(hidden, dim).to(DTYPE)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=DTYPE))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.to(y.dtype).expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=-1))))


def _y0(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE)


T = torch.linspace(0.0, 1.0, 4, dtype=DTYPE)


def _penalty_at_fixed_point(func, stats, regularizer: str, k1: torch.Tensor) -> torch.Tensor:
    """The paper's penalty as a function of the parameters with ``u(t_reg)``, ``k1`` and ``dt`` held
    constant: exactly what ``detach_state=True`` differentiates."""
    result = step(func, stats.t_reg, stats.state, stats.dt_reg, TSIT5, rtol=RTOL, atol=ATOL, k1=k1)
    if regularizer == "error":
        return result.error_estimate * abs(stats.dt_reg)
    return result.stiffness_estimate / TSIT5.stability_size


def _finite_difference(function, params: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences with one Richardson extrapolation (error O(eps^4))."""

    def central(flat: torch.Tensor, i: int, h: float) -> float:
        original = float(flat[i])
        flat[i] = original + h
        plus = float(function())
        flat[i] = original - h
        minus = float(function())
        flat[i] = original
        return (plus - minus) / (2 * h)

    gradients = []
    with torch.no_grad():
        for p in params:
            gradient = torch.zeros_like(p)
            flat, gflat = p.view(-1), gradient.view(-1)
            for i in range(flat.numel()):
                gflat[i] = (4 * central(flat, i, eps / 2) - central(flat, i, eps)) / 3
            gradients.append(gradient)
    return gradients


# --------------------------------------------------------------------------------------------------
# The compatibility matrix
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, gradient", GRADIENT_CASES)
@pytest.mark.parametrize("regularizer", ["error", "stiffness"])
@pytest.mark.parametrize("sampling", ["random", "biased"])
def test_matrix_reg_loss_is_finite_and_its_gradient_matches_finite_differences(
    sampling, regularizer, backend, gradient
):
    func = MLPField()
    model = LocallyRegularized(
        func,
        sampling=sampling,
        regularizer=regularizer,
        penalty="error-dt",
        weight=1.0,
        rtol=RTOL,
        atol=ATOL,
        gradient=gradient,
        backend=backend,
        generator=torch.Generator().manual_seed(3),
    )
    model.train()
    y0 = _y0()
    ys = model(y0, T)
    assert ys.shape == (len(T), *y0.shape)
    assert model.reg_loss.dim() == 0 and torch.isfinite(model.reg_loss)
    assert model.reg_loss.item() > 0
    stats = model.stats
    assert stats.nfe_main > 0 and stats.nfe_reg == TSIT5.n_stages + 1  # k1, initial step, 6 stages

    params = list(func.parameters())
    analytic = torch.autograd.grad(model.reg_loss, params, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in analytic)
    assert sum(float(g.abs().sum()) for g in analytic) > 0

    # The penalty composes with the task loss under the main gradient method.
    (ys.pow(2).mean() + model.reg_loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    if gradient != "direct":
        assert stats.nfe_backward is not None and stats.nfe_backward > 0

    with torch.no_grad():
        k1 = func(torch.tensor(stats.t_reg, dtype=DTYPE), stats.state)
    recomputed = _penalty_at_fixed_point(func, stats, regularizer, k1)
    torch.testing.assert_close(recomputed.detach(), model.reg_loss.detach(), rtol=1e-12, atol=0)
    numeric = _finite_difference(lambda: _penalty_at_fixed_point(func, stats, regularizer, k1), params)
    scale = max(float(g.abs().max()) for g in numeric)
    for a, n in zip(analytic, numeric, strict=True):
        torch.testing.assert_close(a, n, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("backend, gradient", GRADIENT_CASES)
@pytest.mark.parametrize("sampling", ["random", "biased"])
def test_matrix_default_penalty_is_the_mean_square_rate_and_its_gradient_matches_finite_differences(
    sampling, backend, gradient
):
    func = MLPField()
    model = LocallyRegularized(
        func,
        sampling=sampling,
        weight=1.0,
        rtol=RTOL,
        atol=ATOL,
        gradient=gradient,
        backend=backend,
        generator=torch.Generator().manual_seed(3),
    )
    y0 = _y0()
    ys = model(y0, T)
    stats = model.stats
    assert model.penalty.penalty == "kinetic" and stats.nfe_reg == 1 and stats.dt_reg is None

    def penalty() -> torch.Tensor:
        return func(torch.tensor(stats.t_reg, dtype=DTYPE), stats.state).pow(2).mean()

    torch.testing.assert_close(penalty().detach(), model.reg_loss.detach(), rtol=1e-12, atol=0)
    params = list(func.parameters())
    analytic = torch.autograd.grad(model.reg_loss, params, retain_graph=True)
    # The penalty composes with the task loss under the main gradient method.
    (ys.pow(2).mean() + model.reg_loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    numeric = _finite_difference(penalty, params)
    scale = max(float(g.abs().max()) for g in numeric)
    for a, n in zip(analytic, numeric, strict=True):
        torch.testing.assert_close(a, n, rtol=1e-6, atol=1e-8 * scale)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_the_default_weights_measurement_is_counted_in_the_forward_pass(gradient):
    """With ``detach_state=False`` the default weight's measurement (a gradient of ``reg_loss`` in
    the forward pass) runs the main gradient method's backward pass: its evaluations count in
    ``nfe_forward`` (as ``nfe_measurement``), not in the training backward pass's ``nfe_backward``;
    both equal the calls counted in the field, on a measured iteration and on the next."""
    func = CountingField(MLPField())
    model = LocallyRegularized(
        func,
        penalty="error-dt",
        detach_state=False,
        gradient=gradient,
        generator=torch.Generator().manual_seed(0),
    )
    measured = []
    for _ in range(2):
        func.calls = 0
        ys = model(_y0(), T)
        forward_calls, func.calls = func.calls, 0
        (ys.pow(2).mean() + model.reg_loss).backward()
        stats = model.stats
        assert (stats.nfe_forward, stats.nfe_backward) == (forward_calls, func.calls)
        measured.append(stats.nfe_measurement)
    assert measured[0] > 0 and measured[1] == 0  # measured every 10 training passes, from the first


@pytest.mark.parametrize("penalty_form", ["error-dt", "kinetic"])
@pytest.mark.parametrize("backend, gradient", GRADIENT_CASES)
def test_detach_state_false_sends_the_penalty_gradient_into_the_solution(backend, gradient, penalty_form):
    """With ``detach_state=False`` the penalty's gradient w.r.t. ``y0`` (through ``u(t_reg)`` and the
    main gradient method) matches finite differences of the penalty at fixed ``t_reg`` and ``dt``.

    The main solve takes fixed RK4 steps so that ``u(t_reg)`` is a smooth function of ``y0`` (an
    adaptive step sequence is piecewise constant in ``y0`` and autograd treats it so)."""
    func = MLPField()
    y0 = _y0(batch=2).requires_grad_(True)
    ys, reg, stats = local_regularization(
        func,
        y0,
        T,
        method="rk4",
        options={"step_size": 0.05},
        rtol=RTOL,
        atol=ATOL,
        gradient=gradient,
        backend=backend,
        detach_state=False,
        penalty=penalty_form,
        generator=torch.Generator().manual_seed(5),
    )
    (analytic,) = torch.autograd.grad(reg, y0)
    assert torch.isfinite(analytic).all() and analytic.abs().sum() > 0

    times, index, _ = insert_time(T.tolist(), stats.t_reg, 1e-12)

    def penalty(y_init: torch.Tensor) -> torch.Tensor:
        if backend == "local_reg":
            u = odeint(func, y_init, times, method="rk4", step_size=0.05).ys[index]
        else:
            u = torchdiffeq.odeint(
                func, y_init, torch.tensor(times, dtype=DTYPE), method="rk4", options={"step_size": 0.05}
            )[index]
        t_reg = torch.tensor(stats.t_reg, dtype=DTYPE)
        if penalty_form == "kinetic":
            return func(t_reg, u).pow(2).mean()
        result = step(func, stats.t_reg, u, stats.dt_reg, TSIT5, rtol=RTOL, atol=ATOL, k1=func(t_reg, u))
        return result.error_estimate * abs(stats.dt_reg)

    with torch.no_grad():
        torch.testing.assert_close(penalty(y0), reg.detach(), rtol=1e-12, atol=0)
    y_var = y0.detach().clone()
    # EEst is a small difference of O(1) stages: a large eps keeps rounding out of the differences.
    (numeric,) = _finite_difference(lambda: penalty(y_var), [y_var], eps=1e-3)
    # The continuous adjoints are exact only up to their backward discretization.
    rtol = 1e-5 if gradient in ("direct", "checkpoint", "symplectic") else 1e-3
    torch.testing.assert_close(analytic, numeric, rtol=rtol, atol=rtol * float(numeric.abs().max()))


# --------------------------------------------------------------------------------------------------
# One implementation of the step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["random", "biased"])
def test_regularization_step_eest_is_the_solvers_eest_for_the_same_step(sampling):
    func = MLPField()
    y0 = _y0()
    ys, reg, stats = local_regularization(
        func,
        y0,
        T,
        sampling=sampling,
        rtol=RTOL,
        atol=ATOL,
        step_size="solver",
        generator=torch.Generator().manual_seed(11),
        # Landing on t_reg, so that the probe repeats the solver's step from there.
        options={"step_to_outputs": True},
    )
    # The same solve the regularizer ran (with t_reg among the output times for "random").
    times = insert_time(T.tolist(), stats.t_reg, 1e-12)[0] if sampling == "random" else T.tolist()
    solution = odeint(func, y0, times, rtol=RTOL, atol=ATOL, record_states=True, step_to_outputs=True)
    assert solution.stats.nfe == stats.nfe_main
    (matches,) = torch.nonzero(solution.steps.t == stats.t_reg, as_tuple=True)
    assert len(matches) == 1
    j = int(matches[0])
    assert stats.dt_reg == float(solution.steps.dt[j])
    torch.testing.assert_close(stats.state, solution.steps.states[j], rtol=0, atol=0)
    assert stats.error_estimate == pytest.approx(float(solution.steps.error_estimate[j]), rel=1e-12)
    assert stats.stiffness_estimate == pytest.approx(float(solution.steps.stiffness_estimate[j]), rel=1e-12)
    assert float(reg.detach()) == pytest.approx(stats.error_estimate * abs(stats.dt_reg), rel=1e-15)


def test_regularization_step_calls_local_reg_step(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[4])
        return local_reg._step.step(*args, **kwargs)

    monkeypatch.setattr(_problems, "step", spy)
    local_regularization(MLPField(), _y0(), T, rtol=RTOL, atol=ATOL, penalty="error-dt")
    assert calls == [TSIT5]
    # The default penalty takes no step.
    local_regularization(MLPField(), _y0(), T, rtol=RTOL, atol=ATOL)
    assert calls == [TSIT5]


@pytest.mark.parametrize(("probe", "order"), [("initial", TSIT5.order), (None, TSIT5.order + 1)])
def test_initial_step_size_is_the_heuristic_at_u_treg_capped_at_t1(probe, order):
    """The paper's probe: the heuristic with exponent 1/p; the probe step's default
    (``initial-hairer``): 1/(p+1)."""
    func = MLPField()
    y0 = _y0()
    _, _, stats = local_regularization(
        func, y0, T, rtol=RTOL, atol=ATOL, generator=torch.Generator(), probe=probe, penalty="error-dt"
    )
    t_reg = torch.tensor(stats.t_reg, dtype=DTYPE)
    with torch.no_grad():
        f0 = func(t_reg, stats.state)
    expected, _ = local_reg.initial_step_size(func, stats.t_reg, stats.state, f0, order, RTOL, ATOL)
    assert stats.dt_reg == pytest.approx(min(expected, 1.0 - stats.t_reg), rel=1e-14)


# --------------------------------------------------------------------------------------------------
# Eval mode, the returned trajectory, sampling
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["random", "biased"])
@pytest.mark.parametrize("backend", ["local_reg", "torchdiffeq"])
def test_eval_mode_is_the_unregularized_solve_with_its_nfe(backend, sampling):
    func = CountingField(MLPField())
    model = LocallyRegularized(func, sampling=sampling, rtol=RTOL, atol=ATOL, backend=backend)
    y0 = _y0()
    model.eval()
    ys = model(y0, T)
    calls = func.calls
    if backend == "local_reg":
        reference = odeint(func, y0, T, rtol=RTOL, atol=ATOL)
        plain, plain_nfe = reference.ys, reference.stats.nfe
    else:
        before = func.calls
        plain = torchdiffeq.odeint(func, y0, T, rtol=RTOL, atol=ATOL, method="dopri5")
        plain_nfe = func.calls - before
    assert torch.equal(ys, plain)
    assert model.stats.nfe_main == calls == plain_nfe
    assert model.stats.nfe_reg == 0 and model.stats.t_reg is None
    assert model.reg_loss.item() == 0.0

    model.train()
    before = func.calls
    ys_train = model(y0, T)
    assert ys_train.shape == ys.shape  # t_reg is not in the returned trajectory
    assert func.calls - before == model.stats.nfe_forward
    if backend == "torchdiffeq" or sampling == "biased":
        # Same steps (torchdiffeq interpolates at t_reg; biased adds no output time).
        assert torch.equal(ys_train, ys)
    else:
        torch.testing.assert_close(ys_train, ys, rtol=0, atol=50 * RTOL)


def test_t_reg_on_an_existing_output_time_is_not_inserted_twice(monkeypatch):
    func = MLPField()
    y0 = _y0()
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda times, dtype, gen: float(T[2]))
    model = LocallyRegularized(func, rtol=RTOL, atol=ATOL)
    ys = model(y0, T)
    assert model.stats.t_reg == float(T[2])
    train_nfe = model.stats.nfe_main
    model.eval()
    assert torch.equal(ys, model(y0, T))  # no time was inserted: the very same solve
    assert model.stats.nfe_main == train_nfe


def test_insert_time():
    assert insert_time([0.0, 0.5, 1.0], 0.25, 1e-9) == ([0.0, 0.25, 0.5, 1.0], 1, True)
    assert insert_time([0.0, 0.5, 1.0], 0.5 + 1e-12, 1e-9) == ([0.0, 0.5, 1.0], 1, False)
    assert insert_time([0.0, 0.5, 1.0], 0.0, 1e-9) == ([0.0, 0.5, 1.0], 0, False)
    assert insert_time([1.0, 0.5, 0.0], 0.75, 1e-9) == ([1.0, 0.75, 0.5, 0.0], 1, True)
    assert insert_time([1.0, 0.0], 0.9999999999999, 1e-9) == ([1.0, 0.0], 0, False)
    # Merged within the tolerance only, not within twice it.
    assert insert_time([0.0, 0.5, 1.0], 0.5 + 1.5e-9, 1e-9) == ([0.0, 0.5, 0.5 + 1.5e-9, 1.0], 2, True)


def test_the_time_tolerance_is_relative_to_the_largest_time():
    """``64 eps`` of the largest of ``|t0|``, ``|t1|`` and the span, at most a thousandth of the span."""
    from local_reg.regularization._sampling import time_tolerance

    eps = torch.finfo(torch.float32).eps
    assert time_tolerance([1e5, 2e5], torch.float32) == 64 * eps * 2e5
    assert time_tolerance([2e5, 1e5], torch.float32) == 64 * eps * 2e5
    assert time_tolerance([0.0, 1.0], torch.float64) == 1e-9
    assert time_tolerance([1e8, 1e8 + 1], torch.float32) == 1e-3


def test_uniform_draws_far_from_zero_cover_the_span_and_an_unresolvable_span_is_refused():
    """Far from 0 a float32 time resolves only coarse steps of the span: the draws still spread
    over it (they snapped to t0 when the snapping tolerance outgrew the span) and always return;
    a span float32 cannot split into distinct times is refused by name instead of redrawn forever."""
    from local_reg.regularization._sampling import sample_uniform_time

    generator = torch.Generator().manual_seed(0)
    t0 = 1e6
    draws = [sample_uniform_time([t0, t0 + 10.0], torch.float32, generator) - t0 for _ in range(200)]
    assert min(draws) >= 0.0 and max(draws) < 10.0
    assert 0.6 < sum(d > 2.5 for d in draws) / len(draws) < 0.9
    # [1e6, 1e6 + 1] holds 16 float32 times: every draw returns, within [t0, t1).
    for _ in range(50):
        assert 0.0 <= sample_uniform_time([t0, t0 + 1.0], torch.float32, generator) - t0 < 1.0
    with pytest.raises(ValueError, match=r"t spans .* cannot resolve"):
        sample_uniform_time([t0, t0 + 0.01], torch.float32, generator)
    # Ends that float32 cannot represent: the draws round into the span, never past its ends.
    for times in ([t0, t0 + 0.1], [t0 + 0.03, t0 + 0.09], [0.7, 0.7 + 1e-7], [t0 + 0.1, t0]):
        lo, hi = min(times), max(times)
        for _ in range(200):
            t_reg = sample_uniform_time(times, torch.float32, generator)
            assert lo <= t_reg <= hi and t_reg != times[-1]


def test_backward_in_time():
    t = torch.tensor([1.0, 0.4, 0.0], dtype=DTYPE)
    for sampling in ("random", "biased"):
        ys, reg, stats = local_regularization(
            MLPField(), _y0(), t, sampling=sampling, rtol=RTOL, atol=ATOL, penalty="error-dt"
        )
        assert ys.shape[0] == 3 and torch.isfinite(reg)
        assert 0.0 < stats.t_reg <= 1.0 and stats.dt_reg < 0 and stats.t_reg + stats.dt_reg >= -1e-15
        _, _, stats = local_regularization(MLPField(), _y0(), t, sampling=sampling, rtol=RTOL, atol=ATOL)
        assert 0.0 < stats.t_reg <= 1.0


@pytest.mark.parametrize("sampling", ["random", "biased"])
def test_seeded_generator_is_reproducible_and_calls_draw_different_points(sampling):
    def draws(seed: int) -> list[float]:
        model = LocallyRegularized(
            MLPField(), sampling=sampling, rtol=RTOL, atol=ATOL, generator=torch.Generator().manual_seed(seed)
        )
        out = []
        for _ in range(4):
            model(_y0(), T)
            out.append(model.stats.t_reg)
        return out

    first, second = draws(7), draws(7)
    assert first == second
    assert len(set(first)) > 1
    assert all(0.0 <= v < 1.0 for v in first)


def test_random_sampling_is_uniform_on_the_interval():
    generator = torch.Generator().manual_seed(0)
    t = [0.0, 2.0]
    draws = [_sampling.sample_uniform_time(t, DTYPE, generator) for _ in range(4000)]
    assert min(draws) >= 0.0 and max(draws) < 2.0
    mean = sum(draws) / len(draws)
    assert mean == pytest.approx(1.0, abs=0.05)


def test_biased_sampling_draws_accepted_step_starts():
    func = MLPField()
    y0 = _y0()
    solution = odeint(func, y0, T, rtol=RTOL, atol=ATOL)
    starts = set(solution.steps.t.tolist())
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        _, _, stats = local_regularization(
            func, y0, T, sampling="biased", rtol=RTOL, atol=ATOL, generator=generator
        )
        assert stats.t_reg in starts
        seen.add(stats.t_reg)
    assert 1.0 not in seen and len(seen) > len(starts) // 2


# --------------------------------------------------------------------------------------------------
# Zero and non-finite estimates
# --------------------------------------------------------------------------------------------------


def test_zero_error_estimate_gives_zero_penalty_and_finite_gradient():
    func = MLPField()
    zero_field = lambda t, y: 0.0 * func(t, y)  # noqa: E731
    for regularizer in ("error", "stiffness"):
        ys, reg, stats = local_regularization(zero_field, _y0(), T, regularizer=regularizer)
        assert reg.item() == 0.0
        grads = torch.autograd.grad(reg, list(func.parameters()), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_non_finite_penalty_is_replaced_by_zero(monkeypatch):
    func = MLPField()

    def diverging(*args, **kwargs):
        result = local_reg._step.step(*args, **kwargs)
        return StepResult(
            result.y1,
            result.error_estimate * math.inf,
            result.stiffness_estimate * math.nan,
            result.stages,
            7,
        )

    monkeypatch.setattr(_problems, "step", diverging)
    for regularizer in ("error", "stiffness"):
        model = LocallyRegularized(func, regularizer=regularizer, penalty="error-dt", rtol=RTOL, atol=ATOL)
        ys = model(_y0(), T)
        assert model.reg_loss.item() == 0.0 and not model.stats.penalty_finite
        (ys.sum() + model.reg_loss).backward()
        assert all(torch.isfinite(p.grad).all() for p in func.parameters())


# --------------------------------------------------------------------------------------------------
# Weights and schedules
# --------------------------------------------------------------------------------------------------


def test_weight_multiplies_the_penalty():
    func = MLPField()
    losses = []
    for weight in (1.0, 3.0, ConstantWeight(3.0)):
        model = LocallyRegularized(
            func, weight=weight, rtol=RTOL, atol=ATOL, generator=torch.Generator().manual_seed(2)
        )
        model(_y0(), T)
        losses.append(model.reg_loss.item())
    assert losses[1] == pytest.approx(3 * losses[0], rel=1e-14) and losses[2] == losses[1]


def test_exponential_decay_schedule_and_resume():
    schedule = ExponentialDecay(2.5, 1.0, 10)
    assert schedule() == 2.5
    values = [schedule.step() for _ in range(15)]
    assert values[4] == pytest.approx(2.5 * math.exp(-5 * math.log(2.5) / 10))
    assert values[9] == pytest.approx(1.0) and values[-1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))

    model = LocallyRegularized(MLPField(), weight=ExponentialDecay(100.0, 10.0, 50))
    for _ in range(7):
        model.weight.step()
    state = model.state_dict()
    resumed = LocallyRegularized(MLPField(), weight=ExponentialDecay(100.0, 10.0, 50))
    resumed.load_state_dict(state)
    assert resumed.weight.iteration == 7 and resumed.weight() == model.weight()


def test_a_constant_set_between_iterations_is_resumed():
    """ConstantWeight.weight may be set between iterations: the state saved only the iteration, so a
    resumed run went on with the constructor's constant. A state saved without it keeps this one's."""
    model = LocallyRegularized(MLPField(), weight=0.5)
    model.weight.weight = 5.0
    model.weight.step()
    resumed = LocallyRegularized(MLPField(), weight=0.5)
    resumed.load_state_dict(model.state_dict())
    assert resumed.weight() == 5.0 and resumed.weight.iteration == 1
    older = ConstantWeight(0.5)
    older.load_state_dict({"iteration": 3})
    assert older() == 0.5 and older.iteration == 3
    with pytest.raises(ValueError, match="the state's constant must be non-negative"):
        older.load_state_dict({"iteration": 3, "constant": -1.0})


def test_state_dict_resumes_the_t_reg_sequence():
    def make() -> LocallyRegularized:
        return LocallyRegularized(
            MLPField(), rtol=RTOL, atol=ATOL, generator=torch.Generator().manual_seed(9)
        )

    model = make()
    model(_y0(), T)
    state = model.state_dict()
    model(_y0(), T)
    resumed = make()
    resumed.load_state_dict(state)
    resumed(_y0(), T)
    assert resumed.stats.t_reg == model.stats.t_reg


def test_a_generator_state_that_cannot_be_continued_is_warned_about():
    """A state with a generator's draws loaded into a model without one (or the reverse) would
    silently not continue the saved run's t_reg sequence."""
    with_generator = LocallyRegularized(MLPField(), generator=torch.Generator().manual_seed(9))
    without = LocallyRegularized(MLPField())
    with pytest.warns(UserWarning, match="saved by a model with a generator and this one has none"):
        without.load_state_dict(with_generator.state_dict())
    with pytest.warns(
        UserWarning, match="saved by a model without a generator: this model's generator keeps"
    ):
        with_generator.load_state_dict(without.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        without.load_state_dict(LocallyRegularized(MLPField()).state_dict())


def test_schedule_validation():
    with pytest.raises(ValueError, match="value must be non-negative"):
        ConstantWeight(-1.0)
    # A user's schedule is checked where its value is read, as a float weight is (a negative one
    # rewarded what the penalty measures, silently).
    for bad in (-1.0, float("nan")):
        schedule = type("Mine", (WeightSchedule,), {"value": lambda self, k, bad=bad: bad})()
        model = LocallyRegularized(MLPField(), weight=schedule)
        with pytest.raises(ValueError, match=r"^Mine.value\(0\) must be non-negative and finite"):
            model(torch.ones(2, 2, dtype=DTYPE), [0.0, 1.0])
    # A learned weight (a 0-dim tensor with a graph) is checked by value and kept with its graph.
    learned = torch.nn.Parameter(torch.tensor(0.3, dtype=DTYPE))
    model = LocallyRegularized(
        MLPField(), weight=type("Learned", (WeightSchedule,), {"value": lambda s, k: 2 * learned})()
    )
    model(torch.ones(2, 2, dtype=DTYPE), [0.0, 1.0])
    model.reg_loss.backward()
    assert float(learned.grad) == pytest.approx(2 * model.stats.penalty, rel=1e-12)
    # Given as the weight itself, its gradient was dropped silently (a constant is a float).
    for make in (lambda: LocallyRegularized(MLPField(), weight=learned), lambda: ConstantWeight(learned)):
        with pytest.raises(TypeError, match="is a tensor that requires grad, whose gradient a constant"):
            make()
    assert ConstantWeight(torch.tensor(0.5))() == 0.5
    with pytest.raises(ValueError, match="w1 must be positive"):
        ExponentialDecay(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        ExponentialDecay(2.0, 1.0, 0)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampling": "uniform"}, "sampling"),
        ({"regularizer": "kinetic"}, "regularizer"),
        ({"backend": "jax"}, "backend"),
        ({"step_size": "tiny"}, "step_size"),
        ({"regularizer": "stiffness", "reg_method": "bosh3"}, "reg_method"),
        ({"reg_method": "rk4"}, "reg_method"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"backend": "torchdiffeq", "gradient": "checkpoint"}, "gradient='checkpoint'"),
        ({"backend": "torchdiffeq", "gradient": "symplectic"}, "gradient='symplectic'"),
        ({"sampling": "biased", "detach_state": False}, "detach_state"),
        ({"gradient": "backsolve"}, "gradient"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocallyRegularized(MLPField(), **kwargs)
    if "weight" not in kwargs:
        with pytest.raises(ValueError, match=match):
            local_regularization(MLPField(), _y0(), T, **kwargs)


@pytest.mark.parametrize("cls", [LocallyRegularized, GloballyRegularized, RNODERegularized])
def test_a_weight_assigned_later_is_taken_as_the_constructor_takes_it(cls):
    """``model.weight = 0.1`` failed at the next forward pass (a float has no ``last_ratio``), and its
    ``state_dict()`` with it: a number is a ``ConstantWeight``, anything else a ``TypeError`` now."""
    model = cls(MLPField())
    model.weight = 0.1
    assert isinstance(model.weight, ConstantWeight) and model.weight() == 0.1
    model(_y0(), T)
    assert "weight" in model.state_dict()["_extra_state"]
    with pytest.raises(TypeError, match="weight must be a non-negative number or a WeightSchedule"):
        model.weight = "0.1"


@pytest.mark.parametrize(
    "function", [local_regularization, global_regularization, rnode_regularization, taynode_regularization]
)
def test_the_functional_forms_take_no_weight_and_warn_of_none(function):
    """They return the unweighted penalty: a ``weight`` did nothing (refused now), and the local
    one warned of its default weight being constant 1 for a plain function, which it never used."""
    field = MLPField()
    with pytest.raises(TypeError, match=rf"{function.__name__}\(\) takes no weight"):
        function(field, _y0(), T, weight=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch's own DeprecationWarnings aside
        _, reg, stats = function(lambda t, y: field(t, y), _y0(), T, adjoint_params=())
    assert reg.dim() == 0 and float(reg) == pytest.approx(stats.penalty, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Solver 'rk4' does not support callbacks")
def test_biased_with_a_torchdiffeq_fixed_grid_method_says_why():
    with pytest.raises(ValueError, match="adaptive method"):
        local_regularization(
            MLPField(),
            _y0(),
            T,
            sampling="biased",
            backend="torchdiffeq",
            method="rk4",
            options={"step_size": 0.1},
        )


def test_t_with_fewer_than_two_points():
    with pytest.raises(ValueError, match="t must hold at least 2"):
        LocallyRegularized(MLPField())(_y0(), T[:1])
    with pytest.raises(ValueError, match="t must hold at least 2"):
        GloballyRegularized(MLPField())(_y0(), T[:1])


def test_global_rejects_gradient_methods_without_a_per_step_graph():
    for gradient in ("adjoint", "symplectic"):
        with pytest.raises(ValueError, match="per-step graph"):
            GloballyRegularized(MLPField(), gradient=gradient)
    with pytest.raises(ValueError, match="reduction"):
        GloballyRegularized(MLPField(), reduction="median")
    with pytest.raises(ValueError, match="method"):
        GloballyRegularized(MLPField(), regularizer="stiffness", method="bosh3")


# --------------------------------------------------------------------------------------------------
# Global regularization [GR21]
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gradient",
    [
        "direct",
        "checkpoint",
    ],
)
@pytest.mark.parametrize(
    "regularizer, reduction", [("error", None), ("error", "sum"), ("stiffness", None), ("stiffness", "sum")]
)
def test_global_penalty_over_accepted_steps(regularizer, reduction, gradient):
    func = MLPField()
    y0 = _y0()
    model = GloballyRegularized(
        func, regularizer=regularizer, reduction=reduction, rtol=RTOL, atol=ATOL, gradient=gradient
    )
    ys = model(y0, T)
    reference = odeint(func, y0, T, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ys.detach(), reference.ys.detach(), rtol=0, atol=0)
    steps = reference.steps
    s_est = steps.stiffness_estimate / TSIT5.stability_size
    expected = {
        ("error", None): (steps.error_estimate * steps.dt.abs()).mean(),
        ("error", "sum"): (steps.error_estimate * steps.dt.abs()).sum(),
        ("stiffness", None): s_est.max(),
        ("stiffness", "sum"): (s_est * steps.dt.abs()).sum(),
    }[(regularizer, reduction)]
    assert model.reg_loss.item() == pytest.approx(float(expected), rel=1e-12)
    assert model.stats.nfe_main == reference.stats.nfe and model.stats.nfe_reg == 0
    (ys.pow(2).mean() + model.reg_loss).backward()
    grads = [p.grad for p in func.parameters()]
    assert all(torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0

    model.eval()
    assert torch.equal(model(y0, T), reference.ys) and model.reg_loss.item() == 0.0


def test_global_functional_form_matches_module():
    func = MLPField()
    ys, reg, stats = global_regularization(func, _y0(), T, rtol=RTOL, atol=ATOL)
    model = GloballyRegularized(func, weight=2.0, rtol=RTOL, atol=ATOL)
    ys_m = model(_y0(), T)
    assert torch.equal(ys, ys_m) and model.reg_loss.item() == pytest.approx(2 * reg.item(), rel=1e-15)


def test_functional_form_matches_module():
    func = MLPField()
    ys, reg, stats = local_regularization(
        func, _y0(), T, rtol=RTOL, atol=ATOL, generator=torch.Generator().manual_seed(4)
    )
    model = LocallyRegularized(
        func, weight=0.5, rtol=RTOL, atol=ATOL, generator=torch.Generator().manual_seed(4)
    )
    ys_m = model(_y0(), T)
    assert torch.equal(ys, ys_m) and model.stats.t_reg == stats.t_reg
    assert model.reg_loss.item() == pytest.approx(0.5 * reg.item(), rel=1e-15)


def test_stats_count_every_evaluation():
    func = CountingField(MLPField())
    for step_size, extra in (("initial", 1), ("solver", 0)):
        for backend in ("local_reg", "torchdiffeq"):
            before = func.calls
            _, _, stats = local_regularization(
                func, _y0(), T, rtol=RTOL, atol=ATOL, step_size=step_size, backend=backend, penalty="error-dt"
            )
            assert func.calls - before == stats.nfe_main + stats.nfe_reg
            assert stats.nfe_reg == 1 + extra + (TSIT5.n_stages - 1)
        # The default penalty: one evaluation of the field.
        before = func.calls
        _, _, stats = local_regularization(func, _y0(), T, rtol=RTOL, atol=ATOL, backend=backend)
        assert func.calls - before == stats.nfe_main + 1 and stats.nfe_reg == 1


def test_float32_and_module_wrapped_reg_loss():
    func = MLPField().float()
    model = LocallyRegularized(func, rtol=1e-3, atol=1e-5)
    ys = model(_y0().float(), T.float())
    assert ys.dtype == torch.float32 and model.reg_loss.dtype == torch.float32
    wrapper = torch.nn.ModuleDict({"ode": model})  # stands in for DDP's .module access
    assert wrapper["ode"].reg_loss is model.reg_loss


def test_reg_loss_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        func = MLPField()
        ddp = torch.nn.parallel.DistributedDataParallel(LocallyRegularized(func, rtol=RTOL, atol=ATOL))
        ys = ddp(_y0(), T)
        reg_loss = ddp.module.reg_loss
        assert reg_loss.dim() == 0 and reg_loss.item() > 0
        (ys.pow(2).mean() + reg_loss).backward()
        assert all(torch.isfinite(p.grad).all() for p in func.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", [local_reg.Checkpoint, local_reg.Symplectic])
def test_a_budget_of_step_states_passes_through_to_the_main_solve(method):
    """``gradient=Checkpoint(checkpoints=...)`` (or ``Symplectic``) reaches ``odeint``: the main
    solve keeps fewer states and the gradient of loss + penalty is unchanged."""
    func = MLPField()
    y0 = _y0(batch=2)
    results = []
    for gradient in (method(), method(checkpoints=2)):
        y = y0.clone().requires_grad_(True)
        ys, reg, stats = local_regularization(
            func,
            y,
            T,
            rtol=RTOL,
            atol=ATOL,
            gradient=gradient,
            detach_state=False,
            generator=torch.Generator().manual_seed(5),
        )
        loss = (ys[-1] ** 2).sum() + reg
        grads = torch.autograd.grad(loss, (y, *func.parameters()))
        results.append((torch.cat([g.reshape(-1) for g in grads]), stats.nfe_backward))
    (reference, nfe_all), (budgeted, nfe_budgeted) = results
    assert torch.equal(budgeted, reference)
    assert nfe_budgeted > nfe_all  # the states that were not kept were re-computed


@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
def test_regularized_models_take_tuple_states(gradient):
    # A CNF-like (z, logp) state: solved as one flat state, returned as a tuple.
    torch.manual_seed(0)
    net = MLPField()
    z0 = _y0()
    logp0 = torch.zeros(z0.shape[0], dtype=DTYPE)

    def field(t, state):
        z, _ = state
        dz = net(t, z)
        return dz, -(dz**2).sum(-1)

    model = LocallyRegularized(field, gradient=gradient, adjoint_params=tuple(net.parameters()))
    z, logp = model((z0, logp0), T)
    assert z.shape == (len(T), *z0.shape) and logp.shape == (len(T), z0.shape[0])
    assert model.reg_loss.dim() == 0 and model.reg_loss.requires_grad
    (z[-1].sum() + logp[-1].sum() + model.reg_loss).backward()
    assert all(p.grad is not None for p in net.parameters())
    model.eval()
    z_eval, logp_eval = model((z0, logp0), T)
    reference = odeint(field, (z0, logp0), T)
    torch.testing.assert_close(z_eval, reference.ys[0])
    torch.testing.assert_close(logp_eval, reference.ys[1])


@pytest.mark.parametrize(
    ("gradient", "backend"),
    [("symplectic", "local_reg"), ("adjoint", "local_reg"), ("adjoint", "torchdiffeq")],
)
def test_a_tuple_field_given_as_a_bound_method_trains_its_modules_parameters(gradient, backend):
    """A tuple state's field that is a bound method, with no ``adjoint_params``: the graph-free
    methods differentiate its module's parameters, as ``direct`` does (torchdiffeq's
    ``odeint_adjoint`` finds them as the wrapper's submodule)."""

    class CNF(MLPField):
        def dynamics(self, t, state):
            z, _ = state
            dz = self(t, z)
            return dz, -(dz**2).sum(-1)

    net = CNF()
    state = (_y0(), torch.zeros(3, dtype=DTYPE))
    grads = {}
    for method in ("direct", gradient):
        model = LocallyRegularized(
            net.dynamics, gradient=method, backend=backend, rtol=1e-10, atol=1e-10
        ).eval()
        z, logp = model(state, T)
        grads[method] = torch.autograd.grad(z[-1].sum() + logp[-1].sum(), tuple(net.parameters()))
    for ours, direct in zip(grads[gradient], grads["direct"], strict=True):
        torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.bfloat16])
def test_integer_and_half_precision_times_sample_as_odeint_reads_them(dtype):
    """``odeint`` reads such times in the state's dtype; so does the sampler (a bfloat16 span's
    rounding once snapped every draw to ``t0``, an integer one crashed)."""
    field = MLPField().float()
    y0 = _y0().float()
    draws = {}
    for times in (torch.tensor([0.0, 2.0]), torch.tensor([0, 2], dtype=dtype)):
        model = LocallyRegularized(field, generator=torch.Generator().manual_seed(0))
        draws[times.dtype] = []
        for _ in range(20):
            model(y0, times)
            draws[times.dtype].append(model.stats.t_reg)
    assert draws[dtype] == draws[torch.float32]
    assert len(set(draws[dtype])) == 20 and min(draws[dtype]) > 0.0


# --- the module's life cycle (audit of the regularized modules) -----------------------------------


@pytest.mark.parametrize("method", ["rk4", "euler"])
@pytest.mark.parametrize("options", [{"sampling": "biased"}, {"step_size": "solver"}, {"probe": "solver"}])
def test_torchdiffeq_fixed_grids_that_report_no_steps_are_refused_when_the_model_is_made(method, options):
    # step_size="solver" failed at the first forward pass with a bare IndexError, biased sampling
    # with a late ValueError: torchdiffeq's fixed grids call no step callback.
    with pytest.raises(ValueError, match=f"torchdiffeq's method '{method}' does not report"):
        LocallyRegularized(
            MLPField(), backend="torchdiffeq", method=method, options={"step_size": 0.25}, **options
        )


@pytest.mark.parametrize("method", ["rk4", "euler"])
@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("own_grid", [False, True])
def test_torchdiffeq_fixed_grids_of_the_output_times_read_t_reg_without_stepping_to_it(
    method, gradient, reverse, own_grid
):
    # Without a step_size the grid is the output times: t_reg became a grid point, so a training
    # pass took one step more than evaluation and returned other ys (euler: 5 evaluations against 4).
    t = torch.linspace(0.0, 1.0, 5, dtype=DTYPE)
    t = t.flip(0) if reverse else t
    options = {"grid_constructor": lambda func, y0, times: times} if own_grid else None
    model = LocallyRegularized(
        MLPField(),
        backend="torchdiffeq",
        method=method,
        gradient=gradient,
        options=options,
        detach_state=False,
        generator=torch.Generator().manual_seed(3),
    )
    ys = model(_y0(), t)
    t_reg, state, nfe = model.stats.t_reg, model.stats.state, model.stats.nfe_main
    model.reg_loss.backward()
    model.eval()
    torch.testing.assert_close(ys, model(_y0(), t), rtol=0, atol=0)
    assert nfe == model.stats.nfe_main == {"rk4": 16, "euler": 4}[method]
    # u(t_reg) is torchdiffeq's linear interpolation between the two outputs around it.
    i = int(torch.searchsorted(t.flip(0) if reverse else t, torch.tensor(t_reg, dtype=DTYPE)))
    i = len(t) - i if reverse else i
    fraction = (t_reg - float(t[i - 1])) / float(t[i] - t[i - 1])
    torch.testing.assert_close(state, ys[i - 1] + fraction * (ys[i] - ys[i - 1]), rtol=1e-12, atol=1e-14)


def test_a_draw_that_snaps_onto_an_output_time_keeps_it_on_torchdiffeqs_fixed_grid(monkeypatch):
    # A draw within the tolerance of the output time 0.5 is that time: it was taken off the grid as
    # an added t_reg (euler: 3 evaluations against 4, ys 0.1 from evaluation's).
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda times, t_dtype, generator: 0.5 + 1e-12)
    t = torch.linspace(0.0, 1.0, 5, dtype=DTYPE)
    model = LocallyRegularized(MLPField(), backend="torchdiffeq", method="euler")
    ys = model(_y0(), t)
    assert model.stats.t_reg == 0.5 and model.stats.nfe_main == 4
    model.eval()
    torch.testing.assert_close(ys, model(_y0(), t), rtol=0, atol=0)


@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_a_torchdiffeq_model_can_be_deep_copied_after_a_training_pass(gradient):
    # The stats kept the last time torchdiffeq passed func, a tensor with a graph: copy.deepcopy
    # refused the model ("keep the best model" after a step).
    import copy

    model = LocallyRegularized(MLPField(), backend="torchdiffeq", gradient=gradient, rtol=RTOL, atol=ATOL)
    (model(_y0(), T).pow(2).sum() + model.reg_loss).backward()
    clone = copy.deepcopy(model)
    clone.eval(), model.eval()
    torch.testing.assert_close(clone(_y0(), T), model(_y0(), T), rtol=0, atol=0)


def test_assigning_a_new_field_is_refused_and_copies_still_work():
    # The solve kept the first field while parameters() listed the new one: an optimizer over
    # them trained nothing, silently.
    import copy
    import pickle

    model = LocallyRegularized(MLPField(), rtol=RTOL, atol=ATOL)
    with pytest.raises(AttributeError, match="func is fixed when the model is made"):
        model.func = MLPField(seed=1)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.func is not model.func and isinstance(clone.func, MLPField)
    plain = odeint(lambda t, y: -y, _y0(), T)  # odeint's own func argument is untouched
    assert plain.ys.shape == (4, 3, 2)


def _draw_in_a_child(model, queue):
    queue.put(torch.rand(3, generator=model.generator).tolist())


def test_a_model_with_its_own_generator_travels_to_a_spawned_process_with_its_stream():
    # torch.multiprocessing's pickler could not send the generator: the child died unpickling it
    # ("unable to resize file"). Its state travels as bytes, so the child draws what this would.
    import copy
    import pickle

    model = LocallyRegularized(MLPField(), generator=torch.Generator().manual_seed(3))
    torch.rand(2, generator=model.generator)  # the state travels, not the seed
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_draw_in_a_child, args=(model, queue))
    child.start()
    drawn = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    clone = copy.deepcopy(model)
    expected = torch.rand(3, generator=model.generator).tolist()
    assert drawn == expected and torch.rand(3, generator=clone.generator).tolist() == expected
    # Two models sharing a generator still share one after a copy (one stream, not two equal ones).
    shared = torch.Generator().manual_seed(1)
    pair = torch.nn.ModuleList([LocallyRegularized(MLPField(), generator=shared) for _ in range(2)])
    for copied in (copy.deepcopy(pair), pickle.loads(pickle.dumps(pair))):
        assert copied[0].generator is copied[1].generator is not shared


def test_a_state_saved_with_another_weight_says_how_to_keep_this_models():
    paper = LocallyRegularized.paper(MLPField(), weight=ExponentialDecay(2.5, 1.0, 10))
    default = LocallyRegularized(MLPField())
    advice = r"remove the state dict's '_extra_state' entry of this module and load with strict=False"
    with pytest.raises(ValueError, match=r"RatioWeight state is missing .*" + advice):
        default.load_state_dict(paper.state_dict())
    state = {k: v for k, v in paper.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match="Missing key"):  # the advice without its strict=False
        default.load_state_dict(state)
    default.load_state_dict(state, strict=False)  # the advice works


def test_a_generator_state_of_another_device_is_refused_leaving_the_model_as_it_was():
    """A run trained with a CUDA generator (a 16-byte Philox state) resumed on a CPU one, or the
    reverse: torch's bare "Expected a CPUGeneratorImplState of size 5056" instead of what to do.
    Nothing of the state is taken then, nor when the weight's state is refused after the generator's."""
    model = LocallyRegularized(MLPField(), generator=torch.Generator().manual_seed(1))
    state = model.state_dict()
    state["_extra_state"] = dict(state["_extra_state"], generator=torch.zeros(16, dtype=torch.uint8))
    before = model.generator.get_state()
    with pytest.raises(ValueError, match=r"saved generator state \(16 bytes\) does not fit .* on cpu"):
        model.load_state_dict(state)
    assert torch.equal(model.generator.get_state(), before)
    other = LocallyRegularized(MLPField(), generator=torch.Generator().manual_seed(2))
    state = other.state_dict()
    for weight in ({"bogus": 1}, None):  # a weight state refused, or none at all
        extra = dict(state["_extra_state"], weight=weight)
        if weight is None:
            del extra["weight"]
        with pytest.raises(ValueError, match="state dict's '_extra_state'"):
            model.load_state_dict({**state, "_extra_state": extra})
        assert torch.equal(model.generator.get_state(), before)


def test_a_refused_or_failed_call_leaves_the_models_generator_where_it_was():
    """The draws (t_reg, STEER's end time, RNODE's noise, an SDE's Brownian seed) come before the
    solve's own checks: a refused call advanced the generator, so the next call drew otherwise than
    a fresh model's, and so did a call whose func raised (a batch a loop skips)."""
    from tests.problems import DecaySDE

    def calls(make, good, bad):
        draws = []
        for refuse in (False, True):
            model = make()
            if refuse:
                with pytest.raises((ValueError, TypeError, RuntimeError)):
                    bad(model)
            ys = good(model)
            draws.append((ys, model.reg_loss, model.generator.get_state()))
        for (ys, reg, state), (ys_fresh, reg_fresh, state_fresh) in zip(draws[1:], draws[:1], strict=True):
            assert (
                torch.equal(ys, ys_fresh) and torch.equal(reg, reg_fresh) and torch.equal(state, state_fresh)
            )

    def own():
        return torch.Generator().manual_seed(0)

    class FailingField(MLPField):
        fails = False

        def forward(self, t, y):
            if self.fails:
                raise RuntimeError("func failed")
            return super().forward(t, y)

    def fail_once(model):
        model.func.fails = True
        try:
            model(_y0(), T)
        finally:
            model.func.fails = False

    good = lambda model: model(_y0(), T)  # noqa: E731
    calls(lambda: LocallyRegularized(MLPField(), generator=own()), good, lambda m: m(_y0(), [0.0, 1e39]))
    calls(lambda: LocallyRegularized(FailingField(), generator=own()), good, fail_once)
    calls(lambda: local_reg.SteerRegularized(MLPField(), b=0.3), good, lambda m: m(_y0().long(), T))
    calls(lambda: RNODERegularized(MLPField(), weight=1.0), good, lambda m: m(_y0(), [0.0]))
    sde_y0 = torch.ones(3, 2, dtype=torch.float32)
    calls(
        lambda: LocallyRegularized(DecaySDE(), generator=own()),
        lambda m: m(sde_y0, [0.0, 1.0]),
        lambda m: m(sde_y0, [1.0, 1.0 + 1e-9]),
    )


def test_probe_arguments_are_named_as_the_probes():
    with pytest.raises(ValueError, match="reg_method: unknown method 'foo'"):
        LocallyRegularized(MLPField(), reg_method="foo")
    with pytest.raises(TypeError, match="paper needs the paper's fixed weight"):
        LocallyRegularized.paper(MLPField(), weight=None)
    with pytest.raises(ValueError, match="penalty='kinetic' takes no probe step: reg_method"):
        local_reg.LocalPenalty(penalty="kinetic", reg_method="dopri5")


def test_a_float64_t_reaches_a_float32_field_in_float64_in_every_module():
    """As ``odeint``: a float64 ``t`` keeps its precision for a float32 state. The modules handed
    odeint the times as floats (read in the state's dtype), so near ``t = 1000`` their eval solve
    was not the plain ``odeint`` solve, and ``t = [1e8, 1e8 + 1]`` was refused."""
    seen = []

    class Field(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, t, y):
            seen.append(t.dtype)
            return torch.tanh(self.lin(y)) * torch.cos(1e3 * t).to(y.dtype)

    torch.manual_seed(0)
    field, y0 = Field(), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.3337, 1.0000001], dtype=torch.float64) + 1000.0
    reference = odeint(field, y0, t)
    makers = [
        LocallyRegularized,
        GloballyRegularized,
        local_reg.RNODERegularized,
        lambda f: local_reg.SteerRegularized(f, b=0.1),
    ]
    for make in makers:
        model = make(field)
        model.eval()
        seen.clear()
        assert torch.equal(model(y0, t), reference.ys) and set(seen) == {torch.float64}
        model.train()
        seen.clear()
        model(y0, t)
        assert set(seen) == {torch.float64}
    far = torch.tensor([1e8, 1e8 + 1.0], dtype=torch.float64)
    assert torch.equal(LocallyRegularized(field).eval()(y0, far), odeint(field, y0, far).ys)


def test_the_probe_step_uses_the_main_solves_norm():
    """``options["norm"]`` is the error norm of the main solve, and so of the probe that repeats its
    step (and of the heuristic that sizes it): the probe used the RMS norm whatever was given."""

    def max_norm(x):
        return x.abs().max()

    model = LocallyRegularized(
        MLPField(),
        penalty="error-dt",
        probe="initial",
        weight=1.0,
        rtol=RTOL,
        atol=ATOL,
        options={"norm": max_norm},
    )
    model(_y0(), T)
    stats = model.stats
    k1 = model.problem.func(torch.tensor(stats.t_reg, dtype=DTYPE), stats.state)
    dt, _ = local_reg.initial_step_size(
        model.problem.func, stats.t_reg, stats.state, k1, TSIT5.order, RTOL, ATOL, norm=max_norm, t_end=T[-1]
    )
    assert stats.dt_reg == pytest.approx(dt, rel=1e-12)
    expected = step(
        model.problem.func, stats.t_reg, stats.state, dt, TSIT5, rtol=RTOL, atol=ATOL, norm=max_norm
    )
    assert float(model.reg_loss) == pytest.approx(float(expected.error_estimate) * dt, rel=1e-9)


def test_the_torchdiffeq_backend_takes_a_backsolve_adjoint_of_another_method():
    """torchdiffeq needs ``adjoint_options`` when the adjoint's method differs from the forward's
    (it cannot infer them): every such model failed at its first call. A method torchdiffeq lacks
    is refused when the model is made."""
    func = MLPField()
    gradient = local_reg.BacksolveAdjoint(method="bosh3", rtol=1e-7, atol=1e-9)
    model = LocallyRegularized(func, backend="torchdiffeq", gradient=gradient, rtol=RTOL, atol=ATOL)
    y0 = _y0().requires_grad_()
    ys = model(y0, T)
    (ys.pow(2).sum() + model.reg_loss).backward()
    theirs = torchdiffeq.odeint_adjoint(
        func,
        y0,
        torch.as_tensor(T, dtype=DTYPE),
        rtol=RTOL,
        atol=ATOL,
        method="dopri5",
        adjoint_method="bosh3",
        adjoint_rtol=1e-7,
        adjoint_atol=1e-9,
        adjoint_options={},
    )
    torch.testing.assert_close(ys, theirs, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="BacksolveAdjoint method 'tsit5' is not one of torchdiffeq's"):
        LocallyRegularized(func, backend="torchdiffeq", gradient=local_reg.BacksolveAdjoint(method="tsit5"))


@pytest.mark.parametrize(
    ("gradient", "options", "match"),
    [
        ("direct", {"checkpoints": 4}, "checkpoints only applies"),
        ("adjoint", {"adjoint_method": "nosuch"}, "unknown method 'nosuch'"),
        ("adjoint", {"adjoint_options": {"bogus": 1}}, r"adjoint_options: unknown keys \['bogus'\]"),
        ("symplectic", {"adjoint_rtol": 1e-8}, "^adjoint_rtol applies only to gradient='adjoint'"),
        ("symplectic", {"adjoint_rtol": 1e-8, "adjoint_atol": 1e-8}, "adjoint_atol apply only to"),
        (local_reg.BacksolveAdjoint(method="rk4"), {}, "BacksolveAdjoint method 'rk4' is fixed-step"),
    ],
)
def test_a_models_gradient_settings_are_checked_when_it_is_made(gradient, options, match):
    """What odeint checks of the gradient method at every solve (the deprecated keys it converts,
    a fixed-step backward method without a step size) was found only at the first forward call."""
    for make in (LocallyRegularized, GloballyRegularized):
        with pytest.raises(ValueError, match=match):
            make(MLPField(), gradient=gradient, options=options)


# The torchdiffeq backend against torchdiffeq itself ------------------------------------------------


def test_the_torchdiffeq_backends_adjoint_settings_and_backward_count_are_torchdiffeqs():
    """``BacksolveAdjoint(norm="seminorm", max_steps=...)`` reach ``odeint_adjoint`` as its
    ``adjoint_options`` (``max_steps`` renamed), and ``nfe_backward`` counts the backward solve's
    calls alone: both compared with torchdiffeq's own call, counted by hand."""

    class Counted(MLPField):
        calls = 0

        def forward(self, t, y):
            Counted.calls += 1
            return super().forward(t, y)

    gradient = local_reg.BacksolveAdjoint(norm="seminorm", max_steps=1000)
    model = LocallyRegularized(
        Counted(), backend="torchdiffeq", gradient=gradient, rtol=RTOL, atol=ATOL
    ).eval()
    y0 = _y0().requires_grad_()
    model(y0, T)[-1].pow(2).sum().backward()
    ours = (model.stats.nfe_backward, y0.grad.clone())
    y0.grad = None
    ys = torchdiffeq.odeint_adjoint(
        model.func, y0, T, rtol=RTOL, atol=ATOL, method="dopri5",
        adjoint_options={"norm": "seminorm", "max_num_steps": 1000},
    )  # fmt: skip
    Counted.calls = 0
    ys[-1].pow(2).sum().backward()
    assert ours[0] == Counted.calls > 0
    torch.testing.assert_close(ours[1], y0.grad, rtol=1e-12, atol=1e-12)
    # The step limit reaches the backward solve.
    small = LocallyRegularized(
        Counted(),
        backend="torchdiffeq",
        gradient=local_reg.BacksolveAdjoint(max_steps=2),
        rtol=RTOL,
        atol=ATOL,
    ).eval()
    with pytest.raises((AssertionError, local_reg.SolverError), match="max_num_steps"):
        small(_y0().requires_grad_(), T)[-1].sum().backward()


def test_the_torchdiffeq_backend_gives_a_plain_functions_adjoint_params_their_gradient():
    """``y = y0 exp(-w t)``: ``dy(1)/dw = -y0 exp(-w)``, through torchdiffeq's backsolve adjoint."""
    w = torch.nn.Parameter(torch.tensor(0.7, dtype=DTYPE))
    model = LocallyRegularized(
        lambda t, y: -w * y,
        backend="torchdiffeq",
        gradient="adjoint",
        adjoint_params=(w,),
        rtol=1e-10,
        atol=1e-12,
    ).eval()
    y0 = torch.tensor([1.0, 2.0], dtype=DTYPE)
    model(y0, [0.0, 1.0])[-1].sum().backward()
    assert float(w.grad) == pytest.approx(-3.0 * math.exp(-0.7), rel=1e-7)


def test_biased_sampling_on_the_torchdiffeq_backend_draws_an_accepted_step_start():
    """``t_reg`` and ``u(t_reg)`` are the start of a step torchdiffeq accepted and its state, as its own
    ``callback_accept_step`` (called on the field as well) reports them, not the step's end."""
    starts, states = [], []

    class Watched(MLPField):
        def callback_accept_step(self, t0, y0, dt):
            starts.append(float(t0.detach()))
            states.append(y0.detach().clone())

    model = LocallyRegularized(Watched(), sampling="biased", backend="torchdiffeq", rtol=RTOL, atol=ATOL)
    for seed in range(3):
        model.generator = torch.Generator().manual_seed(seed)
        starts.clear()
        states.clear()
        model(_y0(), T)
        assert len(starts) > 2 and model.stats.t_reg in starts
        torch.testing.assert_close(model.stats.state, states[starts.index(model.stats.t_reg)], rtol=0, atol=0)


@pytest.mark.parametrize("sampling", ["random", "biased", None])
def test_the_torchdiffeq_backends_step_counts_are_torchdiffeqs_own(sampling):
    """With an adaptive torchdiffeq method the steps are counted (torchdiffeq's step callbacks, which
    ``func``'s own still receive): ``n_accepted`` was ``None`` unless biased sampling recorded the
    steps, and ``main`` reported no steps at all."""
    calls = {"attempted": 0, "accepted": 0, "rejected": 0}

    class Watched(MLPField):
        def callback_step(self, t0, y0, dt):
            calls["attempted"] += 1

        def callback_accept_step(self, t0, y0, dt):
            calls["accepted"] += 1

        def callback_reject_step(self, t0, y0, dt):
            calls["rejected"] += 1

    kwargs = {"sampling": sampling} if sampling else {}
    kind = LocallyRegularized if sampling else local_reg.Regularized
    # A loose tolerance and a large first step: torchdiffeq rejects some steps.
    options = {"first_step": 0.9}
    model = kind(Watched(), backend="torchdiffeq", rtol=1e-7, atol=1e-9, options=options, **kwargs)
    model(_y0(), T)
    main = model.stats.main
    assert calls["rejected"] > 0 and calls["attempted"] == calls["accepted"] + calls["rejected"]
    assert (main.n_steps, main.n_accepted, main.n_rejected) == tuple(calls.values())
    assert model.stats.n_accepted == calls["accepted"]
    fixed = local_reg.Regularized(MLPField(), backend="torchdiffeq", method="rk4", options={"step_size": 0.1})
    fixed(_y0(), T)
    assert fixed.stats.n_accepted is None and fixed.stats.main.n_steps == 0  # unknown: not reported


def test_the_recorded_state_at_a_time_interpolates_a_backward_in_time_step():
    """``u(t_reg)`` halfway through a step from t = 1 back to 0.5 is halfway between its end states
    (a fraction taken with ``|dt|`` extrapolated the wrong way)."""
    from local_reg.regularization._main_solve import MainSolve
    from local_reg.solution import Stats

    main = MainSolve(
        ys=torch.tensor([[0.0], [1.0], [2.0]]), stats=Stats(), step_t=[1.0, 0.5], step_dt=[-0.5, -0.5],
        step_states=torch.tensor([[0.0], [1.0]]),
    )  # fmt: skip
    torch.testing.assert_close(main.state_at(0.75, -1.0), torch.tensor([0.5]))


@pytest.mark.parametrize("t", [[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
def test_the_torchdiffeq_backends_recorded_steps_are_signed_as_their_direction(t):
    """torchdiffeq reports a step towards decreasing time with ``dt > 0``: the record's signed
    steps (which the interpolation above reads) lead from each step start to the next."""
    from local_reg.regularization._main_solve import Request

    problem = LocallyRegularized(MLPField(), backend="torchdiffeq", sampling="biased").problem
    times, t_dtype, context, _ = problem.prepare(_y0(), t, None)
    main = problem.solve(_y0(), times, t_dtype, context, Request(steps=True))
    step_t, step_dt = main.step_t, main.step_dt
    assert all(math.copysign(1.0, dt) == math.copysign(1.0, t[-1] - t[0]) for dt in step_dt)
    assert len(step_dt) > 2
    assert all(
        b == pytest.approx(a + dt, rel=1e-12) for a, b, dt in zip(step_t, step_t[1:], step_dt, strict=False)
    )


def test_the_default_weight_of_a_frozen_field_is_a_constant_one():
    """No trainable parameter to measure the ratio on: the weight is constant, as for a plain
    function (frozen parameters were taken as measurable)."""
    from local_reg.regularization.local import default_weight

    field = torch.nn.Linear(2, 2).requires_grad_(False)
    assert isinstance(
        default_weight(lambda t, y: field(y), list(field.parameters())), local_reg.ConstantWeight
    )


def test_a_probe_scale_alone_asks_for_the_probe_step():
    """``probe_scale`` sets the probe's step, so with it the default penalty takes one (it was
    refused as an option of the probe-free kinetic penalty)."""
    model = LocallyRegularized(MLPField(), probe_scale=2.0, weight=1.0)
    model(_y0(), T)
    assert model.stats.probe.nfe > 1


def test_default_tolerances_are_local_regs_whatever_the_backend(monkeypatch):
    # The docstring said "the solver's defaults", which read as torchdiffeq's 1e-7 / 1e-9 there.
    seen = []
    original = torchdiffeq.odeint

    def spy(func, y0, t, *, rtol, atol, **options):
        seen.append((rtol, atol))
        return original(func, y0, t, rtol=rtol, atol=atol, **options)

    monkeypatch.setattr(torchdiffeq, "odeint", spy)
    model = local_reg.Regularized(MLPField(), backend="torchdiffeq").eval()
    model(_y0(), T)
    native = local_reg.Regularized(MLPField())
    assert seen == [(1e-6, 1e-8)] and (native.problem.rtol, native.problem.atol) == (1e-6, 1e-8)


def test_a_kept_torchdiffeq_stats_holds_no_recorded_states():
    # The stats' backward counter holds torchdiffeq's counting field, which kept every state it
    # recorded for biased sampling: a list of kept stats grew by those states each iteration.
    model = LocallyRegularized.paper(
        MLPField(), 1.0, backend="torchdiffeq", sampling="biased", rtol=RTOL, atol=ATOL
    )
    (model(_y0(), T).pow(2).sum() + model.reg_loss).backward()
    counting = model.stats.backward_counter.counting
    assert counting.step_states == [] and len(counting.step_t) == model.stats.n_accepted > 0


def _checkpointed_gradients(model, reentrant):
    """The field's gradients of one training pass of ``model`` run through
    ``torch.utils.checkpoint`` (``reentrant``), or directly (``None``)."""
    from torch.utils.checkpoint import checkpoint

    y0 = _y0().requires_grad_(True)  # a parameterless SDE's graph reaches y0 alone

    def run(y):
        return model(y, T)[-1].pow(2).sum() + model.reg_loss

    loss = run(y0) if reentrant is None else checkpoint(run, y0, use_reentrant=reentrant)
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_model_that_draws_from_its_own_generator_refuses_a_checkpoint_re_run(reentrant):
    """``torch.utils.checkpoint`` re-runs the model in the backward pass and replays torch's global
    stream, not a model's own generator: STEER's end time, RNODE's noise, ``t_reg`` and an SDE's
    Brownian path were drawn anew, a gradient of other draws (1e-4 to 7e-2 off) or torch's
    CheckpointError. Drawn from the global stream, the re-run is exact."""
    from tests.problems import DecaySDE

    own = torch.Generator().manual_seed(0)
    models = [
        local_reg.SteerRegularized(MLPField(), b=0.3),
        LocallyRegularized(MLPField(), generator=own),
        local_reg.Regularized(DecaySDE(), generator=own),
    ]
    if reentrant:  # RNODE's torch.func.vjp refuses the non-reentrant checkpoint's saved-tensor hooks
        models.append(RNODERegularized(MLPField(), weight=1.0))
    for model in models:
        with pytest.raises(RuntimeError, match=r"re-run inside a backward pass .* own generator"):
            _checkpointed_gradients(model, reentrant)
    torch.manual_seed(3)
    expected = _checkpointed_gradients(LocallyRegularized(MLPField()), None)
    torch.manual_seed(3)
    checkpointed = _checkpointed_gradients(LocallyRegularized(MLPField()), reentrant)
    for got, want in zip(checkpointed, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


def _users_own_warning() -> None:
    warnings.warn("the user's own warning", UserWarning, stacklevel=1)


def test_building_a_model_leaves_the_warning_filters_and_their_memory_alone():
    """Every construction entered warnings.catch_warnings (for deprecated keys it rarely had), which
    resets each warning's once-per-location memory (a "default" warning showed again after every
    model) and swaps the process's filters (another thread's warnings could be swallowed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        filters = warnings.filters
        _users_own_warning()
        LocallyRegularized(lambda t, y: -y, adjoint_params=())
        GloballyRegularized(lambda t, y: -y)
        _users_own_warning()
        assert warnings.filters is filters
    assert [str(w.message) for w in caught] == ["the user's own warning"]


@pytest.mark.parametrize("outer", [LocallyRegularized, GloballyRegularized, Regularized])
@pytest.mark.parametrize("inner", [LocallyRegularized, Regularized])
def test_a_regularized_model_as_the_field_is_refused_naming_its_field(outer, inner):
    """A regularized model's forward(y0, t) passed the check of a field func(t, y): in eval mode
    the nested model solved another problem without a word (it took the outer times for its state),
    in training mode it failed on its "times"."""
    field = CountingField(lambda t, y: -y)
    with pytest.raises(TypeError, match=r"func is a regularized model .*pass its field, func\.func"):
        outer(inner(field))
    outer(inner(field).func)  # the remedy builds


@pytest.mark.parametrize(
    "solve", ["odeint", "compat.odeint", "compat.odeint_adjoint", "odeint_event", "compat.scipy_solver"]
)
def test_a_regularized_model_given_to_a_solver_is_refused(solve):
    """The solvers called the model as func(t, y), i.e. forward(y0=t, t=y): with an elementwise
    field the shapes fit, and they returned another problem's solution (0.71 off here), silently."""
    import local_reg.compat as compat

    model = LocallyRegularized(CountingField(lambda t, y: -y))
    y0, t = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, 1.0])
    with pytest.raises(TypeError, match=r"func is a regularized model \(LocallyRegularized\).*func\.func"):
        if solve == "odeint":
            odeint(model, y0, t)
        elif solve == "odeint_event":
            local_reg.odeint_event(model, y0, t[0], event_fn=lambda t, y: y[0] - 0.5)
        elif solve == "compat.scipy_solver":
            compat.odeint(model, y0, t, method="scipy_solver", options={"solver": "RK45"})
        else:
            getattr(compat, solve.split(".")[1])(model, y0, t)


def test_a_trained_models_state_loads_into_the_plain_model_without_a_warning():
    """Serving a trained model as the same model without a penalty: its weight's state was loaded
    into the plain model's unread constant weight, with a warning that the state may come from
    another schedule, and its generator's state was warned about too; the values were right."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    trained = LocallyRegularized(NetField(net), generator=torch.Generator().manual_seed(1))
    y0, t = torch.randn(3, 2), torch.linspace(0.0, 1.0, 3)
    for _ in range(2):
        ys = trained(y0, t)
        (ys.square().mean() + trained.reg_loss).backward()
    plain = Regularized(
        NetField(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(y0, t), trained.eval()(y0, t), rtol=0, atol=0)


def test_the_torchdiffeq_backend_stops_at_local_regs_step_limit(monkeypatch):
    """torchdiffeq's own limit is 2**31 - 1 attempts per output interval: a stiff field ran for
    hours on backend='torchdiffeq' where the local_reg backend stops at max_steps. The default
    limit is local_reg's (lowered here to keep the test short); torchdiffeq's own replaces it."""
    import local_reg.regularization._ode_backends as ode_backends

    monkeypatch.setattr(ode_backends, "DEFAULT_MAX_STEPS", 300)
    stiff = lambda t, y: -1e5 * (y - torch.cos(t))  # noqa: E731
    y0, t = torch.zeros(2, 1, dtype=torch.float64), torch.tensor([0.0, 3.0], dtype=torch.float64)
    with pytest.raises(local_reg.SolverError, match="300 steps attempted without reaching the end") as info:
        Regularized(stiff, backend="torchdiffeq", method="dopri5")(y0, t)
    assert info.value.n_steps == 300 and 0.0 < info.value.t < 3.0
    with pytest.raises(local_reg.SolverError, match=r"max_num_steps exceeded \(400>=400\)"):
        Regularized(stiff, backend="torchdiffeq", method="dopri5", options={"max_num_steps": 400})(y0, t)


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_peer_backends_non_finite_solution_is_a_solver_error(backend):
    """torchdiffeq's fixed grids and torchsde's fixed steps went on through a NaN and returned it
    (the local_reg backend stops at the step): now a SolverError at the first evaluation that
    returned NaN, naming the first output time holding it, in training (whose reg_loss looked
    normal) and in eval mode."""

    def drift(t, y):
        return torch.tanh(y) * (float("nan") if t > 0.5 else 1.0)

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return drift(t, y)

        def g(self, t, y):
            return 0.1 * torch.sigmoid(y)

    if backend == "torchdiffeq":
        field, options = drift, {"step_size": 0.05}
        method = "rk4"
    else:
        field, options, method = SDE(), {"adaptive": False, "dt": 0.05}, None
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    for model in (Regularized(field, backend=backend, method=method, options=options),):
        for training in (True, False):
            model.train(training)
            with pytest.raises(
                local_reg.SolverError,
                match=f"{backend}: .* returned non-finite values, and the peer solver went on with them "
                "to a non-finite state at the output time 1.0",
            ) as info:
                model(y0, t)
            # Within the step past 0.5 (rk4's 3/8 rule evaluates at a third of the step).
            assert 0.5 < info.value.t <= 0.55 + 1e-9 and info.value.n_steps is None


def test_the_torchdiffeq_backend_refuses_scipy_solver():
    """Its solutions carry no graph: a model trained on them trained on its penalty alone, silently."""
    with pytest.raises(ValueError, match="method='scipy_solver' returns solutions without gradients"):
        LocallyRegularized(lambda t, y: -y, backend="torchdiffeq", method="scipy_solver")


class _PeerField(torch.nn.Module):
    """``tanh(linear(y))`` through ``layer`` (none by default), scaled by a buffer: the field of the
    peer backends' adjoint tests."""

    def __init__(self, layer: torch.nn.Module | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.layer = torch.nn.Identity() if layer is None else layer
        self.register_buffer("scale", torch.ones(2))

    def forward(self, t, y):
        return self.layer(torch.tanh(self.linear(y))) * self.scale


class _PeerSDE(_PeerField):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return self(t, y)

    def g(self, t, y):
        return 0.1 * torch.sigmoid(y)


def _peer_adjoint_model(backend: str, layer: torch.nn.Module | None = None, **ode_settings) -> Regularized:
    """A plain model of :class:`_PeerField` (:class:`_PeerSDE` on torchsde, in fixed steps of 0.1)
    differentiated by the peer backend's adjoint; ``ode_settings``: the ODE model's."""
    if backend == "torchsde":
        return Regularized(
            _PeerSDE(layer), backend=backend, gradient="adjoint", options={"adaptive": False, "dt": 0.1}
        )
    return Regularized(_PeerField(layer), backend=backend, gradient="adjoint", **ode_settings)


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_peer_adjoint_warns_of_dropout_as_local_regs_methods_do(backend):
    """torchdiffeq's and torchsde's adjoints evaluate the field again in their backward pass, as
    local_reg's graph-free methods do, whose warning named the dropout; the peers' gave none."""
    # Fixed steps: adaptive ones never settle on a field whose dropout draws anew at every call.
    model = _peer_adjoint_model(backend, torch.nn.Dropout(0.1), method="rk4", options={"step_size": 0.1})
    with pytest.warns(UserWarning, match="dropout"):
        model(torch.randn(4, 2), torch.linspace(0.0, 1.0, 3))


def test_the_torchdiffeq_adjoint_trains_a_bound_methods_module():
    """A latent model's field as a bound method (``LocallyRegularized(self.dynamics)``, as the docs
    show): torchdiffeq's adjoint took the parameters of the wrapper it was given, which holds no
    module, so the field trained on the penalty alone, silently. Its gradient is direct's now."""

    class Latent(torch.nn.Module):
        def __init__(self, gradient):
            super().__init__()
            torch.manual_seed(0)
            self.encoder = torch.nn.Linear(2, 2)
            self.field = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
            self.ode = Regularized(
                self.dynamics, backend="torchdiffeq", gradient=gradient, rtol=1e-8, atol=1e-8
            )

        def dynamics(self, t, z):
            return self.field(z)

        def forward(self, x):
            return self.ode(self.encoder(x), torch.tensor([0.0, 1.0]))[-1]

    grads = []
    for gradient in ("direct", "adjoint"):
        model = Latent(gradient)
        model(torch.ones(3, 2)).square().sum().backward()
        grads.append(model.field[0].weight.grad)
    assert grads[1] is not None
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_peer_adjoint_refuses_buffers_swapped_in_for_the_forward_call_only(backend):
    """torchdiffeq's and torchsde's adjoints evaluate the field again with what its module holds in
    their backward pass: a buffer swapped in by functional_call gave torchdiffeq's a gradient of
    another field (-2.97 for -1.72), silently, where local_reg's methods refuse it."""
    from torch.func import functional_call

    model = _peer_adjoint_model(backend)
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    ys = functional_call(model, {"func.scale": torch.full((2,), 0.5)}, (y0, t))
    name = "sde" if backend == "torchsde" else "func"
    with pytest.raises(RuntimeError, match=f"{name}'s module holds other buffers in the backward pass"):
        ys.square().sum().backward()
    model(y0, t).square().sum().backward()  # without the swap, as before
    assert model.func.linear.weight.grad is not None
    if backend == "torchsde":
        return
    # A buffer the field replaces itself on each call (a counter) is its own state: two calls before
    # one backward pass, a retained graph's second pass and the local probe's evaluation after the
    # solve pass (the first check took one snapshot and refused each), with a warning of it.

    class Counting(_PeerField):
        def forward(self, t, y):
            self.calls = self.calls + 1
            return super().forward(t, y)

    counting = Counting()
    counting.register_buffer("calls", torch.zeros(()))
    with pytest.warns(UserWarning, match="changed its buffer"):
        model = Regularized(counting, backend=backend, gradient="adjoint")
        (model(y0, t).sum() + model(y0 + 1, t).sum()).backward()
        ys = model(y0, t)
        ys.sum().backward(retain_graph=True)
        ys.sum().backward()
        local = LocallyRegularized(counting, backend=backend, gradient="adjoint")
        (local(y0, t).sum() + local.reg_loss).backward()


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_peer_adjoint_refuses_a_parameter_replaced_at_the_freed_ones_address(backend):
    """A frozen parameter (outside ``adjoint_params``, held by nothing but the module) replaced
    after the solve by one at its address passed the check by ``id``, and the backward pass
    re-evaluated the field with the new value, silently."""
    model = _peer_adjoint_model(backend)
    linear = model.func.linear
    linear.bias.requires_grad_(False)
    ys = model(torch.randn(4, 2), torch.linspace(0.0, 1.0, 3))
    value = torch.ones(2)
    freed = id(linear._parameters.pop("bias"))
    linear._parameters["bias"] = made_at(freed, lambda: torch.nn.Parameter(value, requires_grad=False))
    with pytest.raises(RuntimeError, match="holds other parameter tensors in the backward pass"):
        ys.sum().backward()


def test_a_peer_backend_of_the_other_kind_of_equation_is_named_as_such():
    """An SDE given backend='torchdiffeq' was told of an "unknown backend 'torchdiffeq'"."""
    with pytest.raises(ValueError, match="backend='torchdiffeq' solves ODEs: an SDE takes"):
        Regularized(ConstantNoiseSDE(), backend="torchdiffeq")
    with pytest.raises(ValueError, match=r"backend='torchsde' solves SDEs .*: an ODE takes"):
        Regularized(lambda t, y: -y, backend="torchsde")


def test_the_torchdiffeq_adjoints_backward_solve_stops_at_the_step_limit(monkeypatch):
    """The forward solve's limit did not reach odeint_adjoint's backward solve, which ran on
    (18,000 steps at rtol 1e-10 where local_reg's own backsolve stops at max_steps)."""
    import local_reg.regularization._ode_backends as ode_backends
    from local_reg import BacksolveAdjoint

    monkeypatch.setattr(ode_backends, "DEFAULT_MAX_STEPS", 200)
    weight = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    field = lambda t, y: -weight * y + torch.sin(20 * t)  # noqa: E731
    y0, t = torch.ones(1, 1, dtype=torch.float64), torch.tensor([0.0, 5.0], dtype=torch.float64)
    model = Regularized(
        field,
        backend="torchdiffeq",
        rtol=1e-3,
        atol=1e-6,
        gradient=BacksolveAdjoint(rtol=1e-10, atol=1e-12),
        adjoint_params=(weight,),
    )
    ys = model(y0, t)
    with pytest.raises(local_reg.SolverError, match="backward solve attempted 200 steps without reaching t0"):
        ys[-1].sum().backward()
    # Counted per backward pass: two passes through one solve (a retained graph, a measurement's
    # pass) each take their own steps, and a user's own callback_step_adjoint sees every one.
    monkeypatch.setattr(ode_backends, "DEFAULT_MAX_STEPS", 20)
    steps = []

    class Field(torch.nn.Module):
        def forward(self, t, y):
            return -weight * y

        def callback_step_adjoint(self, t0, y0, dt):
            steps.append(float(t0))

    for gradient in (
        BacksolveAdjoint(rtol=1e-7, atol=1e-9),
        BacksolveAdjoint(rtol=1e-7, atol=1e-9, max_steps=100),
    ):
        steps.clear()
        model = Regularized(Field(), backend="torchdiffeq", gradient=gradient, adjoint_params=(weight,))
        ys = model(y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
        ys[-1].sum().backward(retain_graph=True)
        first = len(steps)
        ys[-1].sum().backward()
        assert 10 < first <= 20 and len(steps) == 2 * first, first


@pytest.mark.parametrize("backend", ["local_reg", "torchdiffeq", "torchsde"])
def test_a_regularized_model_refuses_jit_trace_and_export_on_every_backend(backend):
    """The refusal sat in local_reg's own entry points: a model on a peer backend was traced and
    returned one input's steps for another (1.5e6 for 0.71), and export failed in the model's checks."""

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -(y**3)

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    field = SDE() if backend == "torchsde" else (lambda t, y: -(y**3))
    model = LocallyRegularized(field, backend=backend).eval()
    y0, t = torch.ones(1, 2), torch.linspace(0.0, 1.0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own TracerWarnings
        with pytest.raises(RuntimeError, match=r"LocallyRegularized cannot be traced by torch\.jit\.trace"):
            torch.jit.trace(model, (y0, t))

    class Serve(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, y0):
            return self.model(y0, torch.linspace(0.0, 1.0, 3))

    with pytest.raises(RuntimeError, match=r"LocallyRegularized cannot be exported by torch\.export"):
        torch.export.export(Serve(), (y0,))
    # In training mode with the default weight (a field with parameters), which reads t's values
    # first; and t an input.
    if backend == "torchsde":

        class Learned(SDE):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)

            def f(self, t, y):
                return self.linear(y)

        learned = Learned()
    else:
        learned = NetField(torch.nn.Linear(2, 2))
    trained = LocallyRegularized(learned, backend=backend).train()
    assert trained.weight is trained._field_weight  # the default, self-tuning weight
    with pytest.raises(RuntimeError, match=r"LocallyRegularized cannot be exported by torch\.export"):
        torch.export.export(trained, (y0, t))


def test_a_refused_export_leaves_torchdiffeq_working():
    """A model built inside exported code imported torchdiffeq there: its tableaus stayed export's
    fake tensors, and every later torchdiffeq solve in the process failed (plain eager ones too)."""
    import subprocess
    import sys

    script = """
import torch, local_reg
class Step(torch.nn.Module):
    def forward(self, y0):
        times = torch.tensor([0.0, 1.0])
        ys, reg, stats = local_reg.local_regularization(lambda t, y: -y, y0, times, backend="torchdiffeq")
        return ys[-1]
try:
    torch.export.export(Step(), (torch.ones(2, 2),))
except RuntimeError as error:
    assert "cannot be exported by torch.export" in str(error), error
import torchdiffeq
print(float(torchdiffeq.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]))[-1]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert abs(float(done.stdout.split()[-1]) - math.exp(-1.0)) < 1e-5
