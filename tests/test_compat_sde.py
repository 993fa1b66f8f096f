"""``local_reg.compat.sdeint`` against torchsde 0.2.6's ``sdeint`` itself, on the same Brownian paths."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import local_reg
import local_reg.compat as compat
from tests.problems import live_objects

torchsde = pytest.importorskip("torchsde")

DT = torch.float64
TS = torch.linspace(0.0, 1.0, 5, dtype=DT)
STEP = 2.0**-6
"""A power of two that divides every output interval of ``TS``: torchsde's grid (``t0 + k dt``, the
outputs interpolated) and local_reg's (equal steps in each interval) are the same times exactly."""


class SDE(nn.Module):
    """A nonlinear, time-dependent Ito SDE of any of local_reg's noise types: diagonal ``g_i(t, y_i)``,
    scalar ``(batch, d, 1)``, additive ``(batch, d, m)`` independent of ``y``, general ``(batch, d,
    m)`` depending on ``y`` (fixed Euler--Maruyama steps only). ``drift=False`` makes
    ``f = 0`` (where the two derivative-free Milstein schemes coincide)."""

    sde_type = "ito"

    def __init__(self, noise_type: str, drift: bool = True, m: int = 2) -> None:
        super().__init__()
        self.noise_type = noise_type
        self.drift = drift
        self.a = nn.Parameter(torch.tensor([0.4, -0.7, 0.2], dtype=DT))
        self.b = nn.Parameter(torch.tensor([0.5, 0.3, 0.8], dtype=DT))
        self.c = nn.Parameter(torch.linspace(0.1, 0.6, 3 * m, dtype=DT).reshape(3, m))
        self.m = m

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.drift:
            return torch.zeros_like(y)
        return self.a * torch.sin(y) + 0.3 * torch.cos(3 * t)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.noise_type == "diagonal":
            return self.b * torch.cos(y) + 0.1 * t
        if self.noise_type == "scalar":
            return (self.b * torch.tanh(y)).unsqueeze(-1) + 0.2
        if self.noise_type == "general":
            return self.c * torch.cos(y).unsqueeze(-1) + 0.1 * t
        return (self.c * (1 + t)).expand(y.shape[0], -1, -1)

    @property
    def brownian_channels(self) -> int:
        return {"diagonal": 3, "scalar": 1, "additive": self.m, "general": self.m}[self.noise_type]


def brownian(sde: SDE, batch: int, entropy: int = 11) -> object:
    return torchsde.BrownianInterval(
        0.0, 1.0, size=(batch, sde.brownian_channels), dtype=DT, entropy=entropy, dt=STEP
    )


def y0_of(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, dtype=DT, generator=torch.Generator().manual_seed(3))


def values_and_gradients(ys: torch.Tensor, sde: SDE, y0: torch.Tensor) -> list[torch.Tensor]:
    loss = (ys * torch.linspace(0.5, 1.5, ys.shape[-1], dtype=DT)).square().sum()
    grads = torch.autograd.grad(loss, [y0, sde.a, sde.b, sde.c], allow_unused=True)
    return [ys.detach(), *(torch.zeros(()) if grad is None else grad for grad in grads)]


@pytest.mark.parametrize(
    ("noise_type", "method", "drift"),
    [
        ("diagonal", "euler", True),
        ("scalar", "euler", True),
        ("additive", "euler", True),
        ("general", "euler", True),
        # torchsde's grad_free Milstein evaluates the diffusion at y + h f + sqrt(h) g, local_reg's at
        # y + sqrt(h) g (test_milstein_with_drift_agrees_to_the_schemes_order): equal without a drift.
        ("diagonal", "milstein", False),
        ("scalar", "milstein", False),
        # For additive noise both are Euler--Maruyama (the Milstein term is zero).
        ("additive", "milstein", True),
    ],
)
def test_fixed_steps_equal_torchsde_to_round_off(noise_type: str, method: str, drift: bool) -> None:
    options = {"grad_free": True} if method == "milstein" else None
    results = []
    for solve in (torchsde.sdeint, compat.sdeint):
        sde, y0 = SDE(noise_type, drift), y0_of().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning either
            ys = solve(sde, y0, TS, bm=brownian(sde, 2), method=method, dt=STEP, options=options)
        assert ys.shape == (len(TS), 2, 3)
        results.append(values_and_gradients(ys, sde, y0))
    reference, ours = results
    assert reference[0][-1].sub(y0_of()).abs().max() > 0.1  # the noise moved the state
    for expected, got in zip(reference, ours, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    # The diffusion's parameter got a gradient (b for diagonal and scalar noise, c for the others).
    assert ours[3 if noise_type in ("diagonal", "scalar") else 4].abs().max() > 1e-3


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_milstein_with_drift_agrees_to_the_schemes_order(noise_type: str) -> None:
    """With a drift the two derivative-free schemes differ by about ``g'(y) f sqrt(h) (dW^2 - h) / 2``
    per step (torchsde's diffusion is evaluated ``h f`` further), of size ``h^{3/2}`` and mean zero: a
    difference of strong order 1, which falls 16-fold from ``h = 2^-4`` to ``2^-8`` (13 to 17-fold over
    four seeds of each noise type)."""
    sde, y0 = SDE(noise_type), y0_of(64)
    differences = []
    for step in (2.0**-4, 2.0**-8):
        bm, options = brownian(sde, 64, entropy=7), {"grad_free": True}
        reference = torchsde.sdeint(sde, y0, TS[::2], bm=bm, method="milstein", dt=step, options=options)
        ours = compat.sdeint(sde, y0, TS[::2], bm=bm, method="milstein", dt=step, options=options)
        differences.append(float((reference - ours)[-1].detach().square().mean().sqrt()))
    assert differences[1] > 1e-5  # not equal to round-off
    assert 6.0 < differences[0] / differences[1] < 40.0, differences


@pytest.mark.parametrize(
    ("noise_type", "method"),
    [("diagonal", "milstein"), ("scalar", "milstein"), ("additive", "euler"), ("general", "euler")],
)
def test_the_default_method_is_milstein_or_euler_for_additive_noise(noise_type: str, method: str) -> None:
    sde, y0 = SDE(noise_type), y0_of()
    default = compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), dt=STEP)
    explicit = compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), method=method, dt=STEP)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    other = "euler" if method == "milstein" else None
    if other is not None:  # the two differ here: the default is not Euler--Maruyama
        assert (
            default - compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), method=other, dt=STEP)
        ).abs().max() > 1e-4


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive", "general"])
def test_a_step_that_does_not_divide_the_intervals_follows_torchsdes_grid(noise_type: str) -> None:
    """torchsde steps from ``t0`` by ``dt`` (sums in ``ts``'s dtype), the last step cut at ``ts[-1]``,
    and interpolates the outputs linearly: so does compat, equal to round-off, values and gradients,
    with more output times than steps too. Where the sums fall a few ulps short of ``ts[-1]`` (0.1
    added ten times) the sliver torchsde steps is merged into the step before: 1e-8 apart."""
    dense = torch.linspace(0.0, 1.0, 41, dtype=DT)
    for ts, step, tolerance in ((TS, 0.15, 1e-13), (TS, 0.07, 1e-13), (dense, 0.3, 1e-13), (TS, 0.1, 1e-7)):
        results = []
        for solve in (torchsde.sdeint, compat.sdeint):
            sde, y0 = SDE(noise_type), y0_of().requires_grad_()
            ys = solve(sde, y0, ts, bm=brownian(sde, 2), method="euler", dt=step)
            results.append(values_and_gradients(ys, sde, y0))
        for expected, got in zip(*results, strict=True):
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    float32 = []
    for solve in (torchsde.sdeint, compat.sdeint):
        sde = SDE(noise_type).float()
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(2, sde.brownian_channels), entropy=3, dt=STEP)
        float32.append(solve(sde, y0_of().float(), TS.float(), bm=bm, method="euler", dt=0.1))
    assert float32[1].dtype == torch.float32
    torch.testing.assert_close(float32[1], float32[0], rtol=1e-6, atol=1e-6)


def test_integer_ts_are_solved_on_torchsdes_grid_of_them() -> None:
    """An integer ``ts`` tensor (torchsde takes one; its grid is ``ts[0] + k dt`` in torch's default
    dtype) was torch's 'nextafter_cpu not implemented for Long' with fixed steps."""
    sde = SDE("diagonal").float()
    ts = torch.tensor([0, 2, 5])
    solves = []
    for solve in (torchsde.sdeint, compat.sdeint):
        bm = torchsde.BrownianInterval(0.0, 5.0, size=(2, 3), entropy=5, dt=0.5)
        solves.append(solve(sde, y0_of().float(), ts, bm=bm, method="euler", dt=0.5))
    assert solves[1].shape == (3, 2, 3) and solves[1].dtype == torch.float32
    torch.testing.assert_close(solves[1], solves[0], rtol=1e-6, atol=1e-6)


def test_adaptive_steps_meet_the_tolerance_on_torchsdes_path() -> None:
    """Adaptive Milstein against a fine fixed-step torchsde solve on the same ``BrownianInterval``
    (one object, so every solve reads one path): the tolerance bounds each step's local error, and the
    path's error is about ten times it (7 to 17 times over eight seeds, ``entropy=1``: 7.3), and falls
    with it (6.7 to 15-fold from 1e-2 to 1e-3 over those seeds)."""
    sde, y0 = SDE("diagonal"), y0_of(8)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(8, 3), dtype=DT, entropy=1, dt=2**-10)
    ts = TS[::2]
    loose, tight = (
        compat.sdeint(sde, y0, ts, bm=bm, method="milstein", adaptive=True, rtol=tol, atol=tol, dt=1e-2)
        for tol in (1e-2, 1e-3)
    )
    fine = torchsde.sdeint(sde, y0, ts, bm=bm, method="milstein", dt=2**-10, options={"grad_free": True})
    errors = [float((fine - ys).detach().abs().max()) for ys in (loose, tight)]
    assert errors[1] < 20 * 1e-3, errors
    assert errors[0] > 4 * errors[1], errors


class Recorded(SDE):
    """Records the times of its diffusion's evaluations: the accepted steps' starts (local_reg's
    Milstein evaluates the diffusion at a step's start only, and a rejected step is retried from it)."""

    def __init__(self, noise_type: str) -> None:
        super().__init__(noise_type)
        self.starts: set[float] = set()

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.starts.add(float(t))
        return super().g(t, y)


def test_dt_is_the_first_adaptive_step() -> None:
    sde, y0 = Recorded("diagonal"), y0_of()
    # A tolerance every step meets: the first step is dt, and the next grows from it.
    compat.sdeint(sde, y0, [0.0, 1.0], bm=brownian(sde, 2), adaptive=True, rtol=1e3, atol=1e3, dt=2.0**-7)
    times = sorted(sde.starts)
    assert times[:2] == [0.0, 2.0**-7] and times[2] > 2 * 2.0**-7


def test_dt_min_bounds_the_steps() -> None:
    """At a tolerance no step of ``dt_min`` meets, every step is one of ``dt_min``, accepted whatever its
    error (with a warning, as torchsde's), and the solve ends."""
    sde, y0 = Recorded("diagonal"), y0_of()
    with pytest.warns(UserWarning, match=r"steps were accepted at dt_min=0\.015625 whatever their error"):
        ys = compat.sdeint(
            sde, y0, [0.0, 1.0], bm=brownian(sde, 2), method="milstein", adaptive=True, rtol=1e-9, atol=1e-9,
            dt_min=2.0**-6,
        )  # fmt: skip
    assert ys.shape == (2, 2, 3) and bool(torch.isfinite(ys).all())
    times = sorted(sde.starts)
    assert len(times) == 64
    gaps = torch.tensor(times + [1.0], dtype=DT).diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 2.0**-6))


@pytest.mark.parametrize("name", ["sdeint", "sdeint_adjoint"])
def test_adaptive_euler_with_multiplicative_noise_warns_as_torchsde(name: str) -> None:
    sde, y0 = SDE("diagonal"), y0_of()
    solve = getattr(compat, name)
    with pytest.warns(
        UserWarning, match=rf"local_reg\.compat\.{name}: adaptive Euler--Maruyama with non-additive noise"
    ) as caught:
        solve(sde, y0, TS, bm=brownian(sde, 2), method="euler", adaptive=True, rtol=1e-2, atol=1e-2)
    assert caught[0].filename == __file__  # the user's line, not the library's


class Renamed(nn.Module):
    """torchsde's ``names`` example: the drift and diffusion under other names."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self) -> None:
        super().__init__()
        self.inner = SDE("diagonal")

    def f_(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner.f(t, y)

    def g_(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner.g(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner.g(t, y)  # not the diffusion unless names leaves "diffusion" out


@pytest.mark.parametrize("names", [{"drift": "f_", "diffusion": "g_"}, {"drift": "f_"}])
def test_names_rename_the_drift_and_diffusion(names: dict[str, str]) -> None:
    results = []
    for solve in (torchsde.sdeint, compat.sdeint):
        sde, y0 = Renamed(), y0_of().requires_grad_()
        ys = solve(sde, y0, TS, bm=brownian(sde.inner, 2), method="euler", dt=STEP, names=names)
        results.append(values_and_gradients(ys, sde.inner, y0))
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    # The renamed diffusion is the one solved with: without names the solve is another.
    sde = Renamed()
    sde.f = sde.f_  # an instance attribute: a drift under the usual name
    plain = compat.sdeint(sde, y0_of(), TS, bm=brownian(sde.inner, 2), method="euler", dt=STEP)
    differs = bool((plain - results[1][0]).abs().max() > 1e-3)
    assert differs == ("diffusion" in names)


def test_default_brownian_motion_follows_torchs_seed() -> None:
    sde, y0 = SDE("scalar"), y0_of()
    torch.manual_seed(5)
    first = compat.sdeint(sde, y0, TS, dt=STEP)
    torch.manual_seed(5)
    torch.testing.assert_close(compat.sdeint(sde, y0, TS, dt=STEP), first, rtol=0, atol=0)
    assert first.shape == (len(TS), 2, 3)


UNSUPPORTED = "not supported by local_reg\\.compat\\.sdeint"
REFUSALS = [
    (
        {"method": "srk"},
        ValueError,
        r"method='srk' is not available in local_reg\.compat\.sdeint: .*order 1\.5",
    ),
    ({"method": "euler_heun"}, ValueError, r"method='euler_heun' .*Stratonovich SDEs; local_reg solves Ito"),
    ({"method": "heun"}, ValueError, r"method='heun' .*Stratonovich"),
    ({"method": "midpoint"}, ValueError, r"method='midpoint' .*Stratonovich"),
    ({"method": "reversible_heun"}, ValueError, r"method='reversible_heun' .*Stratonovich"),
    ({"method": "log_ode"}, ValueError, r"method='log_ode' .*general noise"),
    (
        {"method": "euler_maruyama"},
        ValueError,
        r"unknown method 'euler_maruyama'; expected one of \['euler', ",
    ),
    ({"method": 1}, TypeError, r"method must be a str or None, got int"),
    ({"logqp": 1}, TypeError, r"logqp must be a bool, got int"),
    ({"logqp": True}, ValueError, r"logqp=True needs the prior drift: sde \(SDE\) has no method 'h'"),
    (
        {"logqp": True, "names": {"prior_drift": "prior"}},
        ValueError,
        r"names\['prior_drift'\]='prior', but sde \(SDE\) has no method 'prior'",
    ),
    ({"extra": True}, ValueError, rf"extra=True is {UNSUPPORTED}"),
    ({"extra_solver_state": ()}, ValueError, rf"extra_solver_state is {UNSUPPORTED}"),
    (
        {"names": {"prior_drift": "h"}},
        ValueError,
        r"names\['prior_drift'\]='h', but sde \(SDE\) has no method 'h'",
    ),
    (
        {"names": {"drift_and_diffusion": "fg"}},
        ValueError,
        rf"names: \['drift_and_diffusion'\] {UNSUPPORTED}",
    ),
    ({"names": {"drift_and_diffusion_prod": "p"}}, ValueError, r"names: \['drift_and_diffusion_prod'\] not"),
    ({"names": {"drfit": "f"}}, ValueError, r"names: unknown keys \['drfit'\]; expected some of \['drift', "),
    ({"names": {"drift": "h"}}, ValueError, r"names\['drift'\]='h', but sde \(SDE\) has no method 'h'"),
    (
        {"names": {"diffusion": 3}},
        TypeError,
        r"names\['diffusion'\] must be the name of a method of sde, got int",
    ),
    ({"names": ["drift"]}, TypeError, r"names must be a dict, got list"),
    (
        {"options": {"dt_max": 1, "norm": 2}},
        ValueError,
        rf"options: \['dt_max', 'norm'\] {UNSUPPORTED}; supported ",
    ),
    ({"options": {"grad_free": 1}}, TypeError, r"options\['grad_free'\] must be a bool, got int"),
    (
        {"method": "milstein", "options": {"grad_free": False}},
        ValueError,
        r"options\['grad_free'\]=False asks for torchsde's Milstein scheme with the diffusion's derivative",
    ),
    ({"options": "grad_free"}, TypeError, r"options must be a dict, got str"),
    ({"adaptive": 1}, TypeError, r"adaptive must be a bool, got int"),
    ({"dt": 0.0}, ValueError, r"dt must be positive and finite, got 0\.0"),
    ({"adaptive": True, "dt_min": -1.0}, ValueError, r"dt_min must be non-negative and finite, got -1\.0"),
    ({"adaptive": True, "dt_min": 0.0}, ValueError, r"dt_min must be positive and finite, got 0\.0"),
    ({"adaptive": True, "atol": 0.0}, ValueError, r"atol=0: .*torchsde floors that scale at 1e-7.*atol=1e-7"),
    ({"adaptive": True, "atol": -1.0}, ValueError, r"atol must be non-negative and finite, got -1\.0"),
    ({"adaptive": True, "atol": torch.tensor(0.0)}, ValueError, r"atol=0: .*atol=1e-7"),
    # Fixed steps (the default) do not read them, but a bad one is refused as compat.odeint's fixed
    # steps refuse theirs, rather than go unnoticed until the switch to adaptive=True.
    ({"rtol": "a"}, TypeError, r"rtol must be a non-negative float, got str"),
    ({"rtol": float("nan")}, ValueError, r"rtol must be non-negative .*and finite, got nan"),
    ({"rtol": -1.0}, ValueError, r"rtol must be non-negative .*and finite, got -1\.0"),
    ({"atol": "a"}, TypeError, r"atol must be a non-negative float, got str"),
    ({"atol": float("inf")}, ValueError, r"atol must be non-negative and finite, got inf"),
    ({"atol": torch.ones(2)}, TypeError, r"atol must be a non-negative float: one real number"),
    ({"dt_min": None}, TypeError, r"dt_min must be a non-negative float, got NoneType"),
    ({"dt_min": -1.0}, ValueError, r"dt_min must be non-negative and finite, got -1\.0"),
]


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("y0", [[[1.0, 1.0]], np.ones((1, 2))], ids=["list", "ndarray"])
def test_a_y0_that_is_not_a_tensor_is_named_on_the_fixed_grid_too(y0: object, adjoint: bool) -> None:
    """The fixed-step path (torchsde's default) read y0.dtype before y0 was checked: an
    AttributeError or torch's own TypeError, where the adaptive path names y0 as torchsde does."""
    solve = compat.sdeint_adjoint if adjoint else compat.sdeint
    for adaptive in (False, True):
        with pytest.raises(TypeError, match=r"^y0 must be a torch\.Tensor, got "):
            solve(SDE("diagonal"), y0, [0.0, 1.0], adaptive=adaptive)


@pytest.mark.parametrize(("kwargs", "error", "match"), REFUSALS)
def test_refusals_name_the_argument(kwargs: dict, error: type[Exception], match: str) -> None:
    sde = SDE("diagonal")
    with pytest.raises(error, match=match):
        compat.sdeint(sde, y0_of(), TS, bm=brownian(sde, 2), **kwargs)


def test_fixed_steps_take_torchsdes_zero_atol_and_dt_min() -> None:
    """torchsde floors its error scale, so a script may pass atol=0 (and dt_min=0): fixed steps, which
    read neither, solve as with the defaults; only adaptive steps need them positive."""
    sde = SDE("diagonal")
    torch.manual_seed(3)
    default = compat.sdeint(sde, y0_of(), TS, dt=STEP)
    torch.manual_seed(3)
    zeros = compat.sdeint(sde, y0_of(), TS, dt=STEP, atol=0.0, rtol=0.0, dt_min=0.0)
    torch.testing.assert_close(zeros, default, rtol=0, atol=0)


def test_the_adaptive_atol_is_checked_where_the_adaptive_solve_starts() -> None:
    """atol > 0 is an adaptive solve's need: one output time returns y0 as torchsde does, and the
    adaptive Euler--Maruyama warning comes before the refusal (checked up front, it was lost)."""
    sde = SDE("diagonal")
    one = compat.sdeint(sde, y0_of(), TS[:1], adaptive=True, method="milstein", atol=0.0)
    torch.testing.assert_close(one, y0_of().unsqueeze(0), rtol=0, atol=0)
    with (
        pytest.warns(UserWarning, match="adaptive Euler--Maruyama"),
        pytest.raises(ValueError, match="atol=0"),
    ):
        compat.sdeint(sde, y0_of(), TS, bm=brownian(sde, 2), method="euler", adaptive=True, atol=0.0)


def test_local_regs_own_refusals_stand() -> None:
    """Stratonovich SDEs, and general noise beyond fixed Euler--Maruyama steps, are refused by
    local_reg.sdeint itself, naming the SDE's attribute."""
    sde = SDE("diagonal")
    sde.sde_type = "stratonovich"
    with pytest.raises(ValueError, match=r"sde\.sde_type='stratonovich' is not supported"):
        compat.sdeint(sde, y0_of(), TS, bm=brownian(sde, 2))
    sde = SDE("general")
    # Named in torchsde's terms (local_reg.sdeint's own message says step_size and euler_maruyama).
    for kwargs in ({"adaptive": True}, {"method": "milstein"}):
        with pytest.raises(ValueError, match=r"fixed steps of method='euler' only \(adaptive=False, method="):
            compat.sdeint(sde, y0_of(), TS, **kwargs)


def test_an_sde_is_checked_before_compat_evaluates_it_on_a_long_grid() -> None:
    """Over more than one call's grid (the default dt over [0, 1]) compat evaluates the diffusion
    itself, for the Brownian motion it makes: an SDE with only torchsde's ``f_and_g`` failed there
    with an AttributeError, a wrong diffusion shape deeper in; both are named as on a short grid."""

    class DriftAndDiffusionOnly(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f_and_g(self, t, y):
            return -y, 0.1 * y

    class NarrowDiffusion(SDE):
        def g(self, t, y):
            return super().g(t, y)[:, :1]

    for dt in (0.1, 1e-3):  # one call's grid, and several
        with pytest.raises(TypeError, match=r"sde must have methods f\(t, y\) \(drift\) and g\(t, y\)"):
            compat.sdeint(DriftAndDiffusionOnly(), y0_of(), TS, dt=dt)
        with pytest.raises(ValueError, match=r"sde\.g \(diffusion\) returned shape \(2, 1\), but"):
            compat.sdeint(NarrowDiffusion("diagonal"), y0_of(), TS, dt=dt)


def test_one_output_time_is_y0_and_the_times_are_named_ts_as_torchsde() -> None:
    sde, y0 = SDE("diagonal"), y0_of()
    for ts in (torch.tensor([0.3], dtype=DT), [0.3]):
        ours = compat.sdeint(sde, y0, ts)
        torch.testing.assert_close(
            ours, torchsde.sdeint(sde, y0, torch.tensor([0.3], dtype=DT)), rtol=0, atol=0
        )
        assert ours.shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"y0 must have shape \(batch, state\)"):
        compat.sdeint(sde, y0[0], [0.3])
    with pytest.raises(ValueError, match=r"ts must be strictly increasing \(torchsde's too\)"):
        compat.sdeint(sde, y0, [1.0, 0.0])
    # Increasing only, as torchsde: the message offers no decreasing times, refused just above.
    with pytest.raises(ValueError, match=r"ts must be strictly increasing: it holds 0.5 twice$"):
        compat.sdeint(sde, y0, [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"ts must be strictly increasing$"):
        compat.sdeint(sde, y0, [0.0, 0.7, 0.5, 1.0])
    # Even with nothing to solve, the diffusion's and a given Brownian motion's shapes are checked
    # (torchsde refuses both too).
    additive = SDE("additive")
    wrong = brownian(SDE("additive", m=3), batch=2)
    for call in (
        lambda solve: solve(additive, y0, torch.tensor([0.3], dtype=DT), bm=wrong),
        lambda solve: solve(sde, y0, torch.tensor([0.3], dtype=DT), bm=brownian(sde, 5)),
    ):
        with pytest.raises(ValueError):
            call(torchsde.sdeint)
        with pytest.raises(ValueError, match=r"bm has shape|sde\.g"):
            call(compat.sdeint)

    class BadDiffusion(SDE):
        def g(self, t, y):
            return super().g(t, y)[:, :1]

    with pytest.raises(ValueError, match=r"sde\.g"):
        compat.sdeint(BadDiffusion("diagonal"), y0, [0.3])


def test_grad_free_is_accepted_where_it_changes_nothing() -> None:
    # With method=None torchsde runs srk, which ignores grad_free: so does the default here.
    sde = SDE("diagonal")
    default = compat.sdeint(sde, y0_of(), TS, bm=brownian(sde, 2), dt=STEP, options={"grad_free": False})
    torch.testing.assert_close(
        default, compat.sdeint(sde, y0_of(), TS, bm=brownian(sde, 2), dt=STEP), rtol=0, atol=0
    )
    sde, y0 = SDE("additive"), y0_of()
    # Milstein on additive noise: torchsde turns grad_free off itself; so does local_reg (no term).
    compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), method="milstein", dt=STEP, options={"grad_free": False})
    with pytest.warns(UserWarning, match=r"options\['grad_free'\] is ignored by Euler--Maruyama"):
        compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), method="euler", dt=STEP, options={"grad_free": True})


@pytest.mark.parametrize("name", ["sdeint", "sdeint_adjoint"])
def test_exported_from_compat(name: str) -> None:
    assert name in compat.__all__
    ours = getattr(compat, name)
    assert ours is not local_reg.sdeint
    parameters = inspect.signature(ours).parameters
    reference = inspect.signature(getattr(torchsde, name)).parameters
    assert [name for name in reference if name != "unused_kwargs"] == list(parameters)
    for name, parameter in parameters.items():
        assert parameter.default == reference[name].default, name


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sdeint_adjoint_is_the_exact_gradient_of_the_solve(noise_type: str, adaptive: bool) -> None:
    """sdeint_adjoint runs local_reg's checkpoint gradient: the solve's own gradient, backpropagated
    (torchsde's sdeint on fixed steps, to round-off), with no graph kept by the forward solve."""
    sde = SDE(noise_type)
    y0 = y0_of().requires_grad_(True)
    steps = {"adaptive": True, "rtol": 1e-3, "atol": 1e-3, "dt": 0.05} if adaptive else {"dt": STEP}
    inputs = (y0, *sde.parameters())

    def gradient_of(solve, **keywords):
        ys = solve(sde, y0, TS, bm=brownian(sde, 2), method="euler", **steps, **keywords)
        return ys, torch.autograd.grad((ys**2).sum(), inputs, allow_unused=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # adaptive Euler--Maruyama's bias warning
        ys, got = gradient_of(compat.sdeint_adjoint, adjoint_method="euler")
        _, expected = gradient_of(compat.sdeint)
        references = [gradient_of(torchsde.sdeint)[1]] if not adaptive else []
    nodes, seen = [ys.grad_fn], {}
    while nodes:  # the outputs are read from the solve's grid by torchsde's linear interpolation
        node = nodes.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = type(node).__name__
            nodes.extend(next_node for next_node, _ in node.next_functions)
    assert "_SolveWithoutGraphBackward" in seen.values()
    for reference in (expected, *references):
        for a, b in zip(got, reference, strict=True):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sdeint_adjoint_settings_of_a_backward_solve_are_ignored_with_a_warning() -> None:
    sde, y0 = SDE("diagonal"), y0_of().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the backward "as the forward": nothing to say
        compat.sdeint_adjoint(sde, y0, TS, method="euler", adjoint_method="euler", dt=STEP, adjoint_rtol=1e-5)
    with pytest.warns(UserWarning, match=r"ignores \['adjoint_method', 'adjoint_atol'\]"):
        compat.sdeint_adjoint(
            sde, y0, TS, method="euler", adjoint_method="milstein", dt=STEP, adjoint_atol=1e-2
        )
    # An adjoint method naming the forward's scheme (method=None is Milstein on diagonal noise,
    # torchsde's default adjoint method there), and {} for torchsde's None: nothing to say either.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.sdeint_adjoint(sde, y0, TS, adjoint_method="milstein", adjoint_options={}, dt=STEP)
    # torchsde's adjoint-friendly reversible Heun is a Stratonovich scheme, refused for an Ito SDE.
    with pytest.raises(ValueError, match="Stratonovich"):
        compat.sdeint_adjoint(sde, y0, TS, method="reversible_heun")
    with pytest.raises(ValueError):
        torchsde.sdeint_adjoint(sde, y0, TS, method="reversible_heun")


def test_sdeint_adjoint_messages_name_it_and_its_advice() -> None:
    """Its refusals name sdeint_adjoint (they named compat.sdeint, whose body it shares), a refused
    call draws no warning on the way, and the checkpoint gradient's advice is torchsde's pair."""
    sde, y0 = SDE("diagonal"), y0_of().requires_grad_(True)
    with pytest.raises(ValueError, match=r"not supported by local_reg\.compat\.sdeint_adjoint: its"):
        compat.sdeint_adjoint(sde, y0, TS, extra=True)
    with pytest.raises(ValueError, match=r"not available in local_reg\.compat\.sdeint_adjoint"):
        compat.sdeint_adjoint(sde, y0, TS, method="srk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "ignores" warning would be raised instead
        with pytest.raises(ValueError, match="Stratonovich"):
            compat.sdeint_adjoint(sde, y0, TS, method="reversible_heun", adjoint_atol=1e-2)
    with pytest.raises(
        RuntimeError, match=r"use gradient='direct' \(in local_reg\.compat: sdeint, not sdeint_adjoint"
    ):
        torch.autograd.functional.hessian(
            lambda y: compat.sdeint_adjoint(sde, y, TS, bm=brownian(sde, 2), method="euler", dt=STEP).sum(),
            y0_of(),
        )


def test_sdeint_adjoint_of_an_sde_that_is_no_module_needs_adjoint_params() -> None:
    rate = torch.tensor(-0.5, dtype=DT, requires_grad=True)

    class Plain:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return rate * y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    with pytest.raises(ValueError, match="adjoint_params"):
        compat.sdeint_adjoint(Plain(), y0_of(), TS, method="euler", dt=STEP)
    bm = brownian(SDE("diagonal"), 2)
    ys = compat.sdeint_adjoint(Plain(), y0_of(), TS, bm=bm, method="euler", dt=STEP, adjoint_params=[rate])
    got = torch.autograd.grad(ys.sum(), rate)[0]
    expected = torch.autograd.grad(
        compat.sdeint(Plain(), y0_of(), TS, bm=bm, method="euler", dt=STEP).sum(), rate
    )[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_a_brownian_motion_over_a_python_float_span_covers_float32_times() -> None:
    # torch.linspace(0, 0.3, 4) ends at 0.30000001 in float32: torchsde queries the interval there
    # (warning tb > t1); the solve here clamps the query onto it and neither refuses nor warns.
    sde = SDE("diagonal")
    y0 = y0_of().float()
    sde = sde.float()
    ts = torch.linspace(0.0, 0.3, 4)
    bm = torchsde.BrownianInterval(t0=0.0, t1=0.3, size=(2, 3), entropy=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = compat.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's own "tb <= t1" warning
        theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=0.01)
    assert ours.shape == theirs.shape == (4, 2, 3)
    # Different grids (torchsde's sums of 0.01 round), one Brownian path: close, not equal.
    assert float((ours - theirs).detach().abs().max()) < 0.05
    # A span beyond the interval by more than float32 rounding stays refused, and float64 times,
    # which round nothing, must lie inside it (their noise past its end would be zero).
    with pytest.raises(ValueError, match=r"bm covers \[0\.0, 0\.3\] but the solve needs"):
        compat.sdeint(sde, y0, torch.linspace(0.0, 0.31, 4), bm=bm, method="euler", dt=0.01)
    bm64 = torchsde.BrownianInterval(t0=0.0, t1=0.3, size=(2, 3), dtype=DT, entropy=5)
    for times in (torch.tensor([0.0, 0.3 + 1e-9], dtype=DT), [0.0, 0.3 + 1e-9]):
        with pytest.raises(
            ValueError, match=r"bm covers \[0\.0, 0\.3\] but the solve needs \[0\.0, 0\.300000001\]"
        ):
            compat.sdeint(SDE("diagonal"), y0_of(), times, bm=bm64, method="euler", dt=0.01)


def test_messages_a_torchsde_user_can_act_on() -> None:
    sde = SDE("diagonal")
    sde.sde_type = "stratonovich"
    # Whatever the method: torchsde's default for it is a Stratonovich scheme.
    with pytest.raises(
        ValueError, match=r"sde_type='stratonovich' is not supported.*sum_\{l,j\} g_lj dg_kj/dy_l / 2"
    ):
        compat.sdeint(sde, y0_of(), TS)
    sde = SDE("diagonal")
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(2, 3), dtype=torch.float32, entropy=1)
    with pytest.raises(
        TypeError, match=r"bm returned dtype torch.float32, .*make the Brownian motion with dtype=y0.dtype"
    ):
        compat.sdeint(sde, y0_of(), TS, bm=bm, dt=STEP)


def test_sdeint_adjoint_of_a_renamed_module_sde_finds_its_parameters() -> None:
    """With names, the SDE solved is a wrapper of the module: its parameters are still the
    default adjoint_params, as in torchsde."""

    class Named(SDE):
        def f_(self, t, y):
            return super().f(t, y)

        def g_(self, t, y):
            return super().g(t, y)

    sde = Named("diagonal")
    names = {"drift": "f_", "diffusion": "g_"}
    y0 = y0_of().requires_grad_(True)
    inputs = (y0, sde.a, sde.b)
    results = []
    for solve in (compat.sdeint_adjoint, compat.sdeint):
        ys = solve(sde, y0, TS, bm=brownian(sde, 2), method="euler", dt=STEP, names=names)
        results.append(torch.autograd.grad((ys**2).sum(), inputs))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class PriorSDE(SDE):
    """``SDE`` with a prior drift ``h`` (its own parameter), for ``logqp=True``."""

    def __init__(self, noise_type: str) -> None:
        super().__init__(noise_type)
        self.p = nn.Parameter(torch.tensor([-0.5, 0.2, -0.1], dtype=DT))

    def h(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.p * y


def logqp_brownian(sde: SDE, batch: int) -> object:
    """torchsde's logqp SDE has one more state component: diagonal noise, one more channel."""
    channels = sde.brownian_channels + (sde.noise_type == "diagonal")
    return torchsde.BrownianInterval(0.0, 1.0, size=(batch, channels), dtype=DT, entropy=5, dt=STEP)


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive", "general"])
def test_logqp_returns_torchsdes_states_log_ratios_and_gradients(noise_type: str) -> None:
    """Fixed Euler steps on one Brownian path: the states, the increments of log(q/p) between output
    times and their gradients are torchsde's to round-off, under sdeint and sdeint_adjoint alike."""
    sde = PriorSDE(noise_type)
    y0 = y0_of().requires_grad_(True)
    inputs = (y0, *sde.parameters())
    results = []
    for solve in (torchsde.sdeint, compat.sdeint, compat.sdeint_adjoint):
        ys, log_ratio = solve(sde, y0, TS, bm=logqp_brownian(sde, 2), method="euler", dt=STEP, logqp=True)
        loss = ys.square().sum() + (log_ratio * torch.arange(1, len(TS), dtype=DT).unsqueeze(1)).sum()
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # c: additive and general only
        results.append((ys, log_ratio, [torch.zeros(()) if g is None else g for g in grads]))
    (ys, log_ratio, grads), *ours = results
    assert ys.shape == (len(TS), 2, 3) and log_ratio.shape == (len(TS) - 1, 2)
    assert (log_ratio > 0).all()
    for our_ys, our_log_ratio, our_grads in ours:
        torch.testing.assert_close(our_ys, ys, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(our_log_ratio, log_ratio, rtol=1e-12, atol=1e-13)
        for a, b in zip(our_grads, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class CountingPriorSDE(PriorSDE):
    """``PriorSDE`` counting its drift and diffusion evaluations."""

    def __init__(self, noise_type: str) -> None:
        super().__init__(noise_type)
        self.calls = {"f": 0, "g": 0}

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls["f"] += 1
        return super().f(t, y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls["g"] += 1
        return super().g(t, y)


@pytest.mark.parametrize("solve", [compat.sdeint, compat.sdeint_adjoint])
def test_logqp_evaluates_the_diffusion_once_per_step(solve) -> None:
    """The KL integrand needs the diffusion where the drift is evaluated, at each step's start,
    and the solver evaluates the diffusion there too: the user's g ran twice per step (forward and
    in sdeint_adjoint's re-run), torchsde's once. Values and gradients are torchsde's (above)."""
    sde = CountingPriorSDE("diagonal")
    y0 = y0_of().requires_grad_(True)
    ys, log_ratio = solve(sde, y0, TS, bm=logqp_brownian(sde, 2), method="euler", dt=STEP, logqp=True)
    steps = sde.calls["f"]
    assert steps >= round(float(TS[-1] - TS[0]) / STEP)
    assert sde.calls["g"] == steps
    sde.calls.update(f=0, g=0)
    (ys.square().sum() + log_ratio.sum()).backward()
    assert sde.calls["g"] == sde.calls["f"]
    # A long grid is solved in calls of 128 steps: each call's first evaluation too (it evaluated
    # the diffusion twice there, the two times made apart).
    sde.calls.update(f=0, g=0)
    long_ts, step = torch.tensor([0.0, 0.37, 1.1], dtype=DT), 1e-3
    bm = torchsde.BrownianInterval(0.0, 1.1, size=(2, 4), dtype=DT, entropy=4, dt=step)
    with torch.no_grad():
        solve(sde, y0_of(), long_ts, bm=bm, method="euler", dt=step, logqp=True)
    assert sde.calls["g"] == sde.calls["f"] > 1000


@pytest.mark.parametrize("adaptive", [False, True])
def test_logqp_of_a_constant_drift_gap_is_its_kl_rate_times_the_interval(adaptive: bool) -> None:
    """With f - h = c and a constant diagonal g, log(q/p) grows at |c / g|^2 / 2 on every path:
    each increment is that rate times its interval, whatever the scheme's steps."""
    c, g = torch.tensor([0.3, -0.6], dtype=DT), torch.tensor([0.5, 0.2], dtype=DT)

    class Gap(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.sin(y) + c

        def g(self, t, y):
            return g.expand_as(y)

        def h(self, t, y):
            return torch.sin(y)

    ts = torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    steps = {"adaptive": True, "rtol": 1e-4, "atol": 1e-4, "dt": 0.05} if adaptive else {"dt": 0.1}
    ys, log_ratio = compat.sdeint(
        Gap(), torch.zeros(4, 2, dtype=DT), ts, method="milstein", logqp=True, **steps
    )
    expected = 0.5 * (c / g).square().sum() * ts.diff()
    torch.testing.assert_close(log_ratio, expected.unsqueeze(1).expand(-1, 4), rtol=1e-12, atol=1e-14)
    assert ys.shape == (3, 4, 2) and ys[1:].std() > 0  # the states did move along a Brownian path


def test_logqp_with_a_renamed_prior_drift_and_a_plain_sde() -> None:
    """names={'prior_drift': ...} names h; a renamed module SDE keeps its parameters under
    sdeint_adjoint, and an SDE that is no module needs adjoint_params there, as torchsde's."""

    class Renamed(PriorSDE):
        def prior(self, t, y):
            return -y

    sde = Renamed("diagonal")
    y0 = y0_of().requires_grad_(True)
    names = {"drift": "f", "prior_drift": "prior"}
    grads = []
    for solve in (torchsde.sdeint, compat.sdeint, compat.sdeint_adjoint):
        _, log_ratio = solve(
            sde, y0, TS, bm=logqp_brownian(sde, 2), dt=STEP, method="euler", names=names, logqp=True
        )
        grads.append(torch.autograd.grad(log_ratio.sum(), (y0, sde.a, sde.b)))
    for ours in grads[1:]:
        for a, b in zip(ours, grads[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    class Plain:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return torch.ones_like(y)

        def h(self, t, y):
            return 0 * y

    with pytest.raises(ValueError, match=r"sdeint_adjoint needs the parameters of sde, but sde is not a"):
        compat.sdeint_adjoint(Plain(), y0_of(), TS, dt=STEP, method="euler", logqp=True)
    ys, log_ratio = compat.sdeint(Plain(), y0_of(), TS[:1], logqp=True)  # one time: nothing between
    assert ys.shape == (1, 2, 3) and log_ratio.shape == (0, 2)


def test_logqp_floors_a_small_diffusion_as_torchsde_and_checks_its_shapes() -> None:
    """torchsde's stable division: |g| below 1e-7 is taken as 1e-7 with its sign, so a diffusion of
    1e-9 gives torchsde's (large, finite) log ratio; a prior drift of the wrong shape and a
    Brownian motion without the log ratio's channel are named."""

    class Faint(PriorSDE):
        def g(self, t, y):
            return self.b * torch.cos(y) * torch.tensor([1.0, 1e-9, 1.0], dtype=DT)

    sde, y0 = Faint("diagonal"), y0_of()
    ours, theirs = (
        solve(sde, y0, TS, bm=logqp_brownian(sde, 2), method="euler", dt=STEP, logqp=True)[1]
        for solve in (compat.sdeint, torchsde.sdeint)
    )
    assert bool(torch.isfinite(theirs).all()) and theirs.max() > 1e9
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"logqp=True solves one more state component.*shape \(2, 4\)"):
        compat.sdeint(sde, y0, TS, bm=brownian(sde, 2), dt=STEP, logqp=True)
    sde.h = lambda t, y: y[:, :1]
    with pytest.raises(ValueError, match=r"the prior drift h returned \(2, 1\), the drift f \(2, 3\)"):
        compat.sdeint(sde, y0, TS, dt=STEP, logqp=True)
    with pytest.raises(ValueError, match=r"sde \(SDE\) has no method 'h' \(define h"):
        compat.sdeint(SDE("diagonal"), y0, TS, dt=STEP, names={"drift": "f"}, logqp=True)
    # What sdeint checks is checked on what was given, not on its extension by log(q/p): a list y0
    # and a 1-D one were "y0 must be a tensor of shape (batch, d)", a class failed inside f.
    for bad_sde, bad_y0, error, match in (
        (sde, y0.tolist(), TypeError, "y0 must be a torch.Tensor, got list"),
        (sde, y0[0], ValueError, r"y0 must have shape \(batch, state\) as in torchsde, got shape \(3,\)"),
        (Faint, y0, TypeError, r"sde must be an SDE instance, got the class Faint: pass Faint\(\)"),
    ):
        with pytest.raises(error, match=match):
            compat.sdeint(bad_sde, bad_y0, TS, dt=STEP, logqp=True)


def test_a_torchsde_script_runs_with_compat_imported_as_torchsde() -> None:
    """torchsde's examples subclass torchsde.SDEIto and make torchsde.BrownianInterval: compat
    gives torchsde's own, so swapping the import runs them (the names it lacks are named)."""
    import local_reg.compat as ported

    class Example(ported.SDEIto):
        def __init__(self) -> None:
            super().__init__(noise_type="diagonal")
            self.theta = nn.Parameter(torch.tensor([0.5, -0.3], dtype=DT))

        def f(self, t, y):
            return self.theta * y

        def g(self, t, y):
            return 0.2 * torch.cos(y)

    y0 = torch.ones(3, 2, dtype=DT)
    ys = []
    for module in (ported, torchsde):
        bm = module.BrownianInterval(0.0, 1.0, size=(3, 2), dtype=DT, entropy=7, dt=STEP)
        ys.append(module.sdeint(Example(), y0, TS, bm=bm, method="euler", dt=STEP))
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-12, atol=1e-13)
    assert ported.BrownianTree is torchsde.BrownianTree
    assert {"BrownianInterval", "SDEIto", "sdeint", "odeint"} <= set(dir(ported))
    with pytest.raises(AttributeError, match=r"has no attribute 'BrownianMotion' \(it has \['METHODS'"):
        ported.BrownianMotion  # noqa: B018


@pytest.mark.parametrize("solve", ["sdeint", "sdeint_adjoint"])
def test_a_long_grid_is_solved_in_calls_and_still_equals_torchsde(solve: str) -> None:
    """1,100 steps read at three times: compat solves the grid in calls of a few hundred steps,
    keeping only the states its interpolation reads; the values and gradients are torchsde's (its
    own Brownian interval given), and with none given one Brownian path serves every call
    (torch.manual_seed repeats it; a path drawn per call would make each call's path independent)."""
    from local_reg._compat_sde import _GRID_CHUNK
    from local_reg.sde.brownian import make_brownian

    ts, step = torch.tensor([0.0, 0.37, 1.1], dtype=DT), 1e-3
    assert round(1.1 / step) > 4 * _GRID_CHUNK
    results = []
    for solver in (torchsde.sdeint, getattr(compat, solve)):
        sde, y0 = SDE("diagonal"), y0_of().requires_grad_()
        bm = torchsde.BrownianInterval(0.0, 1.1, size=(2, 3), dtype=DT, entropy=4, dt=step)
        results.append(values_and_gradients(solver(sde, y0, ts, bm=bm, method="euler", dt=step), sde, y0))
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    again = []
    for _ in range(2):
        torch.manual_seed(5)
        again.append(getattr(compat, solve)(SDE("diagonal"), y0_of(), ts, method="euler", dt=step).detach())
    torch.testing.assert_close(again[0], again[1], rtol=0, atol=0)
    # One path throughout, made as local_reg.sdeint makes its own: given, it gives the same solve.
    torch.manual_seed(5)
    bm = make_brownian(None, 0.0, 1.1, (2, 3), y0_of(), step=step)
    given = getattr(compat, solve)(SDE("diagonal"), y0_of(), ts, bm=bm, method="euler", dt=step)
    torch.testing.assert_close(given.detach(), again[0], rtol=0, atol=0)


def test_a_long_grid_without_a_brownian_motion_evaluates_the_drift_once_per_step() -> None:
    """Sizing its Brownian motion, compat evaluated the drift at ts[0] too, one evaluation beyond
    the grid's steps (its diffusion gives the size); with a bm given there was none."""
    from local_reg._compat_sde import _GRID_CHUNK

    ts, step = torch.tensor([0.0, 0.37, 1.1], dtype=DT), 1e-3
    assert round(1.1 / step) > _GRID_CHUNK
    counts = []
    for with_bm in (True, False):
        sde = CountingPriorSDE("diagonal")
        bm = (
            torchsde.BrownianInterval(0.0, 1.1, size=(2, 3), dtype=DT, entropy=4, dt=step)
            if with_bm
            else None
        )
        with torch.no_grad():
            compat.sdeint(sde, y0_of(), ts, bm=bm, method="euler", dt=step)
        counts.append(sde.calls["f"])
    # One per step of torchsde's grid (1,100 steps of 1e-3 summed in float64 end short of 1.1: a sliver).
    assert counts[1] == counts[0] in (1100, 1101)


def test_a_float32_state_with_float64_times_runs_and_stays_float32() -> None:
    """torchsde sums the grid in ts's dtype (float64 here); points the float32 drift cannot tell
    apart (a last step of a few float64 ulps) are merged rather than refused, and the states keep
    y0's dtype (the interpolation's weights are ts's)."""
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    step = 1.0 / 59 * (1 + 3e-16)  # its float64 sums end 1.1e-15 short of 1: 5 ulps, one float32 value
    ys = []
    for solve in (torchsde.sdeint, compat.sdeint):
        sde = SDE("diagonal").float()
        bm = torchsde.BrownianInterval(0.0, 1.0, size=(2, 3), dtype=torch.float32, entropy=2)
        ys.append(solve(sde, y0_of().float(), ts, bm=bm, method="euler", dt=step).detach())
    assert ys[1].dtype == torch.float32
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"dt=1 is too short at t=100000056.0: a step of at most 4 float64"):
        compat.sdeint(SDE("diagonal").float(), y0_of().float(), torch.tensor([1e8, 1e8 + 64]), dt=1.0)
    with pytest.raises(ValueError, match=r"dt=3.+e-10 is too short at t=1000000.0"):
        compat.sdeint(SDE("diagonal"), y0_of(), torch.tensor([1e6, 1e6 + 1e-8], dtype=DT), dt=1.5 * 2.0**-32)
    # Too short only far from ts[0] = 0: refused at once, not after building 1e17 grid points.
    for times, where in (([0.0, 1.0], "0.9999999999999999"), ([-1.0, 0.5], "-1.0")):
        with pytest.raises(ValueError, match=rf"dt=1e-17 is too short at t={where}: a step of at most 4"):
            compat.sdeint(SDE("diagonal"), y0_of(), torch.tensor(times, dtype=DT), dt=1e-17)
    # Judged where the grid's points are, below ts[-1] = 1 (whose own ulps are twice theirs): a dt
    # the loop takes there is not refused for being short at 1 itself.
    near_one = compat.sdeint(SDE("diagonal"), y0_of(), torch.tensor([1 - 1e-14, 1.0], dtype=DT), dt=6e-16)
    assert near_one.shape == (2, *y0_of().shape)


def test_merged_grid_points_keep_torchsdes_step_count() -> None:
    """float64 times a float32 drift cannot resolve (dt below float32's spacing at 1000): the points
    it sees as one are merged and the merged interval takes all of torchsde's steps in it, so both
    take as many steps and end within float32 round-off (a time-independent drift)."""

    class Counting(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def f(self, t, y):
            self.calls += 1
            return -3.0 * y

        def g(self, t, y):
            return 0.5 * torch.ones_like(y)

    ts = torch.linspace(1000.0, 1000.01, 3, dtype=DT)
    for step in (1e-5, 3e-5):
        runs = []
        for solve in (torchsde.sdeint, compat.sdeint):
            sde = Counting()
            bm = torchsde.BrownianInterval(1000.0, 1000.01, size=(1, 1), dtype=torch.float32, entropy=1)
            runs.append((solve(sde, torch.ones(1, 1), ts, bm=bm, method="euler", dt=step)[-1], sde.calls))
        (theirs, their_calls), (ours, our_calls) = runs
        assert our_calls == their_calls - 1  # torchsde evaluates the drift once more, at the start
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_long_grid_keeps_only_a_calls_states_at_once() -> None:
    """Under no_grad the states held during a 2,560-step solve read at 11 times stay within a few
    calls' worth (torchsde's keeps none but its outputs): a call's states are released before the
    next, and the ones interpolation reads are copies, not views of their call's."""

    from local_reg._compat_sde import _GRID_CHUNK

    shape = (7, 5)  # no other live tensor of the test has it
    peak = 0

    class Counting(nn.Module):
        noise_type, sde_type = "diagonal", "ito"
        calls = 0

        def f(self, t, y):
            nonlocal peak
            self.calls += 1
            if self.calls % 64 == 0:
                # States and stacks of them, counted by the memory they hold (a view holds its base's).
                storages = {
                    o.untyped_storage().data_ptr(): o.untyped_storage().nbytes()
                    for o in live_objects(torch.Tensor)
                    if o.shape[-2:] == shape
                }
                peak = max(peak, sum(storages.values()) // (7 * 5 * 8))
            return -y

        def g(self, t, y):
            return 0.5 * torch.ones_like(y)

    with torch.no_grad():
        compat.sdeint(
            Counting(), torch.ones(shape, dtype=DT), torch.linspace(0, 1, 11, dtype=DT), dt=1 / 2560
        )
    assert 0 < peak <= 3 * _GRID_CHUNK + 40, peak


@given(
    noise_type=st.sampled_from(["diagonal", "scalar", "additive", "general"]),
    start=st.floats(-3.0, 3.0),
    gaps=st.lists(st.floats(0.01, 0.7), min_size=1, max_size=5),
    step=st.floats(0.003, 0.8),
    float32=st.booleans(),
)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
def test_fixed_steps_equal_torchsde_on_any_grid(noise_type, start, gaps, step, float32) -> None:
    """Any output times and dt: compat's fixed steps are torchsde's to round-off, values and the
    gradient w.r.t. y0 (a last sliver of torchsde's grid, merged here, within 1e-6)."""
    dtype = torch.float32 if float32 else DT
    ts = torch.tensor([start, *(start + torch.tensor(gaps, dtype=DT).cumsum(0)).tolist()], dtype=dtype)
    results = []
    for solve in (torchsde.sdeint, compat.sdeint):
        sde = SDE(noise_type).to(dtype)
        y0 = y0_of().to(dtype).requires_grad_()
        bm = torchsde.BrownianInterval(
            float(ts[0]), float(ts[-1]), size=(2, sde.brownian_channels), dtype=dtype, entropy=9
        )
        ys = solve(sde, y0, ts, bm=bm, method="euler", dt=step)
        results.append((ys.detach(), torch.autograd.grad(ys.square().sum(), y0)[0]))
    grid = ts[0]
    while grid + step < ts[-1]:
        grid = grid + step
    sliver = float(ts[-1] - grid) <= 4 * torch.finfo(dtype).eps * max(1.0, float(ts[-1].abs()))
    tolerance = 1e-6 if sliver or float32 else 1e-11
    for ours, theirs in zip(results[1], results[0], strict=True):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def test_warnings_point_at_the_users_line_on_every_path() -> None:
    """The library's warnings are attributed to the user's line: the dropout warning of a
    graph-free gradient's re-run, reached through local_reg.sdeint, compat.sdeint_adjoint, odeint
    and a regularized model alike (a fixed stacklevel pointed inside compat on the compat path,
    inside the library for the model)."""

    class Dropping(PriorSDE):
        def __init__(self) -> None:
            super().__init__("diagonal")
            self.dropout = nn.Dropout(0.1)

    sde, y0 = Dropping(), y0_of().requires_grad_()

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1)).double()

        def forward(self, t, y):
            return self.net(y)

    field = Field()
    calls = (
        lambda: local_reg.sdeint(sde, y0, [0.0, 0.5], step_size=0.1, gradient="checkpoint"),
        lambda: compat.sdeint_adjoint(sde, y0, TS, dt=STEP, method="euler"),
        lambda: local_reg.odeint(field, y0, [0.0, 1.0], method="rk4", step_size=0.25, gradient="adjoint"),
        # Through nn.Module.__call__ (torch's frame between the model and the library).
        lambda: local_reg.Regularized(field, gradient="adjoint", method="rk4", options={"step_size": 0.25})(
            y0, TS[:2]
        ),
    )
    for call in calls:
        with pytest.warns(UserWarning, match="dropout") as caught:
            call()
        assert [w.filename for w in caught if "dropout" in str(w.message)] == [__file__]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("solve", ["sdeint", "sdeint_adjoint"])
def test_times_and_steps_that_require_grad_are_refused_as_torchsde_refuses_them(solve, adaptive) -> None:
    """torchsde refuses a ``ts`` (and ``dt``, ``rtol``, ``atol``, ``dt_min``) that requires grad;
    the fixed-step grid here detached ``ts`` and its gradient was none, silently (a learned
    observation time trained nothing)."""
    sde, y0 = SDE("diagonal"), torch.ones(4, 3, dtype=DT)
    entry = getattr(compat, solve)
    with pytest.raises(ValueError, match=r"ts requires grad.*pass ts\.detach\(\)"):
        entry(
            sde, y0, torch.tensor([0.0, 0.5, 1.0], dtype=DT, requires_grad=True), dt=0.01, adaptive=adaptive
        )
    for name in ("dt", "rtol", "atol", "dt_min"):
        value = torch.tensor(
            {"dt": 0.01, "rtol": 1e-3, "atol": 1e-3, "dt_min": 1e-4}[name], requires_grad=True
        )
        with pytest.raises(ValueError, match=f"{name} requires grad"):
            entry(sde, y0, [0.0, 1.0], **{"dt": 0.01, name: value}, adaptive=adaptive)


class _BlowUp(nn.Module):
    sde_type, noise_type = "ito", "diagonal"

    def f(self, t, y):
        return y**2

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


def test_an_adaptive_solve_that_turns_non_finite_is_an_assertion_as_torchsdes() -> None:
    """torchsde asserts on a NaN error estimate ("Found nans in the error estimate"); code catching
    its AssertionError did not catch compat's SolverError, which also named local_reg's min_step
    for the dt_min the caller passed."""
    y0 = torch.ones(2, 1, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AssertionError, match=r"dt_min=1e-05") as caught:
            compat.sdeint(_BlowUp(), y0, [0.0, 2.0], dt=0.01, adaptive=True, method="milstein")
        # On a path of fixed entropy: on some others torchsde's Brownian interval recurses too deep
        # (a RecursionError) before its own assertion.
        bm = torchsde.BrownianInterval(0.0, 2.0, size=(2, 1), dtype=DT, entropy=0)
        with pytest.raises(AssertionError):
            torchsde.sdeint(_BlowUp(), y0, [0.0, 2.0], dt=0.01, adaptive=True, method="milstein", bm=bm)
    assert isinstance(caught.value, local_reg.SolverError)
    assert "min_step" not in str(caught.value)


def test_a_long_grids_user_brownian_motion_is_checked_against_the_whole_span() -> None:
    """Past 128 fixed steps the grid is solved in pieces, each checking bm against its own span: a
    bm over [0, 1] was told the solve needed [0, 1.28], and one made over that, [1.28, 2]."""
    sde, y0 = SDE("diagonal"), torch.zeros(2, 3, dtype=DT)
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=DT)
    for end in (1.0, 1.28):
        bm = torchsde.BrownianInterval(0.0, end, size=(2, 3), dtype=DT, entropy=1)
        with pytest.raises(
            ValueError, match=rf"bm covers \[0\.0, {end}\] but the solve needs \[0\.0, 2\.0\]"
        ):
            compat.sdeint(sde, y0, ts, bm=bm, dt=0.01)
    bm = torchsde.BrownianInterval(0.0, 2.0, size=(2, 3), dtype=DT, entropy=1)
    assert torch.isfinite(compat.sdeint(sde, y0, ts, bm=bm, dt=0.01)).all()
    # float32 times ending at 0.3 rounded up (0.30000001...) are covered by a bm made over [0, 0.3],
    # on a long grid as on a short one (and in torchsde).
    short = torch.linspace(0, 0.3, 4)
    for dt in (0.01, 0.001):
        bm = torchsde.BrownianInterval(0.0, 0.3, size=(2, 3), dtype=torch.float32, entropy=0)
        assert torch.isfinite(compat.sdeint(SDE("diagonal").float(), y0.float(), short, bm=bm, dt=dt)).all()


@pytest.mark.parametrize("with_forward", [False, True])
def test_odeint_refuses_an_sde_behind_a_partial_or_its_bound_call(with_forward):
    """A functools.partial of an SDE (or its bound __call__ or forward) slipped past the refusal:
    torch's "missing forward" without a forward, else the forward's ODE solved with the noise
    dropped without a word."""
    import functools

    class DecaySDE(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.1 * y

    if with_forward:
        DecaySDE.forward = lambda self, t, y: -y
    sde = DecaySDE()
    y0, times = torch.ones(2, 1, dtype=DT), torch.tensor([0.0, 1.0], dtype=DT)
    for func in (
        functools.partial(sde),
        functools.partial(functools.partial(sde)),
        sde.__call__,
        sde.forward,
    ):
        for solve in (local_reg.odeint, compat.odeint):
            with pytest.raises(TypeError, match=r"func is an SDE .* solve it with sdeint"):
                solve(func, y0, times)
    # Its drift alone, bound or partial, is an ODE and solved as one.
    for drift in (sde.f, functools.partial(sde.f), functools.partial(DecaySDE.f, sde)):
        torch.testing.assert_close(local_reg.odeint(drift, y0, times).ys[-1], y0 * np.exp(-1.0))


def test_odeint_solves_the_drift_of_an_sde_whose_call_is_its_drift():
    """A torchsde-style SDE that is not a module may make its call its drift (``__call__ = f``): its
    bound drift was unwrapped as if it were a bound ``__call__`` and refused as the SDE, though the
    refusal's own message tells to pass ``func.f``."""
    import functools

    class CallIsDriftSDE:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.1 * y

        __call__ = f

    sde = CallIsDriftSDE()
    y0, times = torch.ones(2, 1, dtype=DT), torch.tensor([0.0, 1.0], dtype=DT)
    for func in (sde.f, functools.partial(sde.f), sde, sde.__call__):
        torch.testing.assert_close(local_reg.odeint(func, y0, times).ys[-1], y0 * np.exp(-1.0))
        torch.testing.assert_close(compat.odeint(func, y0, times)[-1], y0 * np.exp(-1.0))


def test_odeint_judges_a_compiled_module_by_the_module_it_compiles():
    """``torch.compile``'s wrapper forwards ``f``, ``g`` and ``noise_type`` to the module but has
    neither its ``forward`` nor its ``f`` in its own class: a compiled field whose forward is its
    drift (torchcde's) was refused as an SDE, itself and its bound ``__call__``, while a compiled SDE
    whose forward is not its drift must stay refused."""

    class ForwardIsDrift(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def forward(self, t, y):
            return -y

        f = forward

        def g(self, t, y):
            return 0.1 * y

    class ForwardIsNotDrift(ForwardIsDrift):
        def forward(self, t, y):
            return y

    y0, times = torch.ones(2, 1, dtype=DT), torch.tensor([0.0, 1.0], dtype=DT)
    field = torch.compile(ForwardIsDrift(), backend="eager")
    for func in (field, field.__call__, field.forward):
        torch.testing.assert_close(local_reg.odeint(func, y0, times).ys[-1], y0 * np.exp(-1.0))
        torch.testing.assert_close(compat.odeint(func, y0, times)[-1], y0 * np.exp(-1.0))
    sde = torch.compile(ForwardIsNotDrift(), backend="eager")
    # A compiled module's forward, and a compiled module compiled again, are compiled functions.
    compiled_twice = torch.compile(sde, backend="eager")
    for func in (sde, sde.__call__, sde.forward, compiled_twice):
        for solve in (local_reg.odeint, compat.odeint):
            with pytest.raises(TypeError, match=r"func is an SDE \(ForwardIsNotDrift has f, g"):
                solve(func, y0, times)
