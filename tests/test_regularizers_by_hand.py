"""The baselines (RNODE, TayNODE, STEER), their augmented solve, the sampler of ``t_reg`` and the
probe's penalty forms against closed forms (a linear field's ``expm`` solution and scipy's
quadrature of its integrands), exact float32 rounding laws and their docstrings: cases the other
tests let a wrong implementation through."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from scipy.integrate import quad_vec
from scipy.linalg import expm

import local_reg
from local_reg import (
    LocallyRegularized,
    RNODERegularized,
    SteerRegularized,
    StepCallbacks,
    TayNODERegularized,
    rms_norm,
)
from local_reg._validate import rounded
from local_reg.regularization import _sampling
from local_reg.regularization._probe import penalty_form
from local_reg.regularization._sampling import insert_time, sample_uniform_time, time_tolerance
from local_reg.regularization.rnode import rademacher
from tests.problems import LINEAR_MATRIX as A
from tests.problems import TIGHT_TOLERANCES as TIGHT
from tests.problems import CountingField
from tests.problems import LinearRows as Linear
from tests.problems import linear_rows_solution as linear_solution


def exact_integral(z0: np.ndarray, t0: float, t1: float, rate) -> float:
    """``int_t0^t1 rate(z(t)) dt`` on the linear field (``z(0) = z0``) by adaptive quadrature."""
    value, _ = quad_vec(
        lambda t: np.array([rate(linear_solution(z0, t))]), t0, t1, epsabs=1e-13, epsrel=1e-12
    )
    return float(value[0])


@pytest.fixture
def z0() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5, 0.25], [0.3, 0.8, -1.2]], dtype=torch.float64)


# ---------------------------------------------------------------- RNODE


def _rnode_terms(z0: torch.Tensor, t1: float, seed: int) -> tuple[float, float]:
    """Closed forms of the docstring's ``R_K`` (quadrature along expm) and ``R_J`` (a linear field's
    constant rate ``mean((eps^T A)^2)`` times the span) for the noise of ``seed``."""
    kinetic = exact_integral(z0.numpy(), 0.0, t1, lambda z: 0.5 * np.mean((z @ A.T) ** 2))
    eps = rademacher(z0.shape, torch.Generator().manual_seed(seed), z0).numpy()
    return kinetic, t1 * float(np.mean((eps @ A) ** 2))


def test_rnode_coefficients_weigh_their_own_terms(z0):
    """``reg_loss = w (kinetic R_K + jacobian R_J)`` with unequal coefficients: equal defaults
    hid a swapped or duplicated coefficient."""
    kinetic, jacobian = _rnode_terms(z0, 1.2, seed=4)
    assert abs(kinetic - jacobian) > 0.1 * kinetic  # the swap would be visible
    model = RNODERegularized(
        Linear(), weight=0.5, kinetic=3.0, jacobian=0.25, generator=torch.Generator().manual_seed(4), **TIGHT
    )
    model(z0, [0.0, 1.2])
    expected = 3.0 * kinetic + 0.25 * jacobian
    assert model.stats.terms["kinetic"] == pytest.approx(kinetic, rel=1e-8)
    assert model.stats.terms["jacobian"] == pytest.approx(jacobian, rel=1e-8)
    assert model.stats.penalty == pytest.approx(expected, rel=1e-8)
    assert float(model.reg_loss.detach()) == pytest.approx(0.5 * expected, rel=1e-8)


def test_rnode_default_weight_is_the_papers_lambda(z0):
    """Docstring: the default ``w = 0.01`` with ``kinetic = jacobian = 1`` is [RNODE20]'s
    ``lambda_K = lambda_J = 0.01``."""
    model = RNODERegularized(Linear(), generator=torch.Generator().manual_seed(2), **TIGHT)
    model(z0, [0.0, 1.0])
    kinetic, jacobian = _rnode_terms(z0, 1.0, seed=2)
    assert float(model.reg_loss.detach()) == pytest.approx(0.01 * (kinetic + jacobian), rel=1e-8)


# ---------------------------------------------------------------- the augmented solve


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_an_explicit_rms_norm_is_the_default_norm_over_the_augmented_state(cls, z0):
    """The module docstring: the error norm is an RMS over the whole augmented state, accumulators
    included; ``norm=rms_norm`` given explicitly is that default, not a norm of the state alone
    (which takes a different number of steps here: checked against a state-only RMS)."""

    def run(options):
        model = cls(Linear(), options=options)
        model(z0, [0.0, 1.0])
        return model.stats.nfe_main

    default, explicit = run({}), run({"norm": rms_norm})
    state_only = run({"norm": lambda y: rms_norm(y)})  # a user norm: sees the state alone
    assert default != state_only  # the accumulators do move the steps on this problem
    assert explicit == default


class Pulse(torch.nn.Module):
    """A decay whose rate jumps 51-fold near t = 0.5: the adaptive solver rejects steps there."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, t, z):
        return -self.k * z * (1 + 50 * torch.sigmoid((t - 0.5) * 100))


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_a_reject_callback_sees_the_state_in_training(cls, z0):
    """The docstring: step ``callbacks`` get ``z`` in ``y0``'s shape in training as in eval mode;
    ``reject`` is one of them."""

    seen = []
    callbacks = StepCallbacks(reject=lambda t, y, dt: seen.append(tuple(y.shape)))
    settings = {"order": 1} if cls is TayNODERegularized else {}
    model = cls(Pulse(), options={"callbacks": callbacks}, **settings)
    model(z0, [0.0, 1.0])
    assert model.stats.main.n_rejected > 0 and len(seen) == model.stats.main.n_rejected
    assert set(seen) == {tuple(z0.shape)}


# ---------------------------------------------------------------- TayNODE


def test_taynode_defaults_are_the_third_derivative_and_the_mnist_coefficient(z0):
    """Docstring: ``order`` defaults to 3 ([TAY20]'s ``r3``) and ``weight`` to 6e-5: on a linear field
    ``d^3 z/dt^3 = z (A^3)^T``, so ``reg_loss = 6e-5 int mean((z A^3^T)^2) dt``."""
    model = TayNODERegularized(Linear(), **TIGHT)
    model(z0, [0.0, 1.0])
    cube = np.linalg.matrix_power(A, 3)
    expected = exact_integral(z0.numpy(), 0.0, 1.0, lambda z: np.mean((z @ cube.T) ** 2))
    assert model.stats.terms["taylor"] == pytest.approx(expected, rel=1e-8)
    assert float(model.reg_loss.detach()) == pytest.approx(6e-5 * expected, rel=1e-8)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taynode_counts_its_forward_mode_evaluations(z0, order):
    """Docstring: ``nfe_main`` counts the augmented field's evaluations and ``nfe_reg`` the ``K - 1``
    further evaluations of ``func`` each adds: together, every call of ``func`` (counted by hand)."""
    field = CountingField(Linear())
    model = TayNODERegularized(field, order=order)
    model(z0, [0.0, 1.0])
    assert field.calls == order * model.stats.nfe_main
    assert model.stats.nfe_main + model.stats.nfe_reg == field.calls


# ---------------------------------------------------------------- STEER


def test_steer_refuses_a_half_width_equal_to_the_last_interval(z0):
    """``0 < b < t1 - t0`` strictly: at ``b = |t[-1] - t[-2]|`` the end time could reach ``t[-2]``."""
    with pytest.raises(ValueError, match="must be smaller than the last interval"):
        SteerRegularized(Linear(), b=0.5)(z0, [0.0, 0.5, 1.0])
    SteerRegularized(Linear(), b=0.49)(z0, [0.0, 0.5, 1.0])


def test_steer_backward_in_time_draws_around_the_last_time(z0):
    """Backward times ``[1, 0]``: the last interval is ``|0 - 1| = 1 > b``, ``T ~ U(-b, b)`` and
    ``ys[-1]`` is the solution at ``T`` (closed form ``z0 expm(A (T - 1))^T``)."""
    b = 0.4
    model = SteerRegularized(Linear(), b=b, generator=torch.Generator().manual_seed(0), **TIGHT)
    for _ in range(3):
        ys = model(z0, [1.0, 0.0])
        t_end = model.stats.t_end
        assert -b <= t_end < b
        expected = z0.numpy() @ expm(A * (t_end - 1.0)).T
        np.testing.assert_allclose(ys[-1].detach().numpy(), expected, rtol=1e-8)


def test_steer_default_half_width_is_the_papers_half(z0):
    """Docstring: [STEER20] uses ``b = 0.5`` on ``[0, 1]``, the default. Of 60 draws of ``U(0.5, 1.5)``
    none is below 0.75 (or none above 1.25) with probability ``2 * 0.75^60 < 1e-7``."""
    model = SteerRegularized(Linear(), generator=torch.Generator().manual_seed(0))
    ends = []
    for _ in range(60):
        model(z0, [0.0, 1.0])
        ends.append(model.stats.t_end)
    assert all(0.5 <= e < 1.5 for e in ends)
    assert min(ends) < 0.75 and max(ends) > 1.25


# ---------------------------------------------------------------- sampling of t_reg


def test_float32_draws_far_from_zero_follow_the_rounded_uniform_law():
    """``t_reg ~ U[t0, t1)`` rounded to float32 on ``[1e6, 1e6 + 1]``, where float32 times are
    ``1e6 + k/16``: ``t0 + u`` rounds to ``t0`` for ``u < 1/32``, to ``t0 + k/16`` (k = 1..15) on an
    interval of length 1/16, and onto ``t1`` (redrawn) for ``u > 1 - 1/32``. So ``P(t0) = 1/31`` and
    ``P(t0 + k/16) = 2/31``: the left end is included. Chi-square over the 16 cells with 3100 draws;
    a correct sampler fails the bound with probability < 1e-7 (p-value threshold)."""

    generator = torch.Generator().manual_seed(11)
    t0, n = 1e6, 3100
    draws = [sample_uniform_time([t0, t0 + 1.0], torch.float32, generator) - t0 for _ in range(n)]
    cells = np.array([round(16 * d) for d in draws])
    assert np.all(np.abs(16 * np.array(draws) - cells) == 0)  # on the float32 grid
    counts = np.bincount(cells, minlength=16)
    assert len(counts) == 16  # never t1
    expected = n * np.array([1.0] + [2.0] * 15) / 31
    assert scipy_stats.chisquare(counts, expected).pvalue > 1e-7


def test_a_span_of_two_float32_times_always_returns_the_left_one():
    """``[1e6, 1e6 + 1/16]`` holds two float32 times: half the draws round onto ``t1`` and are drawn
    again (up to 64 times), so every call returns ``t0``; 40 calls fail with probability
    ``40 * 2^-64``."""

    generator = torch.Generator().manual_seed(0)
    t0 = 1e6
    for _ in range(40):
        assert sample_uniform_time([t0, t0 + 1 / 16], torch.float32, generator) == t0


def test_a_float32_draw_never_rounds_onto_an_unrepresentable_end():
    """``t1 = 1e6 + 0.938`` is no float32 time: the backend sees it as ``1e6 + 0.9375`` (the float32
    grid there is 1/16). A draw rounding to that grid point lies within the time tolerance of ``t1``
    (a sliver of ``5e-4``) and is drawn again ("a draw that rounds onto (or within a sliver of) the
    end is drawn again"); otherwise ~3% of the draws would coincide with the rounded end time (800
    draws all miss it with probability < 1e-11)."""

    t0, t1 = 1e6, 1e6 + 0.938
    end = rounded(t1, torch.float32)
    assert end == 1e6 + 0.9375 and 0 < t1 - end <= time_tolerance([t0, t1], torch.float32)
    generator = torch.Generator().manual_seed(0)
    draws = [sample_uniform_time([t0, t1], torch.float32, generator) for _ in range(800)]
    assert max(draws) == end - 1 / 16


def test_insert_time_inserts_a_time_near_the_last_one():
    """Docstring: a ``t_new`` within ``tolerance`` of an existing time *other than the last* is that
    time; near the last one it is inserted before it."""

    assert insert_time([0.0, 0.5, 1.0], 1.0 - 1e-12, 1e-9) == ([0.0, 0.5, 1.0 - 1e-12, 1.0], 2, True)
    assert insert_time([1.0, 0.0], 1e-12, 1e-9) == ([1.0, 1e-12, 0.0], 1, True)


def test_a_draw_snapped_onto_an_output_time_reads_the_state_there(monkeypatch):
    """A draw within the time tolerance of an output time is that time (``insert_time``), so ``t_reg``
    is the output time and ``u(t_reg)`` its state; the drawn value itself is not a solve time."""

    field = Linear()
    z = torch.tensor([[1.0, -0.5, 0.25]], dtype=torch.float64)
    times = [0.0, 0.5, 1.0]
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda t, dtype, gen: 0.5 + 1e-12)
    model = LocallyRegularized(field, weight=1.0, penalty="kinetic", rtol=1e-10, atol=1e-10)
    model(z, times)
    assert model.stats.t_reg == 0.5
    # kinetic: mean(f(t_reg, u(t_reg))^2) with u(0.5) = z expm(0.5 A)^T in closed form.
    state = linear_solution(z.numpy(), 0.5)
    assert float(model.stats.penalty) == pytest.approx(np.mean((state @ A.T) ** 2), rel=1e-7)


def test_a_draw_near_the_end_probes_a_step_that_ends_there(monkeypatch):
    """The probe step is capped at ``t1``: a draw at 0.999 of ``[0, 1]`` probes ``dt = 0.001`` and
    never evaluates ``func`` past the span (without the cap the heuristic's 0.047 was probed,
    reading ``func`` at 1.047 and a penalty ten orders of magnitude larger; every other test's
    draw left room for the heuristic's step)."""

    seen = []

    class Recording(Linear):
        def forward(self, t, y):
            seen.append(float(t))
            return super().forward(t, y)

    field = Recording()
    z = torch.tensor([[1.0, -0.5, 0.25]], dtype=torch.float64)
    monkeypatch.setattr(_sampling, "sample_uniform_time", lambda t, dtype, gen: 0.999)
    model = LocallyRegularized(field, weight=1.0, penalty="error-dt", rtol=1e-6, atol=1e-8)
    model(z, [0.0, 1.0])
    stats = model.stats
    assert stats.t_reg == 0.999 and stats.dt_reg == pytest.approx(1.0 - 0.999, rel=1e-12)
    assert max(seen) <= 1.0
    # The penalty is the probe's EEst |dt| of that step from u(t_reg), taken by hand.
    by_hand = local_reg.step(field, 0.999, stats.state, stats.dt_reg, "tsit5", rtol=1e-6, atol=1e-8)
    expected = float(by_hand.error_estimate.detach()) * stats.dt_reg
    assert stats.penalty == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- the probe's penalty forms


def test_log_hinge_is_the_log_from_a_tenth_up():
    """Docstring: ``"log-hinge"`` is ``log EEst`` where ``EEst >= 0.1`` (gradient ``1/EEst``) and a
    constant below."""

    for value in (0.1, 0.15, 0.3):
        error = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        form = penalty_form(error, 0.5, 5, "log-hinge")
        (grad,) = torch.autograd.grad(form, error)
        assert float(form.detach()) == pytest.approx(math.log(value), rel=1e-14)
        assert float(grad) == pytest.approx(1.0 / value, rel=1e-14)
    below = torch.tensor(0.099, dtype=torch.float64)
    assert float(penalty_form(below, 0.5, 5, "log-hinge")) == pytest.approx(math.log(0.1), rel=1e-14)


def test_the_eest_floor_only_guards_against_zero():
    """The floor guards a zero error estimate (``-inf`` or an infinite gradient); a small but
    genuine estimate, as a float64 probe far inside the tolerance gives (1e-9), is taken as is."""

    error = torch.tensor(1e-9, dtype=torch.float64, requires_grad=True)
    log = penalty_form(error, 0.5, 5, "log")
    growth = penalty_form(error, 0.5, 5, "growth")
    assert float(log.detach()) == pytest.approx(math.log(1e-9), rel=1e-14)
    assert float(growth.detach()) == pytest.approx(1e-9**0.2, rel=1e-14)
    (grad,) = torch.autograd.grad(log, error)
    assert float(grad) == pytest.approx(1e9, rel=1e-14)


# ---------------------------------------------------------------- what the baselines share


def test_steer_reg_loss_is_a_zero_of_the_states_dtype(z0):
    """STEER adds no term: ``reg_loss`` is a 0-dim zero like the state (float64 here), so that adding
    it to a float64 loss neither changes its dtype nor its device."""
    model = SteerRegularized(Linear(), b=0.3)
    model(z0, [0.0, 1.0])
    assert model.reg_loss.dim() == 0 and float(model.reg_loss) == 0.0
    assert model.reg_loss.dtype == z0.dtype and model.reg_loss.device == z0.device


def test_the_wrappers_own_stream_is_not_the_global_one(z0):
    """``_baseline``: the wrapper's generator is seeded from ``torch.initial_seed()`` *offset*, so its
    draws are not those of the global stream of that seed: STEER's first end time is not
    ``1 + b (2u - 1)`` for the global stream's first ``u`` (equal with probability ~0 otherwise)."""
    b = 0.4
    torch.manual_seed(5)
    u = float(torch.rand((), dtype=torch.float64))
    torch.manual_seed(5)
    model = SteerRegularized(Linear(), b=b)
    model(z0, [0.0, 1.0])
    assert abs(model.stats.t_end - (1.0 + b * (2.0 * u - 1.0))) > 1e-12


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_baseline_stats_count_the_accepted_steps(cls, z0):
    """``stats.n_accepted`` is the augmented solve's accepted steps, counted here by an ``accept``
    callback."""

    accepted = []
    callbacks = StepCallbacks(accept=lambda t, y, dt: accepted.append(t))
    settings = {"order": 1} if cls is TayNODERegularized else {}
    model = cls(Linear(), options={"callbacks": callbacks}, **settings)
    model(z0, [0.0, 1.0])
    assert len(accepted) > 0 and model.stats.n_accepted == len(accepted)


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_baselines_refuse_the_torchdiffeq_backend(cls):
    """The baselines solve with ``local_reg.odeint`` (their augmented solve and STEER's perturbed
    end time go through it): another backend is refused by name, not silently ignored."""
    with pytest.raises(ValueError, match=re.escape("solves with local_reg.odeint")):
        cls(Linear(), backend="torchdiffeq")
