"""Per-element tolerances: ``rtol``/``atol`` as tensors broadcasting to the state, and one
tolerance per tensor of a tuple state (torchdiffeq's tuple tolerances)."""

from __future__ import annotations

import math

import pytest
import torch

import local_reg.compat as compat
from local_reg import BacksolveAdjoint, odeint, sdeint

F64 = torch.float64
T = torch.linspace(0.0, 3.0, 4, dtype=F64)


def decoupled(t, y):
    """A smooth decaying component beside a fast oscillation that dominates the step size."""
    return torch.stack([-(1 + t) * y[..., 0], 40.0 * torch.cos(40.0 * t) * torch.ones_like(y[..., 1])], -1)


def test_per_element_tolerances_equal_to_a_number_give_the_same_solve():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    for method in ("tsit5", "dopri5", "bosh3"):
        scalar = odeint(decoupled, y0, T, method=method, rtol=1e-7, atol=1e-9)
        tensor = odeint(
            decoupled,
            y0,
            T,
            method=method,
            rtol=torch.full((2,), 1e-7, dtype=F64),
            atol=torch.tensor(1e-9, dtype=F64).expand(2),
        )
        assert torch.equal(scalar.ys, tensor.ys)
        assert scalar.stats.nfe == tensor.stats.nfe


def test_a_loose_element_drops_out_of_the_error_norm():
    """With the second element's tolerance at 1e20 its scaled error is ~0, so the RMS over both is
    the first's scaled error over sqrt(2): exactly the solve of the first component alone at
    sqrt(2) times its tolerances (the initial-step heuristic's norms scale alike)."""
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    rtol, atol = 1e-6, 1e-8
    loose = odeint(
        decoupled,
        y0,
        T,
        rtol=torch.tensor([rtol, 1e20], dtype=F64),
        atol=torch.tensor([atol, 1e20], dtype=F64),
    )
    alone = odeint(
        lambda t, y: decoupled(t, torch.cat([y, torch.zeros_like(y)], -1))[..., :1],
        y0[:1],
        T,
        rtol=rtol * math.sqrt(2),
        atol=atol * math.sqrt(2),
    )
    controlled = odeint(decoupled, y0, T, rtol=rtol, atol=atol)
    assert loose.stats.nfe == alone.stats.nfe
    torch.testing.assert_close(loose.ys[:, 0], alone.ys[:, 0], rtol=1e-12, atol=1e-14)
    assert controlled.stats.nfe > 2 * loose.stats.nfe  # the oscillation no longer sets the steps


def test_tuple_tolerances_are_the_per_element_tolerances_of_the_flat_state():
    def pair(t, state):
        z, s = state
        return -z, (z**2).sum(-1, keepdim=True) * torch.cos(10 * t)

    z0 = torch.tensor([[1.0, -0.5], [0.3, 0.2]], dtype=F64)
    s0 = torch.zeros(2, 1, dtype=F64)
    per_row = torch.tensor([[1e-9], [1e-5]], dtype=F64)  # broadcasts over z's columns
    tupled = odeint(pair, (z0, s0), T, rtol=[1e-7, 1e-4], atol=[per_row, 1e-6])
    flat_atol = torch.cat([per_row.expand(2, 2).reshape(-1), torch.full((2,), 1e-6, dtype=F64)])
    flat_rtol = torch.tensor([1e-7] * 4 + [1e-4] * 2, dtype=F64)

    def flat_pair(t, y):
        dz, ds = pair(t, (y[:4].reshape(2, 2), y[4:].reshape(2, 1)))
        return torch.cat([dz.reshape(-1), ds.reshape(-1)])

    flat = odeint(flat_pair, torch.cat([z0.reshape(-1), s0.reshape(-1)]), T, rtol=flat_rtol, atol=flat_atol)
    assert torch.equal(tupled.ys[0].reshape(4, -1), flat.ys[:, :4])
    assert torch.equal(tupled.ys[1].reshape(4, -1), flat.ys[:, 4:])


def test_every_gradient_method_takes_per_element_tolerances():
    weight = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)

    def field(t, y):
        return torch.tanh(y @ weight.T)

    tolerances = {
        "rtol": torch.tensor([1e-9, 1e-6], dtype=F64),
        "atol": torch.tensor([1e-10, 1e-7], dtype=F64),
    }

    def gradients(method):
        solution = odeint(field, y0, T, gradient=method, adjoint_params=(weight,), **tolerances)
        return torch.autograd.grad(solution.ys.square().sum(), (y0, weight))

    direct = gradients("direct")
    for method in ("checkpoint", "symplectic"):
        for exact, got in zip(direct, gradients(method), strict=True):
            torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"per-element rtol.*BacksolveAdjoint\(rtol=\.\.\.\)"):
        gradients("adjoint")
    for exact, got in zip(direct, gradients(BacksolveAdjoint(rtol=1e-10, atol=1e-12)), strict=True):
        torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-8)


def test_compat_takes_torchdiffeqs_tuple_tolerances():
    """FFJORD's call: ``atol=[atol, atol] + [1e20] * n`` leaves its extra states uncontrolled."""
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def cnf(t, state):
        z, logp, kinetic = state
        dz = torch.tanh(z @ torch.tensor([[0.0, -2.0], [2.0, 0.1]], dtype=F64))
        return dz, -dz.sum(-1, keepdim=True), (dz**2).sum(-1, keepdim=True) * torch.cos(30 * t)

    state = (
        torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=F64),
        torch.zeros(2, 1, dtype=F64),
        torch.zeros(2, 1, dtype=F64),
    )
    t = torch.tensor([0.0, 1.0], dtype=F64)
    tolerances = {"rtol": [1e-8, 1e-8, 1e20], "atol": [1e-8, 1e-8, 1e20]}
    ours = compat.odeint(cnf, state, t, **tolerances)
    theirs = torchdiffeq.odeint(cnf, state, t, **tolerances)
    for mine, reference in zip(ours[:2], theirs[:2], strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    counted = []
    compat.odeint(lambda t, s: counted.append(1) or cnf(t, s), state, t, **tolerances)
    controlled = []
    compat.odeint(lambda t, s: controlled.append(1) or cnf(t, s), state, t, rtol=1e-8, atol=1e-8)
    assert len(counted) < len(controlled)  # the uncontrolled oscillating state no longer sets the steps


@pytest.mark.parametrize("solve", [odeint, compat.odeint])
def test_bad_per_element_tolerances_are_named(solve):
    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for name in ("rtol", "atol"):
        with pytest.raises(
            ValueError, match=rf"{name} of shape \(3,\) does not broadcast to the state's shape \(2,\)"
        ):
            solve(lambda t, y: -y, y0, t, **{name: torch.full((3,), 1e-6, dtype=F64)})
        with pytest.raises(
            ValueError, match=rf"{name} must be (non-negative|positive) and finite in every element"
        ):
            solve(lambda t, y: -y, y0, t, **{name: torch.tensor([1e-6, math.nan], dtype=F64)})
        with pytest.raises(TypeError, match=rf"{name} must be a floating tensor.*int64"):
            solve(lambda t, y: -y, y0, t, **{name: torch.tensor([1, 2])})
    with pytest.raises(
        ValueError, match=r"atol must be positive and finite in every element, got 0\.0 at \(1,\)"
    ):
        solve(lambda t, y: -y, y0, t, atol=torch.tensor([1e-6, 0.0], dtype=F64))
    pair = (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="rtol as a sequence gives one tolerance per tensor of y0: it has 3"):
        solve(lambda t, s: s, pair, t, rtol=[1e-6, 1e-6, 1e-6])
    with pytest.raises(
        ValueError, match=r"atol\[0\] of shape \(3,\) does not broadcast to y0\[0\]'s shape \(2,\)"
    ):
        solve(lambda t, s: s, pair, t, atol=[torch.ones(3, dtype=F64), 1e-6])
    with pytest.raises(TypeError, match=r"atol\[1\] must be a float, got str"):
        solve(lambda t, s: s, pair, t, atol=[1e-6, "1e-6"])


def test_sdeint_takes_one_number_per_tolerance():
    class Decay:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    for name in ("rtol", "atol"):
        with pytest.raises(
            TypeError, match=rf"{name} must be a (non-negative|positive) float: one real number"
        ):
            sdeint(Decay(), torch.ones(1, 2), torch.tensor([0.0, 1.0]), **{name: torch.full((2,), 1e-2)})


def test_a_1d_tensor_is_one_tolerance_per_tensor_of_a_tuple_state_as_in_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def field(t, state):
        return -state[0], -2 * state[1]

    state = (torch.ones(2, dtype=F64), torch.ones(1, dtype=F64))
    atol = torch.tensor([1e-8, 1e20], dtype=F64)
    ours = compat.odeint(field, state, T, rtol=1e-8, atol=atol)
    listed = compat.odeint(field, state, T, rtol=1e-8, atol=[1e-8, 1e20])
    theirs = torchdiffeq.odeint(field, state, T, rtol=1e-8, atol=atol)
    assert all(torch.equal(a, b) for a, b in zip(ours, listed, strict=True))
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-7)
    # A tiny atol beside rtol > 0 asks for a relative tolerance: taken, though float32 rounds it to 0.
    ys = odeint(field, (torch.ones(2), torch.ones(1)), T, atol=[1e-50, 1e-6]).ys
    torch.testing.assert_close(ys[0][-1], torch.full((2,), math.exp(-3.0)), rtol=1e-4, atol=0.0)


@pytest.mark.parametrize(
    "atol", [1e-50, torch.tensor([1e-8, 1e-50], dtype=torch.float64)], ids=["number", "tensor"]
)
def test_an_atol_below_the_state_dtypes_range_beside_rtol_solves_an_element_at_zero(atol):
    """A float32 state with ``atol = 1e-50`` (purely relative, as the docs allow beside ``rtol > 0``):
    the cast rounded it to 0, so an element that stays exactly 0 had a zero scale and a 0 / 0 error
    estimate (a SolverError for a number, a bad-norm ValueError for a tensor). It is raised to the
    dtype's smallest normal number: the solve is that of the float64 state."""
    y0 = torch.tensor([1.0, 0.0])
    ys = odeint(lambda t, y: -y, y0, [0.0, 1.0], rtol=1e-6, atol=atol).ys
    assert float(ys[-1, 1]) == 0.0
    assert float(ys[-1, 0]) == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_the_failure_hint_names_the_tightest_per_element_rtol():
    """``max_steps`` reached at ``rtol=[1e-12, 1e-3]`` in float32: the hint names 1e-12, the
    element whose tolerance the dtype cannot meet (the loosest would read as harmless)."""
    from local_reg import SolverError

    with pytest.raises(SolverError, match="rtol=1e-12 is below"):
        odeint(
            lambda t, y: -y,
            torch.ones(2),
            torch.tensor([0.0, 1.0]),
            rtol=torch.tensor([1e-12, 1e-3]),
            atol=1e-12,
        )


def test_a_tolerance_tensor_of_several_dimensions_for_a_tuple_state_is_named():
    """It was broadcast to the flat state, and refused naming that shape, which the caller never
    sees ("does not broadcast to the state's shape (8,)"); a 0-dim tensor is one number."""
    y0 = (torch.ones(2, 3), torch.ones(2))

    def decay(t, y):
        return (-y[0], -y[1])

    with pytest.raises(
        ValueError, match=r"rtol of shape \(2, 3\) for a tuple y0: give one tolerance per tensor"
    ):
        odeint(decay, y0, [0.0, 1.0], rtol=torch.full((2, 3), 1e-6))
    one = odeint(decay, y0, [0.0, 1.0], rtol=torch.tensor(1e-6))
    assert torch.equal(one.ys[-1][0], odeint(decay, y0, [0.0, 1.0], rtol=1e-6).ys[-1][0])
