"""sdeint: strong order against exact solutions on the same Brownian path, path consistency under
rejections, output-time landing, statistics, and bad input."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchsde

import local_reg
from local_reg import LocallyRegularized, SolverError, compat
from local_reg.sde import SDEStats, is_sde, sdeint
from tests.problems import DecaySDE

DT = torch.float64


class GBM(torch.nn.Module):
    """dy = mu y dt + sigma y dW, exact y(t) = y0 exp((mu - sigma^2/2) t + sigma W(t))."""

    sde_type = "ito"

    def __init__(self, mu: float = 0.5, sigma: float = 0.6, noise_type: str = "diagonal") -> None:
        super().__init__()
        self.mu, self.sigma, self.noise_type = mu, sigma, noise_type

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        out = self.sigma * y
        return out.unsqueeze(-1) if self.noise_type == "scalar" else out

    def exact(self, y0, t, w):
        """``y(t)`` on the path with ``W(t) - W(0) = w``."""
        return y0 * torch.exp((self.mu - 0.5 * self.sigma**2) * t + self.sigma * w)


class OU(torch.nn.Module):
    """dy = -theta y dt + sigma dW (additive noise)."""

    sde_type = "ito"

    def __init__(self, theta: float = 1.5, sigma: float = 0.8, noise_type: str = "diagonal") -> None:
        super().__init__()
        self.theta, self.sigma, self.noise_type = theta, sigma, noise_type

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        if self.noise_type == "additive":
            return torch.full((*y.shape, 1), self.sigma, dtype=y.dtype)
        return torch.full_like(y, self.sigma)


class GridBrownian:
    """A Brownian path given by its increments on a uniform grid of [0, 1]: queries at grid
    points return sums of those increments, so coarse solvers and the fine reference see the same
    path (and it is far cheaper to query than a BrownianInterval)."""

    def __init__(self, size: tuple[int, int], n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.n = n
        self.shape = size
        self.increments = torch.randn(n, *size, dtype=DT, generator=gen) / math.sqrt(n)
        self.w = torch.cat([torch.zeros(1, *size, dtype=DT), self.increments.cumsum(0)])

    def _index(self, t: float) -> int:
        k = round(t * self.n)
        assert abs(k - t * self.n) < 1e-6, "query off the grid"
        return k

    def __call__(self, ta: float, tb: float) -> torch.Tensor:
        return self.w[self._index(tb)] - self.w[self._index(ta)]


def ou_reference(sde: OU, y0, bm: GridBrownian):
    """OU on [0, 1] by the exponential integrator with midpoint weights on the fine grid of the
    same path: y_{k+1} = e^{-theta h} y_k + sigma e^{-theta h / 2} dW_k (strong error O(h))."""
    h = 1.0 / bm.n
    decay, half = math.exp(-sde.theta * h), math.exp(-sde.theta * h / 2)
    y = y0
    for dw in bm.increments:
        y = decay * y + sde.sigma * half * dw
    return y


def fitted_order(errors: list[float], steps: list[float]) -> float:
    x = torch.log(torch.tensor(steps, dtype=DT))
    y = torch.log(torch.tensor(errors, dtype=DT))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def strong_errors(sde, y0, bm, exact, steps, method="euler_maruyama"):
    return [
        float((sdeint(sde, y0, [0.0, 1.0], step_size=h, bm=bm, method=method).ys[-1] - exact).abs().mean())
        for h in steps
    ]


STEPS = [2.0**-k for k in range(3, 8)]


@pytest.mark.parametrize(("method", "expected"), [("euler_maruyama", 0.5), ("milstein", 1.0)])
@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_strong_order_gbm(noise_type, method, expected):
    batch, d = 2000, 1 if noise_type == "diagonal" else 2
    sde = GBM(noise_type=noise_type)
    y0 = torch.ones(batch, d, dtype=DT)
    m = d if noise_type == "diagonal" else 1
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(batch, m), dtype=DT, entropy=11)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    order = fitted_order(strong_errors(sde, y0, bm, exact, STEPS, method=method), STEPS)
    tolerance = 0.15 if method == "euler_maruyama" else 0.2
    assert abs(order - expected) < tolerance, order


def test_adaptive_milstein_converges_where_adaptive_euler_maruyama_is_biased():
    """One path per solve (so each has its own steps), GBM against its exact solution on the same
    path. Euler--Maruyama's error stalls as the tolerance shrinks (the accepted steps are those
    whose Milstein term, which it drops, is small: a biased limit); Milstein's falls with it."""
    sde = GBM(sigma=0.3)
    y0 = torch.ones(1, 1, dtype=DT)
    errors: dict[str, list[float]] = {"euler_maruyama": [], "milstein": []}
    for method, method_errors in errors.items():
        for tol in (1e-3, 1e-4):
            total = 0.0
            for seed in range(12):
                bm = torchsde.BrownianInterval(0.0, 1.0, size=(1, 1), dtype=DT, entropy=seed)
                solution = sdeint(
                    sde, y0, [0.0, 1.0], rtol=tol, atol=tol, bm=bm, method=method, max_steps=10**5
                )
                total += float((solution.ys[-1] - sde.exact(y0, 1.0, bm(0.0, 1.0))).abs())
            method_errors.append(total / 12)
    assert errors["milstein"][1] < 0.3 * errors["milstein"][0], errors
    assert errors["euler_maruyama"][1] > 0.5 * errors["euler_maruyama"][0], errors
    assert errors["milstein"][1] < 0.2 * errors["euler_maruyama"][1], errors


class SinhSDE(torch.nn.Module):
    """``dX = X/2 dt + sqrt(1 + X^2) dW``, ``X(0) = 0``: ``X = sinh(W)``, a diffusion with curvature."""

    sde_type, noise_type = "ito", "diagonal"

    def f(self, t, y):
        return 0.5 * y

    def g(self, t, y):
        return torch.sqrt(1 + y * y)


def test_adaptive_milstein_is_unbiased_where_the_diffusion_is_curved():
    """The forward difference's error in the Milstein term, ``g^2 g'' sqrt(h) (dW^2 - h) / 4``, has
    mean zero on fixed steps, but the accepted steps are those whose ``|dW^2 - h|`` is small: with it
    the error at ``tol = 1e-3`` averaged -8.2e-3 +- 1.4e-3 over these paths (all but a few
    negative), shrinking only as ``tol^{1/2}``. The central difference leaves no bias."""
    y0 = torch.zeros(1, 1, dtype=DT)
    errors = []
    for seed in range(48):
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(1, 1), dtype=DT, entropy=1000 + seed, dt=2**-12)
        solution = sdeint(SinhSDE(), y0, [0.0, 1.0], rtol=1e-3, atol=1e-3, bm=bm, method="milstein")
        errors.append(float(solution.ys[-1] - torch.sinh(bm(0.0, 1.0))))
    errors_t = torch.tensor(errors)
    standard_error = float(errors_t.std()) / math.sqrt(len(errors))
    assert abs(float(errors_t.mean())) < 3 * standard_error, (float(errors_t.mean()), standard_error)


def test_milstein_is_euler_maruyama_for_additive_noise():
    sde = OU(noise_type="additive")
    y0 = torch.full((4, 1), 1.0, dtype=DT)
    solves = [
        sdeint(sde, y0, [0.0, 0.5, 1.0], generator=torch.Generator().manual_seed(3), method=method)
        for method in ("euler_maruyama", "milstein")
    ]
    assert torch.equal(solves[0].ys, solves[1].ys)
    assert solves[0].stats.nfe == solves[1].stats.nfe


@pytest.mark.parametrize("noise_type", ["diagonal", "additive"])
def test_strong_order_ou(noise_type):
    batch = 1000
    sde = OU(noise_type=noise_type)
    y0 = torch.full((batch, 1), 1.0, dtype=DT)
    bm = GridBrownian((batch, 1), 2**12, seed=5)
    exact = ou_reference(sde, y0, bm)
    order = fitted_order(strong_errors(sde, y0, bm, exact, STEPS), STEPS)
    assert abs(order - 1.0) < 0.2, order


def test_adaptive_error_falls_with_tolerance():
    sde = GBM()
    y0 = torch.ones(500, 1, dtype=DT)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(500, 1), dtype=DT, entropy=2)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    errors, nfes = [], []
    for tol in (1e-1, 1e-2, 1e-3):
        sol = sdeint(sde, y0, [0.0, 1.0], rtol=tol, atol=tol, bm=bm)
        errors.append(float((sol.ys[-1] - exact).abs().mean()))
        nfes.append(sol.stats.nfe)
    assert errors[0] > errors[1] > errors[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_rejected_steps_do_not_change_the_path():
    """Replay the accepted grid with fixed steps on the same Brownian path: identical solution."""
    sde = GBM(mu=1.0, sigma=1.0)
    y0 = torch.ones(64, 1, dtype=DT)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(64, 1), dtype=DT, entropy=7)
    times = [0.0, 0.3, 1.0]
    sol = sdeint(sde, y0, times, rtol=1e-2, atol=1e-2, bm=bm)
    assert sol.stats.n_rejected > 0
    grid = sol.steps.t.tolist() + [1.0]
    replay = sdeint(sde, y0, grid, step_size=10.0, bm=bm)
    assert replay.stats.n_steps == sol.stats.n_accepted
    index = [grid.index(t) for t in times]
    torch.testing.assert_close(sol.ys, replay.ys[index], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("halfway_tree", [False, True])
def test_a_halfway_tree_gives_every_model_one_path(halfway_tree):
    """docs/sde.md: a default interval's path depends on the queries made before (two solves on one
    object see one path only in law); a halfway tree's does not, so it is the one to share."""
    sde = GBM(mu=1.0, sigma=1.0)
    y0 = torch.ones(16, 1, dtype=DT)

    def solve_both(first_tol, second_tol):
        bm = torchsde.BrownianInterval(
            0.0, 1.0, size=(16, 1), dtype=DT, entropy=5, halfway_tree=halfway_tree, tol=1e-9
        )
        first = sdeint(sde, y0, [0.0, 1.0], rtol=first_tol, atol=first_tol, bm=bm).ys[-1]
        second = sdeint(sde, y0, [0.0, 1.0], rtol=second_tol, atol=second_tol, bm=bm).ys[-1]
        return first, second

    coarse_first, fine_after = solve_both(1e-1, 1e-3)
    fine_first, coarse_after = solve_both(1e-3, 1e-1)
    same = torch.allclose(coarse_first, coarse_after, rtol=1e-12, atol=1e-12) and torch.allclose(
        fine_first, fine_after, rtol=1e-12, atol=1e-12
    )
    assert same == halfway_tree


def test_outputs_are_step_ends_and_stats_add_up():
    sde = GBM()
    y0 = torch.ones(8, 1, dtype=DT)
    times = [0.0, 0.1, 0.55, 1.0]
    sol = sdeint(sde, y0, torch.tensor(times, dtype=DT), generator=torch.Generator().manual_seed(0))
    ends = (sol.steps.t + sol.steps.dt).tolist()
    for t in times[1:]:
        assert t in ends
    assert isinstance(sol.stats, SDEStats)
    assert sol.stats.nfe == sol.stats.nfe_drift + sol.stats.nfe_diffusion
    assert sol.stats.n_steps == sol.stats.n_accepted + sol.stats.n_rejected
    assert sol.ys.shape == (4, 8, 1)
    assert sol.steps.stiffness_estimate is None


def test_generator_makes_solves_reproducible():
    sde = GBM()
    y0 = torch.ones(4, 1, dtype=DT)
    a = sdeint(sde, y0, [0.0, 1.0], generator=torch.Generator().manual_seed(3)).ys
    b = sdeint(sde, y0, [0.0, 1.0], generator=torch.Generator().manual_seed(3)).ys
    torch.testing.assert_close(a, b, rtol=0, atol=0)


class Bad(torch.nn.Module):
    sde_type = "ito"

    def __init__(self, noise_type="diagonal", g_shape=None, f=None):
        super().__init__()
        self.noise_type, self.g_shape, self._f = noise_type, g_shape, f

    def f(self, t, y):
        return self._f(y) if self._f is not None else -y

    def g(self, t, y):
        return torch.ones(self.g_shape, dtype=y.dtype) if self.g_shape else 0.1 * torch.ones_like(y)


def test_bad_input_names_the_argument():
    y0 = torch.ones(3, 2)
    with pytest.raises(ValueError, match=re.escape("sde.g")):
        sdeint(Bad(g_shape=(3, 3)), y0, [0.0, 1.0])
    with pytest.raises(ValueError, match=re.escape("sde.f")):
        sdeint(Bad(f=lambda y: y[:, :1]), y0, [0.0, 1.0])
    with pytest.raises(ValueError, match="noise_type"):
        sdeint(Bad(noise_type="general"), y0, [0.0, 1.0])
    strat = Bad()
    strat.sde_type = "stratonovich"
    with pytest.raises(ValueError, match="sde_type"):
        sdeint(strat, y0, [0.0, 1.0])
    # The regularized models refuse them on the torchsde backend too: the message says so.
    for sde in (strat, Bad(noise_type="general")):
        with pytest.raises(ValueError, match="on either backend"):
            LocallyRegularized(sde, backend="torchsde")
    with pytest.raises(TypeError, match="sde"):
        sdeint(lambda t, y: y, y0, [0.0, 1.0])
    with pytest.raises(ValueError, match="bm"):
        sdeint(Bad(), y0, [0.0, 2.0], bm=torchsde.BrownianInterval(0.0, 1.0, size=(3, 2)))
    with pytest.raises(ValueError, match="bm"):
        sdeint(Bad(), y0, [0.0, 1.0], bm=torchsde.BrownianInterval(0.0, 1.0, size=(3, 1)))
    # A path without a shape attribute is checked at each increment.
    path = torchsde.BrownianInterval(0.0, 1.0, size=(3, 1))
    shape_and_source = r"bm returned shape \(3, 1\), expected \(3, 2\) \(from y0's shape and the noise type"
    with pytest.raises(ValueError, match=shape_and_source):
        sdeint(Bad(), y0, [0.0, 1.0], bm=lambda ta, tb: path(ta, tb))
    with pytest.raises(ValueError, match="y0"):
        sdeint(Bad(), torch.ones(3), [0.0, 1.0])
    with pytest.raises(ValueError, match="t must"):
        sdeint(Bad(), y0, [1.0, 0.0])
    with pytest.raises(ValueError, match="rtol"):
        sdeint(Bad(), y0, [0.0, 1.0], rtol=-1.0)
    with pytest.raises(ValueError, match="method"):
        sdeint(Bad(), y0, [0.0, 1.0], method="srk")
    assert is_sde(Bad()) and not is_sde(torch.nn.Linear(2, 2))


def test_solver_failures_raise_solver_error():
    y0 = torch.ones(2, 1, dtype=DT)
    blow_up = Bad(f=lambda y: y**3)  # finite-time blow-up at t = 0.5
    with pytest.raises(SolverError) as info:
        sdeint(blow_up, y0, [0.0, 1.0], max_steps=100_000)
    assert info.value.t < 1.0 and info.value.n_steps > 0
    with pytest.raises(SolverError, match="max_steps"):
        sdeint(GBM(), y0, [0.0, 1.0], rtol=1e-6, atol=1e-6, max_steps=5)
    with pytest.raises(SolverError, match="non-finite"):
        sdeint(Bad(f=lambda y: y * float("nan")), y0, [0.0, 1.0])


def test_fixed_steps_match_torchsde_euler():
    """Fixed-step sdeint is torchsde's Euler--Maruyama on the same Brownian path."""
    sde = GBM()
    y0 = torch.rand(32, 1, dtype=DT) + 0.5
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(32, 1), dtype=DT, entropy=13)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    ours = sdeint(sde, y0, ts, step_size=2.0**-6, bm=bm).ys
    theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=2.0**-6)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_autocast_runs_drift_and_diffusion_in_half_precision_and_the_solver_in_the_states():
    """Under ``torch.autocast`` the drift and diffusion run in bfloat16, their outputs cast back to
    the state's dtype (as torchsde's solvers promote them), while the solver's own arithmetic (the
    additive noise's ``g dW``, a matrix product autocast would lower) stays in float32, as for ODEs."""

    class Linear(torch.nn.Module):
        """An elementwise drift and a constant diffusion (nothing autocast lowers), additive noise
        from two Brownian motions."""

        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return -0.5 * y

        G = torch.tensor([[0.31, 0.12], [0.05, 0.23], [0.17, 0.11]])

        def g(self, t, y):
            return self.G.expand(*y.shape[:-1], 3, 2)

    y0 = 3 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    def solve(sde, y, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return sdeint(sde, y, [0.0, 0.5, 1.0], generator=torch.Generator().manual_seed(4)).ys

    # No autocast op in the problem: any difference would be the solver's arithmetic lowered.
    assert torch.equal(solve(Linear(), y0, True), solve(Linear(), y0, False))

    def probe_penalty(autocast):  # the paper's penalty: a probe step of the regularized module's own
        model = LocallyRegularized(
            Linear(), sampling="random", penalty="error-dt", weight=1.0, rtol=1e-3, atol=1e-3
        )
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(y0, torch.tensor([0.0, 1.0]))
        return model.stats.dt_reg, model.reg_loss  # the probe's step size from sdeint's heuristic too

    (dt_autocast, penalty_autocast), (dt, penalty) = probe_penalty(True), probe_penalty(False)
    assert dt_autocast == dt and torch.equal(penalty_autocast, penalty)

    torch.manual_seed(0)
    drift, diffusion = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

    class Neural(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self) -> None:
            super().__init__()
            self.drift, self.diffusion = drift, diffusion
            self.under_autocast: list[bool] = []

        def f(self, t, y):
            self.under_autocast.append(torch.is_autocast_enabled("cpu"))
            return torch.tanh(self.drift(y))

        def g(self, t, y):
            self.under_autocast.append(torch.is_autocast_enabled("cpu"))
            return 0.2 * torch.sigmoid(self.diffusion(y))

    def gradient_of(autocast):
        drift.zero_grad()
        sde = Neural()
        ys = solve(sde, y0, autocast)
        ys.square().sum().backward()  # outside autocast, as in the AMP recipe
        return ys, drift.weight.grad.clone(), sde.under_autocast

    reference_ys, reference_grad, calls = gradient_of(False)
    ys, grad, under_autocast = gradient_of(True)
    assert not any(calls) and all(under_autocast) and len(under_autocast) > 4
    assert ys.dtype == torch.float32
    assert 0 < (ys - reference_ys).abs().max() < 0.05  # bfloat16's drift, not float32's
    assert (grad - reference_grad).norm() < 0.02 * reference_grad.norm()

    # The regularized module's default (the drift's kinetic penalty) under autocast too.
    model = LocallyRegularized(Neural(), sampling="random")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(y0, torch.tensor([0.0, 1.0]))
    assert model.reg_loss.dtype == torch.float32 and torch.isfinite(model.reg_loss)


# One step, against the module's formulas computed by hand --------------------------------------------


class CurvedSDE(torch.nn.Module):
    """A time-dependent, curved drift and a multiplicative diagonal diffusion: every term of the
    error estimate is non-zero and differs from its neighbours' mistakes (``f(t, K)`` for
    ``f(t + h, K)``, ``|y|`` for ``max(|y|, |y1|)``, a signed Milstein term)."""

    sde_type, noise_type = "ito", "diagonal"

    def f(self, t, y):
        return t * y + torch.sin(y)

    def g(self, t, y):
        return 0.3 * y + 0.1 * y**2


def _by_hand(sde, t, y, h, dw, rtol, atol, central=False):
    """``(y1, E_N, EEst)`` of docs/sde.md's Euler--Maruyama step and Lamba estimate; ``central``:
    ``E_N`` by the central difference, as adaptive Milstein propagates it (``y1`` then adds it)."""
    f0, g0 = sde.f(torch.tensor(t, dtype=DT), y), sde.g(torch.tensor(t, dtype=DT), y)
    predictor = y + h * f0
    y1 = predictor + g0 * dw
    drift = h / 2 * (sde.f(torch.tensor(t + h, dtype=DT), predictor) - f0)
    ahead = sde.g(torch.tensor(t, dtype=DT), y + g0 * math.sqrt(h))
    if central:
        behind = sde.g(torch.tensor(t, dtype=DT), y - g0 * math.sqrt(h))
        noise = (ahead - behind) / (2 * math.sqrt(h)) * (dw**2 - h) / 2
        y1 = y1 + noise
    else:
        noise = (ahead - g0) / math.sqrt(h) * (dw**2 - h) / 2
    scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
    error_estimate = (((drift.abs() / 6 + noise.abs()) / scale) ** 2).mean().sqrt()
    return y1, noise, error_estimate


def test_one_step_and_its_error_estimate_are_the_documented_formulas():
    """Mutants of the drift correction's time, the error scale and the Milstein term's sign
    passed every solve-level test."""
    from local_reg.sde import sde_step

    sde = CurvedSDE()
    y = torch.tensor([[1.0, 0.5, 2.0]], dtype=DT)
    dw = torch.tensor([[0.1, -0.5, 0.2]], dtype=DT)  # dW^2 < h in two components: E_N < 0 there
    h, t, rtol, atol = 0.1, 0.7, 1e-3, 1e-6
    y1, noise, expected = _by_hand(sde, t, y, h, dw, rtol, atol)
    assert (noise < 0).any() and (noise > 0).any() and (y1.abs() > y.abs()).any()
    result = sde_step(sde, "diagonal", t, y, h, dw, rtol=rtol, atol=atol)
    torch.testing.assert_close(result.y1, y1, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(result.error_estimate, expected, rtol=1e-12, atol=0.0)
    assert (result.nfe_drift, result.nfe_diffusion) == (2, 2)
    fixed = sde_step(sde, "diagonal", t, y, h, dw, rtol=rtol, atol=atol, milstein=True, estimate_error=False)
    torch.testing.assert_close(fixed.y1, y1 + noise, rtol=1e-14, atol=0.0)
    assert (fixed.nfe_drift, fixed.nfe_diffusion) == (1, 2)
    adaptive = sde_step(sde, "diagonal", t, y, h, dw, rtol=rtol, atol=atol, milstein=True)
    y1, _, expected = _by_hand(sde, t, y, h, dw, rtol, atol, central=True)
    torch.testing.assert_close(adaptive.y1, y1, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(adaptive.error_estimate, expected, rtol=1e-12, atol=0.0)
    assert (adaptive.nfe_drift, adaptive.nfe_diffusion) == (2, 3)


@pytest.mark.parametrize(("noise_type", "order"), [("additive", 2), ("diagonal", 1), ("scalar", 1)])
def test_the_error_estimate_shrinks_with_the_documented_order(noise_type, order):
    """``EEst = O(h^order)``: halving ``h`` (with ``dW`` proportional to ``sqrt(h)``) divides it by
    ``2^order``; ``error_order`` is what the controller is given."""
    from local_reg.sde import sde_step
    from local_reg.sde._step import error_order

    assert error_order(noise_type) == order
    sde = OU(noise_type=noise_type) if noise_type == "additive" else GBM(noise_type=noise_type)
    y = torch.tensor([[1.0, 2.0]], dtype=DT)
    m = 2 if noise_type == "diagonal" else 1
    direction = torch.tensor([[0.7, -1.3]], dtype=DT)[:, :m]
    estimates = [
        float(
            sde_step(
                sde, noise_type, 0.0, y, h, direction * math.sqrt(h) * 2, rtol=1e-3, atol=1e-6
            ).error_estimate
        )
        for h in (1e-3, 5e-4)
    ]
    assert estimates[0] / estimates[1] == pytest.approx(2**order, rel=0.05)


def test_the_initial_step_size_is_its_documented_trial_step():
    """``h0 = 0.01 d0 / d1`` (``d1`` reading ``|f0| + 3 |g0|``), one trial step at ``dW = sqrt(2 h0)``,
    then ``h = h0 min(100, 0.9 EEst^(-1/order))``."""
    from local_reg.sde import sde_initial_step_size, sde_step

    sde = GBM(mu=0.5, sigma=2.0)
    y0 = torch.tensor([[1.0, 3.0]], dtype=DT)
    rtol, atol = 1e-3, 1e-6
    f0, g0 = sde.f(0.0, y0), sde.g(0.0, y0)
    scale = atol + rtol * y0.abs()
    d0 = float(((y0 / scale) ** 2).mean().sqrt())
    d1 = float((((f0.abs() + 3 * g0.abs()) / scale) ** 2).mean().sqrt())
    h0 = 0.01 * d0 / d1
    trial = sde_step(
        sde, "diagonal", 0.0, y0, h0, torch.full_like(y0, math.sqrt(2 * h0)), rtol=rtol, atol=atol
    )
    expected = h0 * min(100.0, 0.9 * float(trial.error_estimate) ** -1.0)
    h, nfe_drift, nfe_diffusion = sde_initial_step_size(
        sde, "diagonal", 0.0, y0, f0, g0, rtol, atol, t_end=1.0
    )
    assert h == pytest.approx(expected, rel=1e-12) and (nfe_drift, nfe_diffusion) == (1, 1)


# The solve's glue: the Brownian path's span, the first diffusion, the counts, the first step --


class TimeNoise(torch.nn.Module):
    """``dy = (1 + t) dW``, counting its calls: ``y(1) = sum_k (1 + t_k) dW_k`` under Euler steps."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self) -> None:
        super().__init__()
        self.drift_calls = self.diffusion_calls = 0

    def f(self, t, y):
        self.drift_calls += 1
        return torch.zeros_like(y)

    def g(self, t, y):
        self.diffusion_calls += 1
        return (1 + t) * torch.ones_like(y)


def test_the_brownian_path_spans_every_output_time_and_the_counts_are_the_calls():
    """Over ``[0, 0.5, 1]`` in steps of 0.25 the variance of ``y(1)`` is the left-point sum
    ``0.25 (1 + 1.25^2 + 1.5^2 + 1.75^2) = 1.96875`` (a path made over ``[0, 0.5]`` only warned and
    clamped); the stats count the drift and diffusion calls made."""
    import warnings

    sde = TimeNoise()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solution = sdeint(sde, torch.zeros(4000, 1, dtype=DT), [0.0, 0.5, 1.0], step_size=0.25,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert float(solution.ys[-1].var()) == pytest.approx(1.96875, abs=0.15)
    assert (solution.stats.nfe_drift, solution.stats.nfe_diffusion) == (sde.drift_calls, sde.diffusion_calls)


def test_the_first_step_reads_the_diffusion_at_t0():
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(3, 1), dtype=DT, entropy=1)
    solution = sdeint(TimeNoise(), torch.zeros(3, 1, dtype=DT), [0.0, 1.0], step_size=1.0, bm=bm)
    torch.testing.assert_close(solution.ys[-1], bm(0.0, 1.0))  # g(0) = 1, not g(1) = 2


@pytest.mark.parametrize(
    "bm",
    [
        torchsde.BrownianInterval(0.5, 1.0, size=(3, 1), dtype=DT, entropy=1),  # starts after t0
        torchsde.BrownianTree(t0=0.0, w0=torch.zeros(3, 1, dtype=DT), t1=0.5, entropy=0),  # ends before t1
    ],
)
def test_a_brownian_motion_that_does_not_cover_the_span_is_refused(bm):
    with pytest.raises(ValueError, match="bm covers"):
        sdeint(TimeNoise(), torch.zeros(3, 1, dtype=DT), [0.0, 1.0], bm=bm)


def test_first_step_is_the_first_step_and_max_steps_advises_the_tolerances():
    solution = sdeint(GBM(), torch.ones(2, 1, dtype=DT), [0.0, 1.0], first_step=1e-3, record_states=True,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert float(solution.steps.dt[0]) == pytest.approx(1e-3, abs=1e-12)
    with pytest.raises(SolverError, match="loosen rtol/atol") as info:  # adaptive, not a fixed step
        sdeint(GBM(), torch.ones(2, 1, dtype=DT), [0.0, 1.0], rtol=1e-6, atol=1e-6, max_steps=5,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    # Nothing tells a stiff drift from a tight tolerance here, so the advice says which it cannot
    # fix; and compat.sdeint, which sets no step limit, has no option to name.
    assert "no stiffness estimate" in str(info.value) and "compat" not in str(info.value)


@pytest.mark.parametrize("with_forward", [False, True])
def test_odeint_refuses_an_sde_naming_sdeint(with_forward):
    """It raised torch's "missing forward", or, with a forward, solved the drift alone, the noise
    dropped without a word; sdeint names an ODE it is given."""
    from local_reg import odeint

    class SDE(DecaySDE):  # its own class: a forward is given to it below
        pass

    if with_forward:
        SDE.forward = lambda self, t, y: -y
    y0 = torch.ones(2, 1, dtype=DT)
    times = torch.tensor([0.0, 1.0], dtype=DT)
    for solve in (
        lambda: odeint(SDE(), y0, times),
        lambda: odeint(SDE(), (y0, y0), times),  # behind a tuple state's wrapper
        lambda: compat.odeint(SDE(), y0, times),
        lambda: compat.odeint(SDE(), y0, times, method="scipy_solver"),  # compat's own branch
        lambda: local_reg.step(SDE(), 0.0, y0, 0.1, "tsit5"),  # stepped the forward's ODE
        lambda: local_reg.initial_step_size(SDE(), 0.0, y0, -y0, 5, 1e-6, 1e-6),
    ):
        with pytest.raises(TypeError, match=r"func is an SDE .* solve it with sdeint \(local_reg.sdeint"):
            solve()


class _CDEField(torch.nn.Module):
    """torchcde 0.2.5's vector field, reduced: its forward is the ODE torchdiffeq solves, and it
    carries torchsde's interface (``f = forward``, a zero ``g``, ``noise_type``) for its
    ``backend="torchsde"``."""

    sde_type, noise_type = "stratonovich", "additive"

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2, dtype=DT)

    def forward(self, t, z):
        return torch.tanh(self.linear(z))

    f = forward

    def g(self, t, z):
        return torch.zeros_like(z).unsqueeze(-1)


def test_a_field_whose_forward_is_its_drift_is_an_ode_as_torchcde_solves_it():
    """torchcde hands torchdiffeq (and local_reg.compat in its place) such a field: every call failed
    with "func is an SDE", whose advice a torchcde user cannot take (cdeint builds the field). The ODE
    solvers solve its forward, as torchdiffeq's; the regularized models, which take SDEs too, keep
    taking such a module as the SDE it also is (a neural SDE may alias its drift so, and its noise
    must not be dropped)."""
    import torchdiffeq

    from local_reg import LocallyRegularized, odeint

    torch.manual_seed(0)
    field, y0, times = _CDEField(), torch.randn(3, 2, dtype=DT), torch.linspace(0.0, 1.0, 4, dtype=DT)
    tight = {"rtol": 1e-10, "atol": 1e-10}
    reference = torchdiffeq.odeint(field, y0, times, **tight)
    for ys in (
        odeint(field, y0, times, **tight).ys,
        compat.odeint(field, y0, times, **tight),
        compat.odeint_adjoint(field, y0, times, **tight),
    ):
        torch.testing.assert_close(ys, reference, rtol=1e-8, atol=1e-8)

    class NoisyDrift(_CDEField):
        sde_type, noise_type = "ito", "diagonal"

        def g(self, t, z):
            return torch.ones_like(z)

    model = LocallyRegularized(NoisyDrift())
    torch.manual_seed(1)
    first = model(y0, times)
    torch.manual_seed(2)
    assert not torch.equal(model(y0, times), first)  # its noise, drawn anew


def test_step_ts_beside_a_fixed_step_names_a_remedy_sdeint_takes():
    # It advised step_to_outputs=True, a keyword sdeint does not take (and fixed steps need not).
    from local_reg import PIController

    with pytest.raises(ValueError, match=r"put those times among the output times instead: fixed steps end"):
        sdeint(
            GBM(),
            torch.ones(2, 1, dtype=DT),
            [0.0, 1.0],
            step_size=0.1,
            controller=PIController(step_ts=[0.5]),
        )


@pytest.mark.parametrize(
    "keyword", ["dense", "step_to_outputs", "norm", "compile", "callbacks", "checkpoints"]
)
def test_odeints_keywords_an_sde_solve_lacks_are_named_as_odeints(keyword):
    # Python's own message named the keyword only (sdeint's hints covered torchsde's spellings).
    with pytest.raises(TypeError, match=rf"unexpected keyword argument '{keyword}' \(odeint's"):
        sdeint(GBM(), torch.ones(2, 1, dtype=DT), [0.0, 1.0], **{keyword: True})


def test_torchsdes_adjoint_settings_given_to_sdeint_say_where_they_go():
    # Python's nearest keyword was adjoint_params ("did you mean"), a different thing.
    with pytest.raises(
        TypeError, match=r"'adjoint_rtol' \(torchsde's adjoint settings: sdeint differentiates"
    ):
        sdeint(GBM(), torch.ones(2, 1, dtype=DT), [0.0, 1.0], adjoint_rtol=1e-3)


def test_a_stratonovich_sde_is_told_to_take_its_ito_form_not_only_to_declare_ito():
    """Declaring sde_type='ito', the advice alone, solved another SDE (E y(1) 1.03 against 1.65 for
    dy = y o dW): the drift correction comes first, as compat.sdeint's refusal says."""
    sde = GBM()
    sde.sde_type = "stratonovich"
    with pytest.raises(
        ValueError, match=r"write the SDE in Ito form \(add to the drift .* declaring it alone"
    ):
        sdeint(sde, torch.ones(2, 1, dtype=DT), [0.0, 1.0])


def test_a_scheme_name_without_its_step_keywords_is_refused_not_solved_as_euler_maruyama(monkeypatch):
    """A name added to the schemes' names alone ran Euler--Maruyama, bit for bit, under its name."""
    from local_reg.sde import problem

    monkeypatch.setattr(problem, "METHODS", (*problem.METHODS, "heun"))
    with pytest.raises((KeyError, ValueError), match="heun"):
        sdeint(DecaySDE(), torch.ones(3, 1), [0.0, 1.0], method="heun")
