"""STEER, RNODE and TayNODE against closed forms, finite differences and each other's gradients."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from scipy.integrate import quad_vec

from local_reg import (
    ExponentialDecay,
    LocallyRegularized,
    RatioWeight,
    RNODERegularized,
    SteerRegularized,
    StepCallbacks,
    TayNODERegularized,
    odeint,
    rnode_regularization,
    steer_regularization,
    taynode_regularization,
)
from local_reg.regularization.rnode import rademacher
from local_reg.regularization.steer import sample_end_time
from local_reg.regularization.taynode import total_derivatives
from tests.problems import LINEAR_MATRIX as A
from tests.problems import TIGHT_TOLERANCES as TIGHT
from tests.problems import LinearRows as Linear
from tests.problems import linear_rows_solution as linear_solution


class MLP(torch.nn.Module):
    """A small nonlinear, time-dependent field."""

    def __init__(self, dim: int = 2, hidden: int = 16, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)
        ).to(dtype)

    def forward(self, t, z):
        return self.net(torch.cat([z, t.expand(*z.shape[:-1], 1)], dim=-1))


def exact_integral(z0: np.ndarray, t1: float, rate) -> float:
    """``int_0^t1 rate(z(t)) dt`` on the linear field by adaptive quadrature."""
    value, _ = quad_vec(
        lambda t: np.array([rate(linear_solution(z0, t))]), 0.0, t1, epsabs=1e-13, epsrel=1e-12
    )
    return float(value[0])


@pytest.fixture
def z0() -> torch.Tensor:
    return torch.tensor([[1.0, -0.5, 0.25], [0.3, 0.8, -1.2]], dtype=torch.float64)


# ---------------------------------------------------------------- STEER


def test_steer_end_times_are_uniform_on_the_interval():
    generator = torch.Generator().manual_seed(0)
    b = 0.3
    draws = np.array([sample_end_time(1.0, b, generator) for _ in range(20000)])
    assert draws.min() >= 1.0 - b and draws.max() < 1.0 + b
    assert draws.min() < 1.0 - 0.99 * b and draws.max() > 1.0 + 0.99 * b
    n = len(draws)
    assert abs(draws.mean() - 1.0) < 4 * b / np.sqrt(3 * n)
    assert draws.var() == pytest.approx(b**2 / 3, rel=0.03)
    assert scipy_stats.kstest(draws, scipy_stats.uniform(loc=1.0 - b, scale=2 * b).cdf).pvalue > 1e-3


def test_steer_outputs_the_solution_at_the_drawn_end_time_and_eval_is_unperturbed(z0):
    times = [0.0, 0.4, 1.0]
    model = SteerRegularized(Linear(), b=0.5, generator=torch.Generator().manual_seed(1), **TIGHT)
    ends = []
    for _ in range(4):
        ys = model(z0, times)
        t_end = model.stats.t_end
        ends.append(t_end)
        assert 0.5 <= t_end < 1.5
        assert model.reg_loss.dim() == 0 and float(model.reg_loss) == 0.0
        np.testing.assert_allclose(ys[-1].detach().numpy(), linear_solution(z0.numpy(), t_end), rtol=1e-8)
        np.testing.assert_allclose(ys[1].detach().numpy(), linear_solution(z0.numpy(), 0.4), rtol=1e-8)
    assert len(set(ends)) == 4
    model.eval()
    ys = model(z0, times)
    # Eval mode is the plain solve: no perturbed end, no penalty.
    assert model.stats.penalty is None and model.stats.nfe_reg == 0
    torch.testing.assert_close(ys, odeint(model.func, z0, times, **TIGHT).ys)


def test_steer_half_width_must_stay_inside_the_last_interval(z0):
    model = SteerRegularized(Linear(), b=0.5)
    with pytest.raises(ValueError, match=re.escape("b=0.5 must be smaller than the last interval")):
        model(z0, [0.0, 0.8, 1.0])
    with pytest.raises(ValueError, match="b must be non-negative"):
        SteerRegularized(Linear(), b=-0.1)
    model.eval()
    model(z0, [0.0, 0.8, 1.0])  # evaluation does not perturb, so any grid is fine


# ---------------------------------------------------------------- RNODE


def test_rnode_kinetic_energy_matches_the_closed_form(z0):
    model = RNODERegularized(Linear(), weight=1.0, **TIGHT)
    model(z0, [0.0, 1.5])
    expected = exact_integral(z0.numpy(), 1.5, lambda z: 0.5 * np.mean((z @ A.T) ** 2))
    assert model.stats.terms["kinetic"] == pytest.approx(expected, rel=1e-8)


def test_rnode_jacobian_term_is_hutchinsons_estimate_of_the_frobenius_norm(z0):
    # A linear field has the constant Jacobian A, so the rate is constant in time.
    model = RNODERegularized(Linear(), weight=1.0, generator=torch.Generator().manual_seed(3), **TIGHT)
    model(z0, [0.0, 2.0])
    eps = rademacher(z0.shape, torch.Generator().manual_seed(3), z0).numpy()
    assert model.stats.terms["jacobian"] == pytest.approx(2.0 * np.mean((eps @ A) ** 2), rel=1e-9)
    assert model.stats.penalty == pytest.approx(sum(model.stats.terms.values()), rel=1e-12)
    # Unbiased: over many noise draws (rows of a big batch) the mean is ||A||_F^2 / dim.
    big = torch.zeros(4000, 3, dtype=torch.float64)
    model(big, [0.0, 1.0])
    assert model.stats.terms["jacobian"] == pytest.approx(np.sum(A**2) / 3, rel=0.03)


def test_rnode_without_its_jacobian_term_takes_no_vector_jacobian_product(z0):
    """``jacobian=0`` computes the kinetic term alone: no products, ``R_J`` reported 0, and ``R_K``
    still the closed form's."""
    model = RNODERegularized(Linear(), weight=1.0, jacobian=0.0, **TIGHT)
    model(z0, [0.0, 1.5])
    assert model.stats.nfe_reg == 0 and model.stats.terms["jacobian"] == 0.0
    expected = exact_integral(z0.numpy(), 1.5, lambda z: 0.5 * np.mean((z @ A.T) ** 2))
    assert model.stats.terms["kinetic"] == pytest.approx(expected, rel=1e-8)
    assert float(model.reg_loss) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_an_empty_batch_costs_nothing_and_adds_nothing(cls):
    """The mean over no samples was NaN, which stopped the augmented solve with a "non-finite
    derivative"; an empty batch adds 0 to the penalty, as the local and global regularizers do."""
    model = cls(Linear())
    ys = model(torch.zeros(0, 3, dtype=torch.float64), [0.0, 1.0])
    assert ys.shape == (2, 0, 3) and float(model.reg_loss) == 0.0


def test_rnode_vector_jacobian_product_matches_finite_differences():
    field = MLP()
    z = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    eps = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    from local_reg.regularization.rnode import rnode_integrand

    _, rates, _ = rnode_integrand(field, eps)(t, z)
    h = 1e-6
    with torch.no_grad():
        columns = [(field(t, z + h * e) - field(t, z - h * e)) / (2 * h) for e in torch.eye(2).unsqueeze(1)]
    jacobian = torch.cat(columns).T  # jacobian[i, j] = df_i / dz_j
    expected = (eps @ jacobian).pow(2).mean()
    assert float(rates[1].detach()) == pytest.approx(float(expected), rel=1e-7)
    kinetic = 0.5 * field(t, z).detach().pow(2).mean()
    assert float(rates[0].detach()) == pytest.approx(float(kinetic), rel=1e-12)


def test_rnode_backward_in_time_gives_the_same_positive_cost(z0):
    forward = RNODERegularized(Linear(), weight=1.0, generator=torch.Generator().manual_seed(0), **TIGHT)
    forward(z0, [0.0, 1.0])
    z1 = torch.tensor(linear_solution(z0.numpy(), 1.0))
    backward = RNODERegularized(Linear(), weight=1.0, generator=torch.Generator().manual_seed(0), **TIGHT)
    backward(z1, [1.0, 0.0])
    assert backward.stats.terms["kinetic"] > 0
    assert backward.stats.terms["kinetic"] == pytest.approx(forward.stats.terms["kinetic"], rel=1e-8)


# ---------------------------------------------------------------- TayNODE


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_taynode_derivatives_of_a_linear_field_are_matrix_powers(z0, order):
    t = torch.tensor(0.7, dtype=torch.float64)
    f, derivative = total_derivatives(Linear(), t, z0, order)
    power = np.linalg.matrix_power(A, order)
    np.testing.assert_allclose(derivative.detach().numpy(), z0.numpy() @ power.T, rtol=1e-12)
    np.testing.assert_allclose(f.detach().numpy(), z0.numpy() @ A.T, rtol=1e-12)


@pytest.mark.parametrize(
    ("order", "closed_form"),
    [(2, lambda t: 1 + t**2), (3, lambda t: 3 * t + t**3), (4, lambda t: 3 + 6 * t**2 + t**4)],
)
def test_taynode_total_derivative_includes_the_time_dependence(order, closed_form):
    # z' = t z: z = exp(t^2 / 2) z0, and each derivative is a polynomial in t times z.
    t, z = torch.tensor(0.6, dtype=torch.float64), torch.tensor([[1.3]], dtype=torch.float64)
    with torch.no_grad():  # forward mode works without a graph too (graph-free gradient methods)
        _, derivative = total_derivatives(lambda time, state: time * state, t, z, order)
    assert float(derivative) == pytest.approx(closed_form(0.6) * 1.3, rel=1e-13)


@pytest.mark.parametrize("order", [2, 3])
def test_taynode_derivatives_match_finite_differences_of_the_solution(order):
    field, z0 = MLP(), torch.tensor([[0.5, -0.2]], dtype=torch.float64)
    t0, h = 0.5, 1e-2
    offsets = [-2, -1, 0, 1, 2]
    with torch.no_grad():
        grid = [t0 + k * h for k in offsets]
        path = odeint(field, z0, [0.0, *grid], **TIGHT).ys[1:]
        _, derivative = total_derivatives(field, torch.tensor(t0, dtype=torch.float64), path[2], order)
    if order == 2:
        estimate = (path[3] - 2 * path[2] + path[1]) / h**2
    else:
        estimate = (path[4] - 2 * path[3] + 2 * path[1] - path[0]) / (2 * h**3)
    torch.testing.assert_close(derivative, estimate, rtol=2e-4, atol=2e-4)


def test_taynode_penalty_matches_the_closed_form(z0):
    model = TayNODERegularized(Linear(), order=2, weight=1.0, **TIGHT)
    model(z0, [0.0, 1.0])
    power = np.linalg.matrix_power(A, 2)
    expected = exact_integral(z0.numpy(), 1.0, lambda z: np.mean((z @ power.T) ** 2))
    assert model.stats.terms["taylor"] == pytest.approx(expected, rel=1e-8)
    assert float(model.reg_loss) == pytest.approx(expected, rel=1e-8)


# ---------------------------------------------------------------- gradients, training, state


def _penalty_gradient(cls, gradient: str, scale: float = 1.0, **kwargs) -> tuple[float, torch.Tensor]:
    field = MLP()
    with torch.no_grad():
        field.net[0].weight.mul_(scale)
    extra = {} if cls is TayNODERegularized else {"generator": torch.Generator().manual_seed(7)}
    model = cls(field, weight=1.0, gradient=gradient, **extra, **kwargs)
    z0 = torch.tensor([[0.5, -0.2], [0.1, 0.9]], dtype=torch.float64)
    model(z0, [0.0, 1.0])
    model.reg_loss.backward()
    return float(model.reg_loss), field.net[0].weight.grad.clone()


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_penalty_gradient_agrees_across_gradient_methods_and_finite_differences(cls):
    # A fixed-step solve is a smooth function of the parameters, so finite differences apply.
    fixed = dict(method="rk4", options={"step_size": 0.1})
    _, direct = _penalty_gradient(cls, "direct", **fixed)
    for gradient in ("symplectic", "checkpoint"):
        _, other = _penalty_gradient(cls, gradient, **fixed)
        torch.testing.assert_close(other, direct, rtol=1e-10, atol=1e-12)
    # Scaling the first layer's weight by (1 + s): d/ds = <grad, W>.
    h = 1e-6
    plus, _ = _penalty_gradient(cls, "direct", scale=1 + h, **fixed)
    minus, _ = _penalty_gradient(cls, "direct", scale=1 - h, **fixed)
    weight = MLP().net[0].weight.detach()
    assert (plus - minus) / (2 * h) == pytest.approx(float((direct * weight).sum()), rel=1e-6)


@pytest.mark.parametrize(
    ("cls", "gradient"),
    [
        (RNODERegularized, "direct"),
        (RNODERegularized, "symplectic"),
        (TayNODERegularized, "direct"),
        (TayNODERegularized, "symplectic"),
    ],
)
def test_training_lowers_the_penalty(cls, gradient):
    torch.manual_seed(0)
    field = MLP(hidden=8, dtype=torch.float32)
    extra = {} if cls is TayNODERegularized else {"generator": torch.Generator().manual_seed(0)}
    model = cls(field, weight=1.0, gradient=gradient, rtol=1e-4, atol=1e-5, **extra)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    z0 = torch.randn(64, 2)
    penalties = []
    for _ in range(6):
        model(z0, [0.0, 1.0])
        penalties.append(model.stats.penalty)
        optimizer.zero_grad()
        model.reg_loss.backward()
        optimizer.step()
    assert penalties[-1] < 0.7 * penalties[0]


@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
def test_steer_trains_with_every_gradient_method(gradient):
    torch.manual_seed(0)
    model = SteerRegularized(
        MLP(hidden=8, dtype=torch.float32), b=0.5, gradient=gradient, rtol=1e-4, atol=1e-5
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    z0 = torch.randn(32, 2)
    target = 0.5 * z0
    losses = []
    for _ in range(15):
        loss = (model(z0, [0.0, 1.0])[-1] - target).pow(2).mean() + model.reg_loss
        losses.append(float(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_state_dict_round_trip_restores_the_schedule_and_the_noise(cls, z0):
    def build():
        if cls is SteerRegularized:
            return cls(Linear(), b=0.4, generator=torch.Generator().manual_seed(11))
        extra = {} if cls is TayNODERegularized else {"generator": torch.Generator().manual_seed(11)}
        return cls(Linear(), weight=ExponentialDecay(2.0, 1.0, 10), **extra)

    original, restored = build(), build()
    for _ in range(3):
        original(z0, [0.0, 1.0])
        if original.weight is not None:
            original.weight.step()
    restored.load_state_dict(original.state_dict())
    if original.weight is not None:
        assert restored.weight.iteration == 3 and restored.weight() == original.weight()
    original(z0, [0.0, 1.0])
    restored(z0, [0.0, 1.0])
    assert float(restored.reg_loss) == float(original.reg_loss)
    assert restored.stats.t_end == original.stats.t_end
    assert restored.stats.terms == original.stats.terms
    # Compared by identity and hashable, as every RegularizationStats (the baselines' compared
    # field-wise and could not be hashed, where code written for the base class keys on them).
    assert len({original.stats, restored.stats, original.stats}) == 2
    assert original.stats != restored.stats and original.stats == original.stats


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_eval_mode_is_the_plain_solve_with_a_zero_penalty(cls, z0):
    model = cls(Linear()).eval()
    ys = model(z0, [0.0, 0.5, 1.0])
    assert model.reg_loss.dim() == 0 and float(model.reg_loss) == 0.0
    assert model.stats.nfe_reg == 0 and model.stats.penalty is None
    solution = odeint(model.func, z0, [0.0, 0.5, 1.0])
    torch.testing.assert_close(ys, solution.ys)
    assert model.stats.nfe_main == solution.stats.nfe
    assert model.stats.nfe_main == solution.stats.nfe


@pytest.mark.parametrize("cls", [RNODERegularized, TayNODERegularized])
def test_a_user_norm_and_callbacks_see_the_state_in_training_as_in_eval(cls, z0):
    """The augmented solve handed a user ``norm`` and step callbacks its flat state with the
    accumulators appended, so a norm written for the state (here one indexing its columns) failed in
    training only."""
    seen = []

    def by_column(y):
        seen.append(y.shape)
        return y[:, 0].abs().max() + y[:, 1:].abs().max()

    def record(t, y, dt):
        seen.append(y.shape)

    callbacks = StepCallbacks(step=record, accept=record)
    model = cls(Linear(), options={"norm": by_column, "callbacks": callbacks})
    for mode in (model.eval, model.train):
        mode()
        model(z0, [0.0, 1.0])
        assert seen and set(seen) == {z0.shape}
        seen.clear()
    # The plain solve with the same norm takes the same steps as the augmented one: the
    # accumulators are outside the norm.
    plain = odeint(model.func, z0, [0.0, 1.0], norm=by_column)
    assert model.stats.nfe_main == plain.stats.nfe
    # No norm given (None, as a config may spell it) is the default RMS over the augmented state.
    with_none, default = cls(Linear(), options={"norm": None}).train(), cls(Linear()).train()
    with_none(z0, [0.0, 1.0])
    default(z0, [0.0, 1.0])
    assert with_none.stats.nfe_main == default.stats.nfe_main


class _SDE(torch.nn.Module):
    noise_type = "diagonal"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * y


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_bad_input_is_named(cls):
    with pytest.raises(ValueError, match="neural ODEs"):
        cls(_SDE())
    with pytest.raises(ValueError, match="adjoint_params"):
        cls(lambda t, y: -y, gradient="symplectic")
    with pytest.raises(ValueError, match=r"options: unknown keys \[.rtol.\]"):
        cls(Linear(), options={"rtol": 1e-3})
    with pytest.raises(ValueError, match="gradient"):
        cls(Linear(), gradient="backprop")
    with pytest.raises(ValueError, match="rtol"):
        cls(Linear(), rtol=-1e-6)


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_a_single_output_time_is_refused_in_training(cls, z0):
    # RNODE and TayNODE integrated over an empty interval and returned a silent penalty of 0.
    with pytest.raises(ValueError, match="at least 2"):
        cls(Linear())(z0, torch.tensor([0.0], dtype=z0.dtype))


@pytest.mark.parametrize("cls", [SteerRegularized, RNODERegularized, TayNODERegularized])
def test_y0_is_checked_before_t_as_the_other_models_check_it(cls):
    """Given a bad y0 and bad times at once, a baseline named t, where LocallyRegularized names y0:
    the baselines checked their inputs in an order of their own."""
    bad_y0, bad_t = torch.ones(3, 2, dtype=torch.int64), [1.0, 0.5, 0.7]
    with pytest.raises(TypeError, match="y0 must have a floating dtype"):
        LocallyRegularized(Linear())(bad_y0, bad_t)
    with pytest.raises(TypeError, match="y0 must have a floating dtype"):
        cls(Linear())(bad_y0, bad_t)


def test_coefficients_are_checked_before_any_conversion_and_take_numpy_scalars():
    """``b=True`` is not 1.0 and ``b=None`` is named; a numpy scalar or a 0-dim tensor is a number."""
    for bad in (True, None, "0.5"):
        with pytest.raises(TypeError, match="b must be a non-negative float"):
            SteerRegularized(Linear(), b=bad)
        with pytest.raises(TypeError, match="kinetic must be a non-negative float"):
            RNODERegularized(Linear(), kinetic=bad)
    assert SteerRegularized(Linear(), b=np.float32(0.25)).penalty.b == 0.25
    assert RNODERegularized(Linear(), jacobian=torch.tensor(0.5)).penalty.jacobian == 0.5
    assert RatioWeight(np.float32(0.5)).target_ratio == 0.5


class _NormedField(torch.nn.Module):
    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.norm, self.outer = torch.nn.Linear(3, 8), norm, torch.nn.Linear(8, 3)

    def forward(self, t, y):
        return self.outer(torch.tanh(self.norm(self.inner(y))))


@pytest.mark.parametrize(
    "make",
    [lambda f: RNODERegularized(f), lambda f: TayNODERegularized(f)],
    ids=["rnode", "taynode"],
)
def test_transformed_penalties_name_a_norm_that_updates_running_statistics(make):
    """RNODE's Jacobian term and TayNODE differentiate func inside torch.func transforms, where a
    batch norm in training mode cannot update its running statistics: torch's own message named
    neither the layer nor the penalty. Eval mode, running statistics off and RNODE without its
    Jacobian term work."""
    y0, t = torch.randn(8, 3), [0.0, 1.0]
    model = make(_NormedField(torch.nn.BatchNorm1d(8)))
    with pytest.raises(
        ValueError, match="the BatchNorm1d 'norm' in training mode cannot update its running statistics"
    ):
        model(y0, t)
    model.eval()
    model(y0, t)
    make(_NormedField(torch.nn.BatchNorm1d(8, track_running_stats=False)))(y0, t)
    RNODERegularized(_NormedField(torch.nn.BatchNorm1d(8)), jacobian=0.0)(y0, t)
    # Instance norm updates its running statistics inside the transforms: not refused, and its
    # penalty is the one without them (training mode normalizes by the input's statistics).
    torch.manual_seed(0)
    tracked = _NormedField(torch.nn.InstanceNorm1d(2, track_running_stats=True))
    untracked = _NormedField(torch.nn.InstanceNorm1d(2))
    untracked.load_state_dict(tracked.state_dict(), strict=False)
    x = torch.randn(4, 2, 3)
    losses = []
    for field in (tracked, untracked):
        model = make(field)  # RNODE's generator seeded alike in both (from torch.initial_seed())
        model(x, t)
        losses.append(model.reg_loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    assert tracked.norm.running_mean.abs().sum() > 0


def test_taynode_order_is_checked():
    with pytest.raises(ValueError, match="order must be between 1 and 4"):
        TayNODERegularized(Linear(), order=5)
    with pytest.raises(TypeError, match="order must be a positive int, got float"):
        TayNODERegularized(Linear(), order=2.0)
    with pytest.raises(ValueError, match="order must be a positive int, got 0"):
        TayNODERegularized(Linear(), order=0)
    assert TayNODERegularized(Linear(), order=np.int64(3)).penalty.order == 3  # it refused numpy's ints
    with pytest.raises(ValueError, match="weight must be non-negative"):
        TayNODERegularized(Linear(), weight=-1.0)


def test_taynode_refuses_a_compiled_solve_when_made():
    """torch.compile fails inside the augmented field's nested forward mode at the first training
    call, with an error from deep inside Dynamo; the other baselines compile."""
    for compile in (True, {"backend": "aot_eager"}):
        with pytest.raises(
            ValueError, match=r"TayNODERegularized cannot compile its solve \(options\['compile'\]\)"
        ):
            TayNODERegularized(Linear(), options={"compile": compile})
    TayNODERegularized(Linear(), options={"compile": False})
    RNODERegularized(Linear(), options={"compile": True})


class _HamiltonianField(torch.nn.Module):
    """``(dH/dp, -dH/dq)`` of a learned ``H(q, p)``, its gradient taken by ``gradient(h, state)``."""

    def __init__(self, gradient):
        super().__init__()
        self.energy = torch.nn.Sequential(
            torch.nn.Linear(2, 8, dtype=torch.float64),
            torch.nn.Tanh(),
            torch.nn.Linear(8, 1, dtype=torch.float64),
        )
        self.gradient = gradient

    def forward(self, t, state):
        g = self.gradient(lambda x: self.energy(x).sum(), state)
        return torch.stack([g[..., 1], -g[..., 0]], dim=-1)


def _autograd_gradient(h, state):
    with torch.enable_grad():
        state = state if state.requires_grad else state.detach().requires_grad_()
        return torch.autograd.grad(h(state), state, create_graph=True)[0]


def test_taynode_names_a_field_that_differentiates_itself_by_autograd():
    """A Hamiltonian network taking its gradient by torch.autograd fails inside torch.func.jvp with
    torch's message on functorch transforms; it is told what to use. The same network by
    torch.func.grad trains, and RNODE takes the autograd one."""
    torch.manual_seed(0)
    field, z0 = _HamiltonianField(_autograd_gradient), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(
        RuntimeError, match=r"TayNODE's order-3 derivatives .* torch.func.grad instead"
    ) as caught:
        TayNODERegularized(field)(z0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert "functorch transform" in str(caught.value.__cause__)
    by_func = _HamiltonianField(lambda h, state: torch.func.grad(h)(state))
    by_func.load_state_dict(field.state_dict())
    model = TayNODERegularized(by_func)
    model(z0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(model.reg_loss.detach()) > 0
    rnode = RNODERegularized(field)
    rnode(z0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(rnode.reg_loss.detach()) > 0


def test_plain_function_with_adjoint_params_gets_its_gradient(z0):
    grads = {}
    for gradient in ("direct", "symplectic"):
        matrix = torch.tensor(A, requires_grad=True)
        model = RNODERegularized(
            lambda t, z, m=matrix: z @ m.T,
            weight=1.0,
            gradient=gradient,
            adjoint_params=[matrix],
            generator=torch.Generator().manual_seed(0),
        )
        model(z0, [0.0, 1.0])
        model.reg_loss.backward()
        grads[gradient] = matrix.grad
    assert torch.count_nonzero(grads["direct"]) > 0
    torch.testing.assert_close(grads["symplectic"], grads["direct"], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- experiments CLI


@pytest.mark.parametrize(
    ("task", "method"), [("digits", "steer"), ("digits", "rnode"), ("latent_ode", "taynode")]
)
def test_cli_runs_each_baseline(task, method, tmp_path):
    from local_reg.experiments.cli import main
    from local_reg.experiments.results import ResultsFile

    args = ["experiment", task, "--methods", method, "--size", "tiny", "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path), "--no-progress"]) == 0
    (record,) = ResultsFile(tmp_path).load()
    assert record["method"] == method and record["test_nfe"] > 0
    assert f"| {method} |" in (tmp_path / "report.md").read_text(encoding="utf-8")
    history = record["history"]
    if method == "steer":  # no penalty, no extra evaluations
        assert max(history["reg_loss"]) == 0 and sum(history["reg_nfe"]) == 0
    else:
        assert min(history["reg_loss"]) > 0 and min(history["reg_nfe"]) > 0


def test_default_generator_follows_the_global_seed_without_consuming_it(z0):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = SteerRegularized(Linear(), b=0.4)
    torch.testing.assert_close(torch.rand(3), expected)  # the global stream is untouched
    torch.manual_seed(5)
    second = SteerRegularized(Linear(), b=0.4)
    torch.manual_seed(6)
    other = SteerRegularized(Linear(), b=0.4)
    ends = []
    for model in (first, second, other):
        model(z0, [0.0, 1.0])
        ends.append(model.stats.t_end)
    assert ends[0] == ends[1] != ends[2]


@pytest.mark.parametrize(
    "function, cls, settings",
    [
        (steer_regularization, SteerRegularized, dict(b=0.4)),
        (rnode_regularization, RNODERegularized, {}),
        (taynode_regularization, TayNODERegularized, dict(order=2)),
    ],
)
def test_functional_form_is_one_training_pass_of_the_module(function, cls, settings, z0):
    t = [0.0, 1.0]
    field = Linear()
    if cls is TayNODERegularized:
        ys, reg, stats = function(field, z0, t, **settings)
        expected_ys, expected_reg, _ = cls(field, **settings).penalize(z0, t)
    else:
        ys, reg, stats = function(field, z0, t, generator=torch.Generator().manual_seed(3), **settings)
        model = cls(field, generator=torch.Generator().manual_seed(3), **settings)
        expected_ys, expected_reg, _ = model.penalize(z0, t)
    torch.testing.assert_close(ys, expected_ys)
    torch.testing.assert_close(reg, expected_reg)
    assert reg.requires_grad == (cls is not SteerRegularized)
    assert stats.main.nfe > 0


def test_functional_forms_draw_anew_each_call_and_follow_the_global_seed(z0):
    def draws(seed):
        torch.manual_seed(seed)
        ends = [steer_regularization(Linear(), z0, [0.0, 1.0], b=0.4)[2].t_end for _ in range(2)]
        noise = [rnode_regularization(Linear(), z0, [0.0, 1.0])[1].item() for _ in range(2)]
        return ends, noise

    (ends, noise), (ends_again, noise_again) = draws(1), draws(1)
    assert ends == ends_again and noise == noise_again
    assert ends[0] != ends[1] and noise[0] != noise[1]


def test_cli_refuses_steer_on_irregular_times_and_leaves_it_out_of_the_default_methods(tmp_path, capsys):
    from local_reg.experiments.cli import main
    from local_reg.experiments.tasks import REGISTRY

    task = REGISTRY["latent_ode"]
    irregular, grid = task.settings("tiny"), {**task.settings("tiny"), "observation_times": "grid"}
    assert irregular["observation_times"] == "irregular"
    assert "steer" not in task.default_methods(irregular) and "rnode" in task.default_methods(irregular)
    assert task.default_methods(grid) == task.methods
    args = ["experiment", "latent_ode", "--methods", "steer", "--size", "tiny", "--no-progress"]
    assert main([*args, "--out", str(tmp_path)]) != 0
    assert "observation_times=grid" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_steer_refuses_a_half_width_whose_end_rounds_onto_the_previous_time():
    """float32 times near 1e6 (spacing 0.0625): b=0.06 is below the last interval, but an end time
    drawn near t[-1] - b rounds onto t[-2] in the dtype func gets the time in, and the sixth call
    failed on it; now the call refuses the half width, whatever the draw."""
    from local_reg import SteerRegularized

    t = torch.tensor([0.0, 1e6, 1e6 + 0.0625])
    model = SteerRegularized(lambda t, y: -1e-6 * y, b=0.06, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError,
        match=r"b=0\.06: the perturbed end time nearest t\[-2\], t\[-1\] - b = .* is t\[-2\]'s value in "
        r"torch\.float32",
    ):
        model(torch.randn(3, 2), t)
    # Where t decreases, the end time nearest t[-2] is t[-1] + b, and the message says so.
    with pytest.raises(ValueError, match=r"t\[-1\] \+ b = 1000000\.06"):
        model(torch.randn(3, 2), torch.tensor([2e6, 1e6 + 0.0625, 1e6]))
    # In float64 the same times and b are solved, and a half width clear of the rounding in float32.
    SteerRegularized(lambda t, y: -1e-6 * y, b=0.06)(torch.randn(3, 2, dtype=torch.float64), t.double())
    SteerRegularized(lambda t, y: -1e-6 * y, b=0.03)(torch.randn(3, 2), t)


# ---------------------------------------------------------------- float32 range


class _Scaled(torch.nn.Module):
    """``f(t, z) = scale * z``, in float32: finite for a finite ``scale`` below float32's range."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, t, z):
        return self.scale * z


@pytest.mark.parametrize(
    "make, rate",
    [
        (lambda f: RNODERegularized(f, jacobian=0.0), r"RNODE's kinetic rate 0\.5 \* mean\(f\^2\)"),
        (
            lambda f: RNODERegularized(f, kinetic=0.0),
            r"RNODE's Jacobian rate mean\(\(eps\^T df/dz\)\^2\)",
        ),
        (lambda f: TayNODERegularized(f, order=2), r"TayNODE's rate mean\(\(d\^2 z/dt\^2\)\^2\)"),
    ],
    ids=["rnode-kinetic", "rnode-jacobian", "taynode"],
)
def test_a_penalty_rate_that_overflows_float32_is_named_not_the_field(make, rate):
    """A field of 1e20 is finite in float32 but its square is not: the augmented solve stopped on a
    "non-finite derivative" at t0, blaming the field; the rate that overflowed is named, with the
    field's size and what to do."""
    from local_reg import SolverError

    z0 = torch.ones(4, 3)
    with pytest.raises(SolverError) as caught:
        make(_Scaled(1e20))(z0, [0.0, 1.0])
    message = str(caught.value)
    assert re.search(rate, message), message
    assert "max |f| = 1e+20" in message and "float64" in message
    assert not message.startswith("non-finite derivative at")
    assert caught.value.t == 0.0 and caught.value.n_steps == 0
    # A field that is itself non-finite is still the field's fault.
    with pytest.raises(SolverError, match=r"^non-finite derivative at t=0\.0 after 0 steps$"):
        make(_Scaled(float("inf")))(z0, [0.0, 1.0])


class _SqrtField(torch.nn.Module):
    """``f(t, z) = w * sqrt(|z|)``: finite everywhere, its derivative infinite at ``z = 0``."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=dtype))

    def forward(self, t, z):
        return self.w * torch.sqrt(z.abs())


@pytest.mark.parametrize(
    "make, rate",
    [
        (lambda f: RNODERegularized(f, kinetic=0.0), r"RNODE's Jacobian rate mean\(\(eps\^T df/dz\)\^2\)"),
        (lambda f: TayNODERegularized(f, order=2), r"TayNODE's rate mean\(\(d\^2 z/dt\^2\)\^2\)"),
    ],
    ids=["rnode-jacobian", "taynode"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_rate_not_finite_for_the_fields_derivative_is_not_called_an_overflow(make, rate, dtype):
    """sqrt(|z|) at z = 0 is finite and its derivative is not: the rate is infinite in float64 too,
    with nothing overflowing, where the message said the rate overflows and to solve in float64."""
    from local_reg import SolverError

    with pytest.raises(SolverError) as caught:
        make(_SqrtField(dtype))(torch.zeros(3, 2, dtype=dtype), torch.tensor([0.0, 1.0], dtype=dtype))
    message = str(caught.value)
    assert re.search(rate, message), message
    assert "derivative of f it squares is not finite there" in message, message
    assert "rate overflows" not in message, message
    # Solving in float64 is advice for an overflow only, and none where the solve is in float64.
    advice = "if it overflows, solve in float64" if dtype == torch.float32 else "if it overflows, rescale"
    assert advice in message, message
    assert (dtype == torch.float64) != ("solve in float64" in message), message


def test_the_kinetic_rate_of_a_field_whose_squares_are_finite_does_not_overflow_float32():
    """float32's mean of f^2 summed the squares in float32: over a (256, 64) state a field of 1e19
    (squares 1e38, finite) overflowed the sum and stopped the solve; the rate is now the mean of
    the squares without that sum, equal to a float64 reference."""
    from local_reg.regularization._augmented import mean_square

    torch.manual_seed(0)
    for shape in ((256, 64), (100, 3)):  # the second's 1 / sqrt(count) is not a power of 2
        for size in (1e-3, 1.0, 1e10, 1e18):
            x = size * torch.randn(shape)
            reference = x.double().pow(2).mean()
            assert float(mean_square(x)) == pytest.approx(float(reference), rel=1e-6)
    field = 1e19 * torch.ones(256, 64)
    model = RNODERegularized(lambda t, z: field, jacobian=0.0, weight=1.0)
    model(torch.zeros(256, 64), [0.0, 1.0])
    assert model.stats.terms["kinetic"] == pytest.approx(0.5 * float(field[0, 0].double()) ** 2, rel=1e-6)


def test_coefficients_that_require_grad_are_refused_not_detached():
    """A 0-dim tensor coefficient was read as a float, so one that requires grad (meant to be
    learned) silently got no gradient; it is refused as a weight that requires grad is."""
    learned = torch.tensor(0.5, requires_grad=True)
    for name in ("kinetic", "jacobian"):
        with pytest.raises(TypeError, match=f"{name} is a tensor that requires grad"):
            RNODERegularized(Linear(), **{name: learned})
    with pytest.raises(TypeError, match="b is a tensor that requires grad"):
        SteerRegularized(Linear(), b=learned)
