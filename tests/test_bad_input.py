"""Bad input and faults at the public entry points: each gets a specific ValueError/TypeError naming
the argument, or the library's SolverError; never a silent wrong number. References are analytic
solutions or a float64 solve."""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torchdiffeq

import local_reg
import local_reg.compat
from local_reg import (
    BacksolveAdjoint,
    GloballyRegularized,
    LocallyRegularized,
    LocalPenalty,
    Regularized,
    SolverError,
    get_tableau,
    odeint,
    sdeint,
)
from tests.problems import DecaySDE, NetField, failing_backward, live_objects, rotation

GRADIENTS = ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def decay(t, y):
    return -y


class Decay(torch.nn.Module):
    """``dy/dt = -a y`` with a learnable rate: ``y(t) = y0 exp(-a t)``."""

    def __init__(self, rate: float = 1.0, dtype=torch.float64) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(rate, dtype=dtype))

    def forward(self, t, y):
        return -self.rate * y


class DiagonalSDE(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, f=None, g=None) -> None:
        super().__init__()
        self._f = f or (lambda t, y: -y)
        self._g = g or (lambda t, y: 0.1 * y)

    def f(self, t, y):
        return self._f(t, y)

    def g(self, t, y):
        return self._g(t, y)


def fails_after(n_calls: int, good, bad):
    """A field that behaves for ``n_calls`` calls and then returns ``bad(t, y)``."""
    calls = {"n": 0}

    def field(t, y):
        calls["n"] += 1
        return good(t, y) if calls["n"] <= n_calls else bad(t, y)

    return field


# Half precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_naming_the_supported_dtypes(dtype):
    y0 = torch.ones(3, dtype=dtype)
    for call in (
        lambda: odeint(decay, y0, torch.linspace(0, 1, 5)),
        lambda: sdeint(DiagonalSDE(), y0.reshape(1, 3), [0.0, 1.0]),
        lambda: LocallyRegularized(decay)(y0, [0.0, 1.0]),
        lambda: local_reg.step(decay, 0.0, y0, 0.1, "tsit5"),
    ):
        with pytest.raises(TypeError, match="float32 or float64"):
            call()


def test_an_integer_y0_is_refused_with_its_own_hint():
    match = r"floating dtype \(float32 or float64\), got torch.int64: convert it, e.g. y0.float\(\)"
    with pytest.raises(TypeError, match=match):
        odeint(decay, torch.ones(2, dtype=torch.int64), [0.0, 1.0])


def test_a_complex_y0_is_refused_where_it_is_not_solved_naming_odeint():
    y0 = torch.ones(1, 2, dtype=torch.complex128)
    match = (
        r"got torch.complex128: odeint \(and local_reg.compat\) solve a complex y0, the regularized modules"
    )
    for call in (
        lambda: sdeint(DiagonalSDE(), y0, [0.0, 1.0]),
        lambda: LocallyRegularized(decay)(y0, [0.0, 1.0]),
    ):
        with pytest.raises(TypeError, match=match):
            call()
    with pytest.raises(TypeError, match=r"a complex y0 must be complex64 or complex128"):
        odeint(decay, torch.ones(2, dtype=torch.complex32), [0.0, 1.0])


class _ConstantDiagonalSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return torch.ones_like(y)

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_y0_is_refused_before_the_first_step(bad):
    """A field finite at a NaN state (here constant) made the step-size heuristic's dt NaN; every
    trial step was rejected at NaN until ``max_steps``, whose message blamed the tolerances."""
    y0 = torch.tensor([[1.0, bad]], dtype=torch.float64)
    constant = lambda t, y: torch.ones_like(y)  # noqa: E731
    calls = {
        "odeint": lambda: odeint(constant, y0, [0.0, 1.0], max_steps=10**9),
        "tuple": lambda: odeint(
            lambda t, y: (y[0], y[1]), (torch.ones(2, dtype=torch.float64), y0), [0.0, 1.0]
        ),
        "event": lambda: local_reg.odeint_event(constant, y0, 0.0, event_fn=lambda t, y: t - 0.5),
        "sdeint": lambda: sdeint(_ConstantDiagonalSDE(), y0, [0.0, 1.0]),
        "compat": lambda: local_reg.compat.odeint(
            constant, y0, torch.tensor([0.0, 1.0], dtype=torch.float64)
        ),
    }
    for name, call in calls.items():
        # A tuple's tensor is named by its own index.
        named = r"y0\[1\]" if name == "tuple" else "y0"
        with pytest.raises(ValueError, match=rf"{named} must be finite, got 1 non-finite entries"):
            call()


def test_fixed_steps_beyond_max_steps_are_refused_before_the_first_step():
    calls = []

    def counted(t, y):
        calls.append(t)
        return -y

    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"step_size=0\.001 needs 2000 steps .* max_steps=1000: pass max_steps=2000"
    ):
        odeint(counted, y0, [0.0, 1.0, 2.0], method="rk4", step_size=1e-3, max_steps=1000)
    assert len(calls) <= 1  # f(t0, y0) at most, which odeint evaluates first
    solution = odeint(counted, y0, [0.0, 1.0, 2.0], method="rk4", step_size=1e-3, max_steps=2000)
    assert solution.stats.n_steps == 2000


_ADAPTIVE_SETTINGS = [
    ({"controller": local_reg.PIController(max_step=1e-3)}, "controller"),
    ({"first_step": 1e-3}, "first_step"),
    ({"first_step": 1e-3, "controller": local_reg.PIController()}, "first_step and controller"),
]


@pytest.mark.parametrize(
    ("solver", "settings", "named"),
    [("odeint", *case) for case in _ADAPTIVE_SETTINGS]
    + [("sdeint", *case) for case in _ADAPTIVE_SETTINGS]
    + [("odeint", {"norm": lambda error: error.abs().max()}, "norm")],  # sdeint takes no norm
)
def test_settings_of_the_adaptive_steps_beside_a_fixed_step_size_are_refused(solver, settings, named):
    """A fixed step_size took steps of 0.1 beside PIController(max_step=1e-3), and never called a
    norm or read first_step: the settings had no effect, silently."""
    y0 = torch.ones(2, 1, dtype=torch.float64)
    if solver == "odeint":
        solve = functools.partial(odeint, lambda t, y: -y, y0, [0.0, 1.0], method="rk4")
    else:
        solve = functools.partial(sdeint, DecaySDE(), y0, [0.0, 1.0])
    with pytest.raises(ValueError, match=f"^{named} would go unread beside a fixed step_size=0.1"):
        solve(step_size=0.1, **settings)
    assert solve(step_size=0.1).stats.n_steps == 10


def test_beside_fixed_steps_what_is_read_is_kept():
    """An embedded pair estimates every fixed step's error through ``norm`` (the records and a step
    penalty read it); an adaptive backward solve steps with the controller; a regularized model's
    probe reads both. None of these is refused, and each changes what it should."""

    def field(t, y):
        return -(y**3) + torch.sin(3 * t)

    def largest(error):
        return error.abs().max()

    def penalty(result, dt):
        return result.error_estimate * abs(dt)

    y0 = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    fixed = functools.partial(odeint, field, y0, [0.0, 1.0], method="dopri5", step_size=0.25)
    by_norm = fixed(norm=largest, step_penalty=penalty).penalties
    assert not torch.equal(by_norm, fixed(step_penalty=penalty).penalties)
    with pytest.raises(ValueError, match=r"^norm would go unread"):  # rk4 estimates nothing
        odeint(field, y0, [0.0, 1.0], method="rk4", step_size=0.25, norm=largest)
    bounded = local_reg.PIController(max_step=1e-3)
    backward = BacksolveAdjoint(method="dopri5")
    solve = functools.partial(
        odeint, Decay(), y0, [0.0, 1.0], method="rk4", step_size=0.25, gradient=backward
    )
    solve(controller=bounded).ys.sum().backward()  # the backward solve's steps: at most 1e-3
    with pytest.raises(ValueError, match=r"^controller would go unread"):
        solve(controller=bounded, gradient="direct")
    # A regularized model's probe step keeps within the controller's max_step and reads the norm.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh()).double()
    probes = {}
    for name, extra in [("plain", {}), ("max_step", {"controller": local_reg.PIController(max_step=0.01)})]:
        model = LocallyRegularized(
            lambda t, y: net(y),
            method="dopri5",
            penalty="error-dt",
            weight=1.0,
            adjoint_params=tuple(net.parameters()),
            options={"step_size": 0.1, **extra},
        )
        model(y0[None], [0.0, 1.0])
        probes[name] = model.stats.dt_reg
    assert probes["max_step"] == pytest.approx(0.01) and probes["plain"] > 0.02
    # The stiffness probe's step comes from the initial-step heuristic, which reads the norm.
    steps = []
    for extra in ({}, {"norm": largest}):
        model = LocallyRegularized(
            lambda t, y: net(y),
            regularizer="stiffness",
            penalty="error-dt",
            method="rk4",
            adjoint_params=tuple(net.parameters()),
            options={"step_size": 0.1, **extra},
        )
        model(torch.tensor([[0.5, -0.3, 2.0], [0.1, 0.2, -1.0]], dtype=torch.float64), [0.0, 1.0])
        steps.append(model.stats.dt_reg)
    assert steps[0] != steps[1]
    losses = []
    for extra in ({}, {"norm": largest}):
        model = GloballyRegularized(
            lambda t, y: net(y),
            method="dopri5",
            adjoint_params=tuple(net.parameters()),
            options={"step_size": 0.1, **extra},
        )
        model(y0[None], [0.0, 1.0])
        losses.append(float(model.reg_loss.detach()))
    assert losses[0] != losses[1]
    sde = LocallyRegularized(
        DiagonalSDE(),
        penalty="error-dt",
        options={"step_size": 0.1, "controller": local_reg.PIController(max_step=1e-3)},
    )
    sde(torch.ones(2, 1, dtype=torch.float64), [0.0, 1.0])
    assert sde.stats.dt_reg == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("make", "unread"),
    [
        (lambda options: local_reg.RNODERegularized(Decay(), method="rk4", options=options), "controller"),
        (lambda options: local_reg.TayNODERegularized(Decay(), method="rk4", options=options), "norm"),
        (lambda options: local_reg.SteerRegularized(Decay(), b=0.05, method="rk4", options=options), "norm"),
        (lambda options: LocallyRegularized(Decay(), method="rk4", options=options), "controller"),  # kinetic
        (lambda options: LocallyRegularized(DiagonalSDE(), options=options), "controller"),
        (lambda options: GloballyRegularized(Decay(), method="dopri5", options=options), "controller"),
        (lambda options: Regularized(Decay(), None, method="rk4", options=options), "controller"),
    ],
)
def test_a_regularized_model_refuses_what_neither_its_fixed_steps_nor_its_penalty_read(make, unread):
    """Beside a fixed step_size a controller's bounds and a norm are read by a probe step only (the
    norm by its error estimate and by the heuristic that sizes it, also for the stiffness
    regularizer): a model without one (RNODE, TayNODE, STEER, the kinetic penalty, a global
    penalty's controller) accepted them and ran bit for bit as without them."""
    setting = {"controller": local_reg.PIController(max_step=1e-3), "norm": lambda error: error.abs().max()}
    with pytest.raises(
        ValueError, match=rf"^options\['{unread}'\] would go unread beside options\['step_size'\]"
    ):
        make({"step_size": 0.1, unread: setting[unread]})
    make({"step_size": 0.1})


@pytest.mark.parametrize("sde", [False, True])
def test_a_first_step_beside_a_fixed_step_size_is_refused_by_a_regularized_model_when_made(sde):
    field = DiagonalSDE() if sde else Decay()
    with pytest.raises(ValueError, match=r"^options\['first_step'\] would go unread"):
        LocallyRegularized(field, options={"step_size": 0.1, "first_step": 0.01})


def test_a_backward_first_step_beside_the_forwards_fixed_steps_is_refused():
    """With no method of its own the backsolve adjoint steps backwards with the forward's fixed
    step size, and read no first step of its own."""
    solve = functools.partial(
        odeint, Decay(), torch.ones(1, dtype=torch.float64), [0.0, 1.0], method="rk4", step_size=0.25
    )
    with pytest.raises(ValueError, match=r"^BacksolveAdjoint first_step would go unread beside a fixed"):
        solve(gradient=BacksolveAdjoint(first_step=0.01))
    own = BacksolveAdjoint(method="dopri5", first_step=0.01)  # its own adaptive method reads it
    solve(gradient=own).ys.sum().backward()


@pytest.mark.parametrize("adjoint", [BacksolveAdjoint, local_reg.InterpolatingAdjoint])
def test_a_backward_first_step_beside_a_backward_step_size_is_refused(adjoint):
    with pytest.raises(ValueError, match=f"^{adjoint.__name__} first_step would go unread"):
        adjoint(step_size=0.1, first_step=0.01)
    assert adjoint(step_size=0.1).first_step is None


@pytest.mark.parametrize(
    ("rtol", "named"),
    [
        (1e-12, "1e-12"),
        (1e-9, "1e-09"),  # below float32's eps = 1.19e-7, though not by orders of magnitude
        (torch.tensor([1e-3, 1e-12]), "1e-12"),  # per element: the tightest decides
    ],
)
def test_an_rtol_below_the_states_precision_is_named_as_the_cause_of_a_failure(rtol, named):
    # The failure said only "max_steps exceeded ... loosen rtol/atol" after 10000 tiny steps.
    cause = rf"rtol={named} is below what torch.float32 resolves, eps = 1.2e-07"
    with pytest.raises(SolverError, match=cause) as failure:
        odeint(rotation, torch.tensor([1.0, 0.0]), [0.0, 10.0], rtol=rtol, atol=1e-14, max_steps=300)
    # Stopped by the step limit, which may be what ends the solve: the limit is named too (the
    # hint said only that the steps shrink until they fail, where raising the limit can finish it).
    assert "raise max_steps" in str(failure.value) and "shrink until they fail" not in str(failure.value)


def test_an_rtol_just_below_eps_is_not_named_as_a_step_limits_cause():
    """rtol=1e-7 (torchdiffeq's default) in float32, eps = 1.19e-7: the steps are no shorter than at
    1e-6, and the advice to solve in float64 did not lift the limit."""
    decay = lambda t, y: -y  # noqa: E731
    with pytest.raises(SolverError) as failure:
        odeint(decay, torch.tensor([1.0]), [0.0, 1.0], rtol=1e-7, atol=1e-7, max_steps=5)
    assert "resolves" not in str(failure.value) and "raise max_steps" in str(failure.value)


def test_a_tolerance_below_the_states_precision_warns_where_the_solve_completes():
    """float32 at rtol = atol = 1e-10 completed without a word, 20x float64's evaluations for an
    error 5000x the tolerance. It warns (as scipy does), only where the tolerance at y0 is below a
    tenth of eps |y0|: not at torchdiffeq's defaults in float32 (rtol=1e-7, atol=1e-9), not where
    atol keeps the scale, not in float64 at 1e-12, not for fixed steps."""
    cause = r"rtol=1e-10 and atol=1e-10 ask for less than torch.float32 resolves at y0's scale"
    with pytest.warns(RuntimeWarning, match=cause):
        odeint(rotation, torch.tensor([1.0, 0.0]), [0.0, 10.0], rtol=1e-10, atol=1e-10)
    with pytest.warns(RuntimeWarning, match=r"rtol=per element and atol=1e-10 ask for less than"):
        odeint(rotation, torch.tensor([1.0, 0.0]), [0.0, 1.0], rtol=torch.tensor([1e-10, 1e-6]), atol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y0, rtol, atol, extra in [
            (torch.tensor([1.0, 0.0]), 1e-7, 1e-9, {}),
            (torch.tensor([1.0, 0.0]), 1e-10, 1e-6, {}),
            (torch.tensor([1.0, 0.0], dtype=torch.float64), 1e-12, 1e-14, {}),
            (torch.tensor([1.0, 0.0]), 1e-10, 1e-10, {"method": "rk4", "step_size": 0.1}),
        ]:
            odeint(rotation, y0, [0.0, 1.0], rtol=rtol, atol=atol, **extra)


def test_the_rotation_solves_at_float32s_usual_tolerances_and_at_rtol_1e_12_in_float64():
    # The refusal above is the tolerance's, not the problem's.
    odeint(rotation, torch.tensor([1.0, 0.0]), [0.0, 10.0], rtol=1e-6, atol=1e-8)
    odeint(rotation, torch.tensor([1.0, 0.0], dtype=torch.float64), [0.0, 10.0], rtol=1e-12, atol=1e-14)


def test_a_meta_tensor_state_is_named():
    # It was torch's "Tensor.item() cannot be called on meta tensors" from the finiteness check.
    with pytest.raises(ValueError, match="y0 is on the meta device"):
        odeint(decay, torch.ones(2, device="meta"), [0.0, 1.0])


def sparse(x: torch.Tensor) -> torch.Tensor:
    return x.to_sparse()


def meta_times() -> torch.Tensor:
    return torch.tensor([0.0, 1.0], device="meta")


def nested(x: torch.Tensor) -> torch.Tensor:
    """A nested tensor of the default layout, which reports ``torch.strided`` as its layout."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "prototype stage" notice
        return torch.nested.nested_tensor([x, x[:1]])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: odeint(decay, sparse(torch.ones(3)), [0.0, 1.0]), TypeError, "y0 must be a dense tensor"),
        (lambda: odeint(lambda t, y: sparse(-y), torch.ones(3), [0.0, 1.0]), TypeError, "func returned a"),
        (
            lambda: odeint(decay, nested(torch.ones(3)), [0.0, 1.0]),
            TypeError,
            "y0 must be a dense tensor, got a nested",
        ),
        (
            lambda: odeint(lambda t, y: nested(-y), torch.ones(3), [0.0, 1.0]),
            TypeError,
            "func returned a nested",
        ),
        (
            lambda: odeint(lambda t, y: (-y[0], nested(y[1])), (torch.ones(3), torch.ones(3)), [0.0, 1.0]),
            TypeError,
            r"func's output\[1\] is a nested tensor",
        ),
        (
            lambda: local_reg.step(lambda t, y: sparse(-y), 0.0, torch.ones(3), 0.1, "tsit5"),
            TypeError,
            "func",
        ),
        (
            lambda: odeint(decay, torch.ones(3), sparse(torch.tensor([0.0, 1.0]))),
            TypeError,
            "t must be a dense",
        ),
        (lambda: odeint(decay, torch.ones(3), meta_times()), ValueError, "t is on the meta device"),
        (
            lambda: sdeint(DiagonalSDE(), torch.ones(1, 2), meta_times()),
            ValueError,
            "t is on the meta device",
        ),
        (
            lambda: sdeint(DiagonalSDE(g=lambda t, y: sparse(0.1 * y)), torch.ones(1, 2), [0.0, 1.0]),
            TypeError,
            r"sde.g returned a torch.sparse_coo tensor",
        ),
        (
            lambda: local_reg.odeint_event(
                decay, torch.ones(3), torch.tensor(0.0), event_fn=lambda t, y: sparse(y[:1] - 0.5)
            ),
            TypeError,
            "event_fn returned a torch.sparse_coo tensor",
        ),
        (
            lambda: local_reg.odeint_event(
                decay, torch.ones(3), torch.tensor(0.0, device="meta"), event_fn=lambda t, y: y[0] - 0.5
            ),
            ValueError,
            "t0 is on the meta device",
        ),
        (
            lambda: odeint(decay, torch.ones(3), [0.0, 1.0], dense=True).evaluate(meta_times()),
            ValueError,
            "t is on the meta device",
        ),
    ],
)
def test_sparse_and_meta_tensors_are_named(call, error, message):
    # Each was torch's error from deep inside the solve (an operator without a sparse kernel, a copy
    # out of a meta tensor), naming no argument.
    with pytest.raises(error, match=message):
        call()


def test_a_fixed_step_count_beyond_the_floats_is_refused_and_an_event_solve_steps_on():
    # Both raised a bare OverflowError (the count's ratio was inf: math.ceil failed).
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"step_size=1e-10 needs about 1e310 steps .*: pass a longer step_size"
    ):
        odeint(decay, y0, [0.0, 1e300], method="rk4", step_size=1e-10)
    event_t, _ = local_reg.odeint_event(
        decay,
        y0,
        torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: y[0] - 0.5,
        method="rk4",
        step_size=1e-4,
    )
    assert float(event_t) == pytest.approx(math.log(2.0), abs=1e-4)
    with pytest.raises(
        SolverError, match=r"max_steps=50 exceeded \(raise max_steps .*, or a longer step_size\)"
    ):
        # A fixed-step solve has no tolerance to loosen.
        local_reg.odeint_event(
            decay, y0, 0.0, event_fn=lambda t, y: y[0] + 0.5, method="rk4", step_size=0.1, max_steps=50
        )


@pytest.mark.parametrize("method", ["heun_euler", "fehlberg2"])
def test_a_non_finite_derivative_read_only_by_the_dense_output_is_a_solver_error(method):
    """A pair that is not FSAL evaluates ``f(t1, y1)`` for its cubic Hermite output only; NaN there
    (here at the final state alone) reached the interpolated output silently."""
    times = [0.0, 0.9999, 1.0]
    y0 = torch.ones(1, dtype=torch.float64)
    y_end = odeint(decay, y0, times, method=method).ys[-1]

    def nan_at_the_end(t, y):
        return torch.full_like(y, math.nan) if float(t) == 1.0 and torch.equal(y, y_end) else -y

    with pytest.raises(SolverError, match=r"non-finite derivative f\(t, y1\) .* at t=1\.0"):
        odeint(nan_at_the_end, y0, times, method=method)


@pytest.mark.parametrize("t0", [1e15, 1e16, -1e16])
def test_the_first_step_heuristic_starts_no_lower_than_a_step_the_loop_takes(t0):
    # At |t0| = 1e16 the heuristic's 6.3 lay below the loop's smallest step (4 ulp = 8): an
    # underflow "after 0 steps" on a problem scipy solves.
    span = 1e10 if t0 > 0 else -1e10
    y0 = torch.ones(1, dtype=torch.float64)
    solution = odeint(lambda t, y: -1e-12 * y, y0, [t0, t0 + span])
    assert float(solution.ys[-1, 0]) == pytest.approx(math.exp(-1e-12 * span), rel=1e-5)


def test_times_that_collapse_in_the_dtype_func_gets_are_refused():
    # A float32 state with times given as a list: func got 1e8 at both ends and y' = t - 1e8
    # integrated to 0 (exact 0.5), silently.
    y0 = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"t's times 100000000\.0 and 100000001\.0 are one value in torch\.float32"
    ):
        odeint(lambda t, y: (t - 1e8).expand_as(y), y0, [1e8, 1e8 + 1])
    with pytest.raises(ValueError, match=re.escape("are one value in torch.float32")):
        odeint(decay, y0, [0.0, 1e-300])
    wide = torch.tensor([1e8, 1e8 + 1], dtype=torch.float64)
    solution = odeint(lambda t, y: (t - 1e8).to(y.dtype).expand_as(y), y0, wide)
    assert float(solution.ys[-1, 0]) == pytest.approx(0.5, rel=1e-5)
    # compat hands func y0's dtype whatever t's (torchdiffeq's), so a float64 t is no remedy there:
    # its message told the user to pass the float64 t they had passed.
    with pytest.raises(
        ValueError, match=r"\(y0's, as in torchdiffeq\): solve in float64, or shift t"
    ) as info:
        local_reg.compat.odeint(decay, y0, wide)
    assert "pass t as a float64 tensor" not in str(info.value)


def test_a_first_step_below_the_underflow_threshold_starts_there_and_grows():
    y0 = torch.ones(2, dtype=torch.float64)
    for first_step in (1e-16, 1e-300):
        solution = odeint(decay, y0, [0.0, 1.0], first_step=first_step)
        assert float(solution.ys[-1, 0]) == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_a_first_step_is_kept_on_a_long_span():
    """The first step's floor is relative to t0, not to the span: on [0, 1e12] a first step of 1e-5
    is taken as given (a floor at the span's scale, 0.01, stepped over a pulse at t = 1e-3)."""
    constant = odeint(lambda t, y: torch.zeros_like(y), torch.ones(2), [0.0, 1e12], first_step=1e-5)
    assert constant.steps.dt[0].item() == 1e-5
    solution = odeint(decay, torch.ones(2, dtype=torch.float64), [0.0, 1e2], first_step=1e-15)
    assert solution.steps.dt[0].item() == 1e-15


@pytest.mark.parametrize("span", [1e-15, 1e-20])
def test_a_tiny_span_solves_as_a_unit_one_does(span):
    """The underflow threshold is relative to the times: dynamics on a scale of femtoseconds, in
    seconds, are not a step-size underflow (scipy and torchdiffeq solve them)."""
    y0 = torch.ones(2, dtype=torch.float64)
    rate = Decay(1.0 / span)
    for kwargs in ({}, {"method": "rk4", "step_size": span / 10}, {"dense": True}):
        solution = odeint(rate, y0, [0.0, span / 2, span], **kwargs)
        torch.testing.assert_close(solution.ys[-1], y0 * math.exp(-1.0), rtol=1e-5, atol=0.0)
    # An SDE (noise-free, so deterministic) takes the steps of the same problem on a unit span.
    tiny = sdeint(DiagonalSDE(lambda t, y: -y / span, lambda t, y: 0 * y), y0.reshape(1, 2), [0.0, span])
    unit = sdeint(DiagonalSDE(lambda t, y: -y, lambda t, y: 0 * y), y0.reshape(1, 2), [0.0, 1.0])
    assert tiny.stats.n_steps == unit.stats.n_steps
    torch.testing.assert_close(tiny.ys[-1], unit.ys[-1], rtol=1e-6, atol=0.0)


def test_a_norm_returning_inf_is_named_not_a_nan_step():
    with pytest.raises(ValueError, match="norm must return a finite non-negative number"):
        odeint(decay, torch.ones(2), [0.0, 1.0], norm=lambda x: x.sum() * 0 + math.inf)


def test_step_callbacks_are_public():
    accepted = []
    callbacks = local_reg.StepCallbacks(accept=lambda t, y, dt: accepted.append(t))
    solution = odeint(decay, torch.ones(2), [0.0, 1.0], callbacks=callbacks)
    assert len(accepted) == solution.stats.n_accepted > 0


def test_inference_mode_solves_as_no_grad_does():
    """Inference tensors keep no version counter: the in-place check of func's input read it."""
    field = Decay(0.7)
    y0, t = torch.ones(3, 2, dtype=torch.float64), [0.0, 0.5, 1.0]
    calls = {
        **{g: lambda g=g: odeint(field, y0, t, gradient=g).ys for g in GRADIENTS},
        "event": lambda: local_reg.odeint_event(field, y0, 0.0, event_fn=lambda s, y: s - 0.5)[1].ys,
        "compat": lambda: local_reg.compat.odeint(field, y0, torch.tensor(t, dtype=torch.float64)),
        "local eval": lambda: LocallyRegularized(field).eval()(y0, t),
        "global eval": lambda: GloballyRegularized(field).eval()(y0, t),
    }
    for name, call in calls.items():
        with torch.no_grad():
            expected = call()
        with torch.inference_mode():
            got = call()
        assert torch.equal(got, expected), name


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_training_after_a_first_solve_under_inference_mode(gradient):
    """The per-step scalar constants are made once: the first made under inference_mode must not
    be an inference tensor, which every later differentiated step would fail to save."""
    from local_reg._step import _cached_scalar

    _cached_scalar.cache_clear()
    field = Decay(0.7)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    with torch.inference_mode():
        odeint(field, y0, [0.0, 1.0])
    odeint(field, y0, [0.0, 1.0], gradient=gradient).ys[-1].sum().backward()
    assert field.rate.grad is not None and torch.isfinite(field.rate.grad).all()


def test_rms_norm_under_fake_tensor_mode_leaves_later_solves_alone():
    """A shape or memory estimate under ``FakeTensorMode`` that called ``rms_norm`` cached a fake
    scalar constant, and every later eager solve of a state of that size failed with torch's
    "Please convert all Tensors to FakeTensors" until the process ended."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from local_reg import rms_norm
    from local_reg._step import _cached_scalar

    _cached_scalar.cache_clear()
    y0 = torch.full((16, 4), 2.0, dtype=torch.float64)
    with FakeTensorMode() as mode:
        assert rms_norm(mode.from_tensor(y0)).shape == ()
    assert float(rms_norm(y0)) == 2.0
    ys = odeint(decay, y0, [0.0, 1.0], rtol=1e-8, atol=1e-10).ys
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1.0), rtol=1e-6, atol=0.0)


def test_a_solve_under_a_torch_function_mode_leaves_later_solves_alone():
    """A solve under a ``TorchFunctionMode`` that wraps what torch returns (a logging subclass)
    cached its scalar constants as that subclass, through which every later solve of that dtype ran,
    with no mode active (a logger logged 114 calls of a later plain solve)."""
    from torch.overrides import TorchFunctionMode

    from local_reg import rms_norm
    from local_reg._step import _cached_scalar

    logged = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            logged.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    class Wrapping(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            return result.as_subclass(Logged) if type(result) is torch.Tensor else result

    _cached_scalar.cache_clear()
    y0 = torch.randn(7, 3)
    with Wrapping():
        odeint(decay, y0, [0.0, 1.0])
    logged.clear()
    assert type(odeint(decay, y0, [0.0, 1.0]).ys) is torch.Tensor
    assert type(rms_norm(y0)) is torch.Tensor
    assert not logged


def test_a_fake_or_masked_state_is_named():
    """A FakeTensor state (a shape estimate under ``FakeTensorMode``) failed with torch's
    ``DataDependentOutputException`` and a MaskedTensor with "Multiple dispatch failed for
    aten.any", neither naming ``y0``, where a sparse or nested one is named."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from local_reg import LocallyRegularized

    y0 = torch.randn(4, 2)
    with FakeTensorMode() as mode:
        fake_y0, fake_t = mode.from_tensor(y0), mode.from_tensor(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="y0 must be a tensor with values, got a FakeTensor"):
        odeint(decay, fake_y0, [0.0, 1.0])
    with pytest.raises(TypeError, match="t must be a tensor with values, got a FakeTensor"):
        odeint(decay, y0, fake_t)
    with pytest.raises(TypeError, match=r"y0\[1\] must be a tensor with values, got a FakeTensor"):
        local_reg.compat.odeint(
            lambda t, y: tuple(-part for part in y), (y0, fake_y0), torch.tensor([0.0, 1.0])
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "MaskedTensors is in prototype stage"
        masked = torch.masked.masked_tensor(y0, y0 > 0)
    with pytest.raises(TypeError, match="y0 must be a plain tensor, got a MaskedTensor"):
        odeint(decay, masked, [0.0, 1.0])
    with pytest.raises(TypeError, match="y0 must be a plain tensor, got a MaskedTensor"):
        LocallyRegularized(decay, weight=1.0)(masked, [0.0, 1.0])


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_a_sparse_masked_or_fake_tolerance_tensor_is_named(name):
    """Per-element tolerances given as a sparse, masked or fake tensor failed with torch's own
    errors ("Could not run 'aten::ne.Scalar' with arguments from the 'SparseCPU' backend", a
    multiple-dispatch failure, DataDependentOutputException), none naming the argument."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    y0 = torch.ones(2, 3)
    dense = torch.full((2, 3), 1e-6)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "MaskedTensors is in prototype stage"
        masked = torch.masked.masked_tensor(dense, dense > 0)
    cases = [
        (dense.to_sparse(), f"{name} must be a dense tensor, got layout torch.sparse_coo"),
        (masked, f"{name} must be a plain tensor, got a MaskedTensor"),
        (fake, f"{name} must be a tensor with values, got a FakeTensor"),
    ]
    for value, message in cases:
        with pytest.raises(TypeError, match=message):
            odeint(decay, y0, [0.0, 1.0], **{name: value})


def test_a_solve_under_another_default_device_leaves_later_solves_alone():
    """Nothing the library makes for itself (cached scalar constants, the step record, the draws of
    t_reg, of a biased sample's step, of STEER's end time, of RNODE's noise, of a Brownian path's
    seed) follows ``torch.set_default_device``: CPU tensors solved under a default meta device (as
    a model built with ``torch.device("meta")`` would) give the same results, and a solve made there
    does not break the solves after it."""
    from local_reg import LocallyRegularized, RNODERegularized, SteerRegularized, sdeint
    from local_reg._step import _cached_scalar

    _cached_scalar.cache_clear()
    field = Decay(0.7)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def calls():
        torch.manual_seed(5)  # the global generator's draws: a Brownian path's seed, RNODE's own
        yield odeint(field, y0, t, rtol=1e-5, atol=1e-7).ys
        yield sdeint(DecaySDE(), y0, t, step_size=0.1).ys
        models = [
            LocallyRegularized(field, weight=1.0, generator=torch.Generator().manual_seed(3)),
            LocallyRegularized(
                field, weight=1.0, sampling="biased", generator=torch.Generator().manual_seed(3)
            ),
            LocallyRegularized(DecaySDE(), weight=1.0, generator=torch.Generator().manual_seed(3)),
            SteerRegularized(field, b=0.1, generator=torch.Generator().manual_seed(3)),
            RNODERegularized(field, weight=1.0),
        ]
        for model in models:
            yield torch.cat([model(y0, t).reshape(-1), model.reg_loss.reshape(1)])

    with torch.device("meta"):
        under_meta = list(calls())
    _cached_scalar.cache_clear()
    expected = list(calls())
    assert all(got.device.type == "cpu" for got in under_meta)
    assert all(torch.equal(a, b) for a, b in zip(under_meta, expected, strict=True))


def test_floats_rounded_to_the_times_dtype_make_no_tensor_on_the_default_device():
    """A Python float rounded to the dtype of the times (a Brownian motion's end beside float32
    times, a dense solution's span ends) was rounded on torch's default device: under a default meta
    device it could not be read back (under a default GPU, a tensor made and read per rounding)."""
    from local_reg.sde.brownian import rounds_to

    solution = odeint(decay, torch.ones(2), torch.linspace(0.0, 0.7, 4), dense=True)
    end = torch.tensor([0.7])  # the float32 span end, read as that end
    expected = solution.evaluate(end)
    with torch.device("meta"):
        assert rounds_to(0.3, 0.30000001192092896, torch.float32)
        at_end, at_float_end = solution.evaluate(end), solution.evaluate([0.7])
    assert torch.equal(at_end, expected) and torch.equal(at_float_end, expected)


def test_times_rounded_to_a_float32_field_make_no_tensor_on_the_default_device():
    """The lists of times rounded to the field's dtype (a controller's jumps, the jumps matched to a
    fixed grid, local_reg.compat.sdeint's grid) and the float32 times beside a jump or an event's root were
    made on torch's default device, where a meta tensor cannot be read back."""
    import torchsde

    y0, times, t0 = torch.ones(2), torch.tensor([0.0, 1.0]), torch.tensor(0.0)
    read_at = torch.tensor(0.4)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(2, 1), levy_area_approximation="none", entropy=0)
    solves = {
        "jump": lambda: odeint(decay, y0, times, controller=local_reg.PIController(jump_ts=[0.3])).ys,
        "fixed-step jump": lambda: (
            odeint(decay, y0, times, step_size=0.1, controller=local_reg.PIController(jump_ts=[0.3])).ys
        ),
        "event": lambda: local_reg.odeint_event(decay, y0, t0, event_fn=lambda t, y: y[0] - 0.5)[1].ys,
        "perturb": lambda: local_reg.compat.odeint(
            decay, y0, times, method="rk4", options={"step_size": 0.1, "perturb": True}
        ),
        "sde grid": lambda: local_reg.compat.sdeint(DecaySDE(), y0[:, None], times, dt=0.1, bm=bm),
        "model, float32 times": lambda: local_reg.Regularized(decay, adjoint_params=())(y0[None], times),
        "compat jump_t": lambda: local_reg.compat.odeint(decay, y0, times, options={"jump_t": [0.3]}),
        **{
            f"compat event, t0 {t0!r}": functools.partial(
                lambda t0: local_reg.compat.odeint_event(decay, y0, t0, event_fn=lambda t, y: y[0] - 0.5)[1],
                t0,
            )
            for t0 in (0.0, np.float64(0.0), [0.0], np.array(0.0))
        },
        "compat dense, float ends": lambda: local_reg.compat.odeint_dense(decay, y0, 0.0, 1.0)(read_at),
    }
    for name, solve in solves.items():
        expected = solve()
        with torch.device("meta"):
            assert torch.equal(solve(), expected), name


def test_solver_errors_survive_pickling_as_from_a_worker_process():
    import pickle

    with pytest.raises(SolverError) as info:
        odeint(decay, torch.ones(2), [0.0, 1.0], max_steps=3)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is SolverError and str(copy) == str(info.value)
    assert (copy.reason, copy.t, copy.n_steps) == (info.value.reason, info.value.t, info.value.n_steps)


def test_the_backsolve_adjoints_fixed_steps_beyond_max_steps_name_its_own_settings():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    solution = odeint(Decay(), y0, [0.0, 1.0], gradient=BacksolveAdjoint(step_size=1e-5))
    with pytest.raises(
        ValueError, match=r"backsolve adjoint, backward solve .* pass BacksolveAdjoint\(max_steps=100000\)"
    ):
        solution.ys[-1].sum().backward()


def test_a_nan_step_size_is_a_solver_error_not_a_spin():
    from local_reg._integrate import next_step_size

    with pytest.raises(SolverError, match="step size is NaN"):
        next_step_size(0.0, 1.0, math.nan, 0, 10)


def test_float32_as_the_docs_advise_agrees_with_float64_and_the_exact_solution():
    """The advice for half-precision users (integrate in float32, cast back) is accurate: the
    issue's bfloat16 solve returned 1.0 instead of exp(-1)."""
    y0 = torch.ones(3, dtype=torch.bfloat16)
    ys32 = odeint(decay, y0.float(), torch.linspace(0, 1, 5)).ys[-1].to(torch.bfloat16)
    ys64 = odeint(decay, y0.double(), torch.linspace(0, 1, 5, dtype=torch.float64)).ys[-1]
    assert torch.allclose(ys64, torch.full((3,), math.exp(-1.0), dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(ys32.double(), ys64, rtol=1e-2)  # bfloat16 resolution


# func's output on every call -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (lambda t, y: (-y)[:1], ValueError, "func returned shape"),  # broadcastable, later call
        (lambda t, y: (-y).double(), TypeError, "func returned dtype"),  # would promote ys
        (lambda t, y: (-y)[:2], ValueError, "func returned shape"),  # not broadcastable
        (lambda t, y: 1.0, TypeError, "func must return a torch.Tensor"),
    ],
)
def test_func_output_is_checked_on_every_call(bad, error, match):
    with pytest.raises(error, match=match):
        odeint(fails_after(5, decay, bad), torch.ones(3), [0.0, 1.0])


class ChangesItsInput(Decay):
    def forward(self, t, y):
        y.clamp_(min=0.0)  # a no-op on this solution, but y is the solver's state
        return -self.rate * y


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_func_that_changes_its_input_in_place_is_refused(gradient):
    """The solver reuses ``y`` after the call (the step's start, a stage state): a ``func`` that
    changes it in place would silently corrupt the solution, so every call checks its version."""
    with pytest.raises(ValueError, match="func modified its input y in place"):
        odeint(ChangesItsInput(), torch.ones(3, dtype=torch.float64), [0.0, 1.0], gradient=gradient)


def reusing_one_buffer(field):
    """``field`` writing each output into one tensor it returns on every call (``out.copy_(...)``,
    ``torch.matmul(..., out=out)``): a user's saving of allocations."""
    buffer = {}

    def reused(t, y):
        value = field(t, y)
        return buffer.setdefault("out", torch.empty_like(value)).copy_(value)

    return reused


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_func_that_reuses_an_output_buffer_is_refused(gradient):
    """The solver keeps each output (a step's stages, the next step's first stage, dense output's
    stages): one buffer written on every call silently replaced the earlier stages by the latest
    (0.2 to 1.8 off on a linear field at the default tolerances, where torchdiffeq's dopri5 with
    the same field is 7e-7 off; a wrong event time, a wrong SDE path). Refused with a way out."""
    y0 = torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=torch.float64)
    match = r"func changed a tensor it returned earlier in place .*return a new tensor on every call"
    with pytest.raises(ValueError, match=match):
        odeint(reusing_one_buffer(decay), y0, [0.0, 1.0], gradient=gradient, adjoint_params=())
    with pytest.raises(ValueError, match=match):
        local_reg.compat.odeint(reusing_one_buffer(decay), y0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=match):
        local_reg.odeint_event(reusing_one_buffer(decay), y0, 0.0, event_fn=lambda t, y: y.sum() - 0.1)


def test_a_func_returning_one_unchanged_tensor_is_solved():
    """A field that returns the same captured tensor on every call, unchanged (a constant rate), is
    not a reused buffer: ``y(t) = y0 + c t``."""
    rate = torch.tensor([1.0, -2.0], dtype=torch.float64)
    y0 = torch.tensor([0.5, 0.25], dtype=torch.float64)
    solution = odeint(lambda t, y: rate, y0, [0.0, 0.5, 2.0])
    expected = y0 + rate * torch.tensor([[0.0], [0.5], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(solution.ys, expected, rtol=1e-12, atol=1e-12)


def test_an_event_fn_that_changes_its_input_in_place_is_named():
    # The state event_fn reads is the step's end, which the solve goes on from; the refusal
    # named callbacks.stop, which the caller never passed.
    def event_fn(t, y):
        y.mul_(1.0)
        return y[0]

    with pytest.raises(ValueError, match="event_fn modified its input y in place"):
        local_reg.odeint_event(decay, torch.ones(2, dtype=torch.float64), 0.0, event_fn=event_fn)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        # torch.cat would cast these parts to the state's dtype: a silently wrong solution.
        (lambda t, y: (-y[0].float(), -y[1]), TypeError, r"func's output\[0\] has dtype torch.float32"),
        (lambda t, y: (-y[0], torch.zeros(3, dtype=torch.long)), TypeError, r"output\[1\] has dtype"),
        (lambda t, y: (1.0, -y[1]), TypeError, r"func's output\[0\] must be a torch.Tensor, got float"),
        (lambda t, y: None, TypeError, "func must return a tuple of 2 tensors for a tuple y0, got NoneType"),
        # A tensor splits along its first dimension: one of another length is named as a tensor.
        (lambda t, y: torch.ones(()), TypeError, r"2 tensors for a tuple y0, got a tensor of shape \(\)"),
        (
            lambda t, y: torch.ones(3, 2),
            TypeError,
            r"2 tensors for a tuple y0, got a tensor of shape \(3, 2\)",
        ),
        (lambda t, y: (-y[0][:1], -y[1]), ValueError, r"output\[0\] must have the shape of y0\[0\] \(2,\)"),
    ],
)
def test_a_tuple_states_func_output_is_checked_part_by_part(bad, error, match):
    y0 = (torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(error, match=match):
        odeint(fails_after(5, lambda t, y: (-y[0], -y[1]), bad), y0, [0.0, 1.0])


def test_a_tuple_states_inputs_are_named_by_their_own_tensor_and_index():
    # Named by the hidden flat state's index ("the first at index (4,)"), or not checked at all: a
    # bool tolerance tensor read as 1.0, a sparse part a bare RuntimeError from torch's reshape.
    f64 = torch.float64
    a, b = torch.ones(2, dtype=f64), torch.ones(3, dtype=f64)

    def field(t, y):
        return (-y[0], -y[1])

    nan_part = torch.tensor([1.0, 1.0, math.nan], dtype=f64)
    with pytest.raises(
        ValueError, match=re.escape("y0[1] must be finite, got 1 non-finite entries (the first at index (2,)")
    ):
        odeint(field, (a, nan_part), [0.0, 1.0])
    negative = torch.tensor([1e-8, -1.0, 1e-8], dtype=f64)
    with pytest.raises(
        ValueError, match=re.escape("atol[1] must be positive and finite in every element, got -1.0 at (1,)")
    ):
        odeint(field, (a, b), [0.0, 1.0], atol=[1e-8, negative])
    with pytest.raises(
        ValueError, match=re.escape("rtol[0] must be non-negative and finite in every element")
    ):
        odeint(field, (a, b), [0.0, 1.0], rtol=[torch.tensor([1e-6, math.inf], dtype=f64), 1e-6])
    for kind in (torch.tensor([True] * 3), torch.tensor([1e-8 + 1j] * 3), torch.tensor([1, 1, 1])):
        with pytest.raises(
            TypeError,
            match=re.escape(
                f"atol[1] must be a floating tensor of per-element tolerances, got dtype {kind.dtype}"
            ),
        ):
            odeint(field, (a, b), [0.0, 1.0], atol=[1e-8, kind])
    sparse = torch.eye(2, dtype=f64).to_sparse()
    with pytest.raises(
        TypeError, match=re.escape("y0[1] must be a dense tensor, got layout torch.sparse_coo")
    ):
        odeint(field, (a, sparse), [0.0, 1.0])
    with pytest.raises(
        TypeError, match=re.escape("func's output[1] is a torch.sparse_coo tensor: give a dense one")
    ):
        odeint(lambda t, y: (-y[0], sparse), (a, torch.ones(2, 2, dtype=f64)), [0.0, 1.0])
    # Per-part floating tolerances, a tensor's among them, solve as before: each part to its own.
    solution = odeint(field, (a, b), [0.0, 1.0], rtol=[1e-9, torch.full((3,), 1e-9, dtype=f64)], atol=1e-12)
    for part in solution.ys:
        torch.testing.assert_close(part[-1], torch.full_like(part[-1], math.exp(-1.0)), rtol=1e-7, atol=0)


def test_the_check_leaves_values_and_call_counts_unchanged():
    calls = {"n": 0}

    def counted(t, y):
        calls["n"] += 1
        return -y

    solution = odeint(counted, torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    assert solution.stats.nfe == calls["n"]
    assert torch.allclose(solution.ys[-1], torch.full((2,), math.exp(-1.0), dtype=torch.float64), rtol=1e-6)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_func_is_checked_in_the_backward_pass_too(gradient):
    """The graph-free methods call func again with a graph in their backward pass."""

    def field(t, y):
        return (-y).double() if torch.is_grad_enabled() else -y

    y0 = torch.ones(2, requires_grad=True)
    solution = odeint(field, y0, [0.0, 1.0], gradient=gradient, adjoint_params=())
    with pytest.raises(TypeError, match="func returned dtype"):
        solution.ys[-1].sum().backward()


def test_sdeint_refuses_a_generator_that_is_not_one():
    with pytest.raises(TypeError, match=re.escape("generator must be a torch.Generator or None, got int")):
        sdeint(DiagonalSDE(), torch.ones(2, 3, dtype=torch.float64), [0.0, 1.0], generator=0)


def test_sdeint_refuses_a_t_that_requires_grad_rather_than_leave_it_without_gradient():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    # A sequence holding such a 0-dim tensor (which odeint differentiates) too.
    for times in (t, [torch.tensor(0.0), t[1]]):
        with pytest.raises(ValueError, match="t requires grad"):
            sdeint(DiagonalSDE(), torch.ones(2, 3, dtype=torch.float64), times)


def test_sdeint_checks_drift_diffusion_and_brownian_increments_on_every_call():
    y0 = torch.ones(2, 3)
    later_float64 = DiagonalSDE(f=fails_after(3, lambda t, y: -y, lambda t, y: (-y).double()))
    with pytest.raises(TypeError, match=r"sde\.f .*dtype"):
        sdeint(later_float64, y0, [0.0, 1.0])
    later_shape = DiagonalSDE(g=fails_after(3, lambda t, y: 0.1 * y, lambda t, y: 0.1 * y[:1]))
    with pytest.raises(ValueError, match=re.escape("sde.g")):
        sdeint(later_shape, y0, [0.0, 1.0])

    def float64_bm(ta, tb):
        return torch.zeros(2, 3, dtype=torch.float64)

    with pytest.raises(TypeError, match="bm returned dtype"):
        sdeint(DiagonalSDE(), y0, [0.0, 1.0], bm=float64_bm)


# Non-finite gradients ----------------------------------------------------------------------------


NAN_VJP = "non-finite gradient in the backward pass: the vector-Jacobian product of func is not finite"


def nan_vjp_field(t, y):
    """Finite values (zero), NaN vector-Jacobian product: ``d/dy [y sqrt(y - y)] = 0 + y * inf * 0``."""
    return y * torch.sqrt(y - y)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_nan_in_the_vjp_raises_solver_error_with_every_gradient_method(gradient):
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    solution = odeint(nan_vjp_field, y0, [0.0, 1.0], gradient=gradient, adjoint_params=())
    assert torch.isfinite(solution.ys).all()
    with pytest.raises(SolverError, match=NAN_VJP):
        solution.ys[-1].sum().backward()


def penalty_of_the_step_end(result, dt):
    """A penalty whose own vector-Jacobian product is finite: a NaN through it comes from ``func``."""
    return result.y1.sum()


class NanVjpSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return nan_vjp_field(t, y)

    def g(self, t, y):
        return torch.full_like(y, 0.1)


def dense_nan_vjp_solve(y0):
    return odeint(nan_vjp_field, y0, [0.0, 1.0], dense=True)


def regularization_loss(model, y0):
    model(y0, [0.0, 1.0])
    return model.reg_loss


# What a loss may read of a direct solve besides ys, whose backward pass reaches the solve
# through another tensor than ys.
READS_BESIDE_YS = {
    "evaluate": lambda y0: dense_nan_vjp_solve(y0).evaluate(0.5),
    "derivative": lambda y0: dense_nan_vjp_solve(y0).derivative([0.5, 1.0]),
    "the dense record": lambda y0: dense_nan_vjp_solve(y0).steps.dense_output.evaluate(0.5),
    "compat.odeint_dense": lambda y0: local_reg.compat.odeint_dense(
        nan_vjp_field, y0, torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    )(torch.tensor(0.5, dtype=torch.float64)),
    "penalties": lambda y0: (
        odeint(nan_vjp_field, y0, [0.0, 1.0], step_penalty=penalty_of_the_step_end).penalties
    ),
    "odeint_event's penalties": lambda y0: (
        local_reg.odeint_event(
            nan_vjp_field, y0, 0.0, event_fn=lambda t, y: t - 0.5, step_penalty=penalty_of_the_step_end
        )[1].penalties
    ),
    "GloballyRegularized's reg_loss": lambda y0: regularization_loss(GloballyRegularized(nan_vjp_field), y0),
    "sdeint's penalties": lambda y0: (
        sdeint(NanVjpSDE(), y0[None], [0.0, 1.0], step_penalty=penalty_of_the_step_end).penalties
    ),
}


@pytest.mark.parametrize("read", READS_BESIDE_YS)
def test_nan_in_the_vjp_raises_solver_error_through_the_dense_output_or_the_penalties(read):
    """``direct``'s check started where ``ys`` got a cotangent: a loss of the dense output alone
    (``evaluate``, ``derivative``, compat's ``odeint_dense``) or of the step penalties alone got
    NaN gradients silently."""
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(SolverError, match="non-finite gradient in the backward pass"):
        READS_BESIDE_YS[read](y0).sum().backward()


def test_one_pass_through_ys_the_dense_output_and_the_penalties_checks_each_input_once():
    """The loss reads every guarded output of one direct solve: the gradients are those of the
    three parts summed, each input is checked once in the pass (not once per output read), no
    check stays on the parameters after it, and a NaN cotangent that enters through the dense
    output alone (from the loss) is not blamed on ``func``."""
    field = Decay()
    checks_in_pass = []
    # Runs when the pass reaches the parameter, by when the checks the pass adds are registered.
    field.rate.register_hook(lambda grad: checks_in_pass.append(len(field.rate._backward_hooks) - 1))
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)

    def parts():
        solution = odeint(field, y0, [0.0, 0.5, 1.0], dense=True, step_penalty=penalty_of_the_step_end)
        return [solution.ys.sum(), solution.evaluate([0.25, 0.75]).sum(), solution.penalties.sum(), solution]

    separate = []
    for index in range(3):
        loss = parts()[index]
        separate.append(torch.autograd.grad(loss, (y0, field.rate)))
    ys_part, dense_part, penalty_part, solution = parts()
    (ys_part + dense_part + penalty_part).backward()
    for got, *want in zip((y0.grad, field.rate.grad), *separate, strict=True):
        torch.testing.assert_close(got, sum(want), rtol=1e-12, atol=0.0)
    assert checks_in_pass[-1] == 1
    assert len(field.rate._backward_hooks) == 1  # the test's own
    assert solution.stats.nfe_backward == 0
    dense_only = odeint(field, y0, [0.0, 1.0], dense=True)
    dense_only.evaluate(0.5).sum().backward()
    assert dense_only.stats.nfe_backward == 0  # the backward pass reached the solve

    y0.grad = field.rate.grad = None
    ys_part, dense_part, penalty_part, _ = parts()
    (ys_part + float("nan") * dense_part).backward()
    assert torch.isnan(field.rate.grad)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_a_nan_found_in_the_results_is_not_placed_at_a_time(gradient):
    """NaN only in the vector-Jacobian products after t = 0.8: the adjoints name the time their
    backward solve fails at; the others check the gradients they hand back, so their error's t is
    the solve's start, which the message says rather than reading as where the NaN arose."""
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)

    def late_nan(t, y):
        return -y + (nan_vjp_field(t, y) if float(t) > 0.8 else 0.0)

    times = torch.linspace(0, 1, 5, dtype=torch.float64)
    solution = odeint(late_nan, y0, times, gradient=gradient, adjoint_params=())
    with pytest.raises(SolverError, match=NAN_VJP) as raised:
        solution.ys.sum().backward()
    message = str(raised.value)
    if "adjoint" in gradient:
        assert raised.value.t > 0.8 and "found where the backward solve starts" in message
    else:
        assert raised.value.t == 0.0 and "so anywhere on the span: t is the solve's start" in message


class _FieldsOwnError(ValueError):
    pass


@pytest.mark.parametrize("gradient", GRADIENTS[1:])  # those that evaluate func in the backward pass
def test_a_users_own_value_error_in_the_backward_pass_passes_through(gradient):
    """The adjoints reworded every ValueError their backward solve raised (meant for their own
    fixed-step refusal) as a new plain ValueError without the user's frame: a field's own
    ValueError subclass comes out as raised now, as from torchdiffeq's adjoint."""
    failing = [False]

    def field(t, y):
        if failing[0]:
            raise _FieldsOwnError("my field's own check")
        return -y

    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    solution = odeint(field, y0, [0.0, 1.0], gradient=gradient, adjoint_params=())
    failing[0] = True
    with pytest.raises(_FieldsOwnError, match=r"^my field's own check$"):
        solution.ys.sum().backward()
    if "adjoint" in gradient:
        failing[0] = False
        ys = local_reg.compat.odeint_adjoint(field, y0, torch.tensor([0.0, 1.0]), adjoint_params=())
        failing[0] = True
        with pytest.raises(_FieldsOwnError, match=r"^my field's own check$"):
            ys.sum().backward()


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_nan_in_a_parameter_vjp_raises_solver_error(gradient):
    """Only the parameter's gradient is not finite: d sqrt(p) / dp at p = 0. The adjoints' default
    norm reads it at the backward solve's start, where it blamed a NaN step size ("first_step, or
    the controller's factor")."""
    p = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    solution = odeint(lambda t, y: -y * torch.sqrt(p), y0, [0.0, 1.0], gradient=gradient, adjoint_params=(p,))
    with pytest.raises(SolverError, match=NAN_VJP):
        solution.ys[-1].sum().backward()


class RateCapturingSDE:
    """Drift ``-y sqrt(rate)`` of a tensor it captures (no module, so no parameters of its own): at
    ``rate = 0`` a finite drift whose gradient for ``rate`` alone is not finite."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, rate: torch.Tensor) -> None:
        self.rate = rate

    def f(self, t, y):
        return -y * torch.sqrt(self.rate)

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


def test_sdeint_checks_adjoint_params_under_direct_as_odeint():
    """sdeint refused adjoint_params under "direct" (a ValueError, whatever its value), where odeint
    checks the list and watches its tensors' gradients, so a NaN reaching only a tensor the drift
    captures went back without a word; both now raise."""
    rate = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, 1, dtype=torch.float64, requires_grad=True)
    sde = RateCapturingSDE(rate)
    not_iterable = (
        "adjoint_params must be an iterable of tensors (e.g. a tuple or module.parameters()), got int"
    )
    with pytest.raises(TypeError, match=f"^{re.escape(not_iterable)}$"):
        sdeint(sde, y0, [0.0, 1.0], adjoint_params=5)
    with pytest.raises(TypeError, match=r"^adjoint_params must hold tensors, got a float$"):
        sdeint(sde, y0, [0.0, 1.0], adjoint_params=[1.0])
    solutions = {
        "func": odeint(lambda t, y: -y * torch.sqrt(rate), y0, [0.0, 1.0], adjoint_params=(rate,)),
        "the drift and diffusion": sdeint(sde, y0, [0.0, 1.0], step_size=0.25, adjoint_params=(rate,)),
    }
    for field, solution in solutions.items():
        with pytest.raises(SolverError, match=re.escape(NAN_VJP.replace("of func", f"of {field}"))):
            solution.ys[-1].sum().backward()


@pytest.mark.parametrize("backend", ["local_reg", "torchsde"])
def test_a_regularized_sde_models_adjoint_params_are_checked_under_direct(backend):
    """The models took adjoint_params beside an SDE and "direct" and dropped them (the local_reg
    backend passed them to sdeint under a graph-free method only; torchsde's check of the outputs
    read only the SDE's parameters): a NaN reaching only a listed tensor went back silently."""
    pytest.importorskip(backend)
    torch.manual_seed(0)
    rate = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    model = LocallyRegularized(RateCapturingSDE(rate), backend=backend, adjoint_params=(rate,))
    ys = model(torch.ones(3, 1, dtype=torch.float64), [0.0, 1.0])
    found = NAN_VJP.replace("of func", "of the drift and diffusion")
    with pytest.raises(SolverError, match=re.escape(found)):
        ys[-1].sum().backward()


class NanVjpDecay(Decay):
    """``-a y`` plus :func:`nan_vjp_field`: finite values, a NaN vector-Jacobian product."""

    def forward(self, t, y):
        return super().forward(t, y) + nan_vjp_field(t, y)


class DecayWithNoise(Decay):
    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return self(t, y)

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


class NanVjpDecaySDE(NanVjpDecay, DecayWithNoise):
    """:class:`NanVjpDecay` as an SDE's drift."""


@pytest.mark.parametrize(
    ("backend", "gradient", "settings"),
    [
        ("torchdiffeq", "direct", {}),
        # torchdiffeq's adaptive adjoint asserts on the NaN its backward solve steps into; its fixed
        # grid steps on with it.
        ("torchdiffeq", "adjoint", {"method": "rk4", "options": {"step_size": 0.25}}),
        ("torchsde", "direct", {}),
        ("torchsde", "adjoint", {}),
    ],
)
def test_nan_in_the_vjp_raises_solver_error_on_the_peer_backends_too(backend, gradient, settings):
    """The local_reg backend's error: the peers' solves handed NaN gradients back without a word."""
    pytest.importorskip(backend)
    torch.manual_seed(0)
    field = NanVjpDecay() if backend == "torchdiffeq" else NanVjpDecaySDE()
    model = LocallyRegularized(field, backend=backend, gradient=gradient, **settings)
    ys = model(torch.ones(3, 1, dtype=torch.float64), [0.0, 1.0])
    assert torch.isfinite(ys).all()
    func = "func" if backend == "torchdiffeq" else "the drift and diffusion"
    found = NAN_VJP.replace("of func", f"of {func}")
    with pytest.raises(SolverError, match=re.escape(found)) as raised:
        (ys[-1].sum() + model.reg_loss).backward()
    assert raised.value.t == 0.0 and "t is the solve's start" in str(raised.value)


class NanRateGradient(Decay):
    """``-a y`` plus ``sqrt(0 a)``: finite values, a NaN gradient for the rate ``a`` wherever the
    field is differentiated, the local penalty's evaluation at a detached ``u(t_reg)`` included."""

    def forward(self, t, y):
        return super().forward(t, y) + torch.sqrt(self.rate * 0.0)


@pytest.mark.parametrize(
    ("backend", "gradient"),
    [
        ("local_reg", "direct"),
        ("local_reg", "symplectic"),
        ("torchdiffeq", "direct"),
        ("torchdiffeq", "adjoint"),
        ("sde:local_reg", "direct"),
        ("sde:torchsde", "direct"),
        ("sde:torchsde", "adjoint"),
    ],
)
def test_a_nan_the_loss_puts_on_reg_loss_passes_through_as_the_losss(backend, gradient):
    """docs/solver.md: a NaN cotangent from the loss itself is passed through untouched. The local
    penalty reaches the parameters apart from the main solve's outputs, whose guard then blamed
    func for it (the local_reg backend's direct gradient since it had one, the peer backends since
    theirs were guarded)."""
    sde, backend = backend.startswith("sde:"), backend.removeprefix("sde:")
    pytest.importorskip(backend)
    torch.manual_seed(0)
    field = DecayWithNoise() if sde else Decay()
    model = LocallyRegularized(field, backend=backend, gradient=gradient, weight=1.0)
    ys = model(torch.ones(3, 1, dtype=torch.float64), [0.0, 1.0])
    (ys[-1].sum() + math.nan * model.reg_loss).backward()
    assert field.rate.grad.isnan()


@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
def test_a_nan_gradient_of_the_field_through_reg_loss_alone_is_an_error(gradient):
    """A loss of the penalty alone reached no guarded output: a NaN gradient of the field there
    passed silently."""
    model = LocallyRegularized(NanRateGradient(), gradient=gradient, weight=1.0)
    model(torch.ones(3, 1, dtype=torch.float64), [0.0, 1.0])
    with pytest.raises(SolverError, match=re.escape(NAN_VJP)):
        model.reg_loss.backward()


@pytest.mark.parametrize("gradient", ["direct", "symplectic"])
@pytest.mark.parametrize("with_ys", [False, True])
def test_a_nan_gradient_of_the_field_at_an_undetached_drawn_state_is_an_error(gradient, with_ys):
    """With detach_state=False the penalty's gradient for u(t_reg) joins the main solve's outputs,
    whose check took its NaN for the loss's: the loss of reg_loss, and of ys and reg_loss, got NaN
    gradients silently (ys alone raised)."""
    torch.manual_seed(0)
    model = LocallyRegularized(NanVjpDecay(), weight=1.0, detach_state=False, gradient=gradient)
    y0 = torch.ones(3, 1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(SolverError, match=re.escape(NAN_VJP)):
        ys = model(y0, [0.0, 1.0])
        (model.reg_loss + (ys[-1].sum() if with_ys else 0.0)).backward()


def test_the_check_of_reg_loss_keeps_no_batch_alive():
    """The model keeps reg_loss until its next training call: the check's hooks on it held the
    caller's y0 (and the graph that made it), which the default penalty never reaches."""
    import gc
    import weakref

    model = LocallyRegularized(Decay())
    encoder = torch.nn.Linear(2, 2).double()
    x = torch.ones(3, 2, dtype=torch.float64)
    y0 = encoder(x)
    alive_y0, alive_x = weakref.ref(y0), weakref.ref(x)
    model(y0, [0.0, 1.0])  # a training call not followed by a backward pass
    del y0, x
    gc.collect()
    assert alive_y0() is None and alive_x() is None


def test_a_nan_the_loss_puts_on_an_event_solves_initial_state_passes_through():
    """odeint_event's ys[0] is y0 itself, beside the guarded solve: its NaN cotangent was blamed on
    func, where odeint's passes through."""
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    _, solution = local_reg.odeint_event(Decay(), y0, 0.0, event_fn=lambda t, y: y[0] - 0.5)
    (solution.ys[1].sum() + math.nan * solution.ys[0].sum()).backward()
    assert y0.grad.isnan().all()


class ConstantFeature(torch.nn.Module):
    """A field reading ``sqrt|y[:, 2]|`` of a state column that does not move: at a zero entry its
    vector-Jacobian product for ``y`` is not finite, the parameters' are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2).double()

    def forward(self, t, y):
        features = torch.cat([y[:, :2], torch.sqrt(y[:, 2:].abs())], dim=1)
        return torch.cat([torch.tanh(self.lin(features)), torch.zeros_like(y[:, 2:])], dim=1)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_a_non_finite_gradient_of_a_y0_that_needs_none_is_not_an_error(gradient):
    """The parameters' gradients are finite and ``y0`` asks for none: ``"checkpoint"`` and
    ``"symplectic"`` judged ``y0``'s non-finite one too and raised, where ``"direct"`` gives them."""
    y0 = torch.ones(4, 3, dtype=torch.float64)
    y0[0, 2] = 0.0
    gradients = []
    for method in ("direct", gradient):
        field = ConstantFeature()
        odeint(field, y0, [0.0, 1.0], gradient=method).ys[-1, :, :2].pow(2).sum().backward()
        gradients.append([p.grad for p in field.parameters()])
    for got, want in zip(*gradients, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


class SqrtRate(torch.nn.Module):
    """``dy/dt = -sqrt(p) y`` at ``p = 0``: finite values, an infinite ``d/dp``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, t, y):
        return -torch.sqrt(self.p) * y


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_a_bound_methods_module_parameters_are_checked_like_the_modules(gradient):
    """``odeint`` takes a bound method's module as the owner of its parameters, so its parameters'
    gradients are checked with every method, ``direct`` included."""
    field = SqrtRate()
    solution = odeint(field.forward, torch.ones(2, dtype=torch.float64), [0.0, 1.0], gradient=gradient)
    with pytest.raises(SolverError, match="non-finite"):
        solution.ys[-1].sum().backward()


@pytest.mark.parametrize("sampling", ["random", "biased"])
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_a_regularized_model_raises_solver_error_for_a_nan_vjp(sampling, gradient):
    """The model indexes and drops the main solve's output tensor; the check lives with its graph."""
    model = LocallyRegularized(SqrtRate(), sampling=sampling, gradient=gradient)
    ys = model(torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    with pytest.raises(SolverError, match="non-finite"):
        (ys.sum() + model.reg_loss).backward()


def test_direct_gradient_checks_do_not_pile_hooks_on_parameters():
    func = Decay()
    for _ in range(5):
        odeint(func, torch.ones(2, dtype=torch.float64), [0.0, 1.0])  # never differentiated
    for _ in range(5):
        odeint(func, torch.ones(2, dtype=torch.float64), [0.0, 1.0]).ys.sum().backward()
    assert not func.rate._backward_hooks


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_a_nan_cotangent_from_the_loss_is_not_blamed_on_the_solver(gradient):
    """A non-finite loss (the overflow a GradScaler skips) gives NaN gradients with every method,
    as backpropagation does: the adjoints' backward solve of a NaN adjoint failed with a
    SolverError blaming ``func``. A parameter ``func`` does not use still gets no gradient."""
    field = SqrtRate()
    field.p.data.fill_(0.25)  # a finite derivative: any NaN below comes from the loss
    unused = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    solution = odeint(field, y0, [0.0, 0.5, 1.0], gradient=gradient, adjoint_params=(field.p, unused))
    (solution.ys[1:].sum() * float("nan")).backward()
    assert torch.isnan(y0.grad).all() and torch.isnan(field.p.grad) and unused.grad is None
    # The cotangent at t0 enters no backward solve: only y0's gradient takes it.
    field.p.grad = y0.grad = None
    solution = odeint(field, y0, [0.0, 0.5, 1.0], gradient=gradient, adjoint_params=(field.p,))
    (solution.ys[0].sum() * math.inf + solution.ys[-1].pow(2).sum()).backward()
    assert torch.isfinite(field.p.grad) and not torch.isfinite(y0.grad).any()


def test_a_nan_cotangent_of_another_solve_or_pass_is_not_blamed_on_this_solve():
    """``direct``'s check hooks the parameters, whose gradient in a pass is the sum over every use:
    a NaN cotangent of a second solve sharing them, or of a later pass while an earlier solution is
    kept (its hooks live with its graph, and its record of a finite cotangent lived on), was blamed
    on ``func``."""
    field = SqrtRate()
    field.p.data.fill_(0.25)  # a finite derivative: any NaN below comes from the loss
    y0 = torch.ones(2, dtype=torch.float64)

    def solve(gradient="direct"):
        return odeint(field, y0, [0.0, 1.0], gradient=gradient)

    def nan_gradient(loss):
        field.p.grad = None
        loss.backward()
        return bool(torch.isnan(field.p.grad))

    assert nan_gradient(solve().ys[-1].pow(2).sum() + float("nan") * solve().ys[-1].sum())
    kept = solve()
    kept.ys[-1].sum().backward()
    for gradient in ("direct", "symplectic"):
        assert nan_gradient(float("nan") * solve(gradient).ys[-1].sum())
    # A reentrant checkpoint in the same pass runs a backward pass of its own, which ended the
    # outer pass's record (one module-level flag) before the outer solves' inputs were checked.
    from torch.utils.checkpoint import checkpoint

    inside = checkpoint(lambda x: odeint(field, x, [0.0, 1.0]).ys[-1], field.p * y0, use_reentrant=True)
    assert nan_gradient(float("nan") * solve().ys[-1].sum() + solve().ys[-1].sum() + inside.sum())

    # A pass that fails after a NaN cotangent was recorded (an error further up the graph) left
    # that record behind, and the check was off from then on.
    fails = failing_backward("upstream failure")
    failing = odeint(field, fails(y0.clone().requires_grad_()), [0.0, 1.0]).ys[-1]
    with pytest.raises(RuntimeError, match="upstream failure"):
        (float("nan") * failing.sum()).backward()
    # The check itself still works after those passes, with the kept solution alive.
    field.p.data.fill_(0.0)
    with pytest.raises(SolverError, match="non-finite"):
        solve().ys[-1].sum().backward()
    del kept


def sqrt_rate_closure(rate):
    """``-sqrt(rate) y`` as a plain function closing over ``rate``: a direct solve of it from a
    ``y0`` that asks for no gradient has no input it knows of to check."""
    return lambda t, y: -torch.sqrt(rate) * y


class SqrtRateClosureSDE:
    """:func:`sqrt_rate_closure` as the drift of an SDE that is not a module, with small noise."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, rate):
        self.f = sqrt_rate_closure(rate)

    def g(self, t, y):
        return torch.full_like(y, 0.1)


# Outputs of direct solves of a plain function closing over ``rate``, from a y0 that asks for no
# gradient: none has an input of its own to check.
PLAIN_FUNCTION_OUTPUTS = {
    "odeint": lambda rate, y0: odeint(sqrt_rate_closure(rate), y0, [0.0, 1.0]).ys[-1],
    "sdeint": lambda rate, y0: sdeint(SqrtRateClosureSDE(rate), y0[None], [0.0, 1.0]).ys[-1],
    "LocallyRegularized's reg_loss": lambda rate, y0: regularization_loss(
        LocallyRegularized(sqrt_rate_closure(rate), weight=1.0), y0
    ),
    "torchdiffeq's direct": lambda rate, y0: LocallyRegularized(
        sqrt_rate_closure(rate), backend="torchdiffeq", weight=1.0
    )(y0, [0.0, 1.0])[-1],
}


@pytest.mark.parametrize("output", PLAIN_FUNCTION_OUTPUTS)
def test_a_nan_cotangent_of_a_plain_functions_solve_sharing_a_parameter_is_not_blamed_on_this_solve(output):
    """A solve with no input of its own to check did not record the NaN cotangent the loss put on
    it, so a module's direct solve sharing the parameter blamed its own func for the loss's NaN. A
    non-finite vector-Jacobian product of the plain function is still an error."""
    field = SqrtRate()
    field.p.data.fill_(0.25)  # a finite derivative of the module's field
    y0 = torch.ones(2, dtype=torch.float64)
    shared = PLAIN_FUNCTION_OUTPUTS[output](field.p, y0)
    (odeint(field, y0, [0.0, 1.0]).ys[-1].sum() + math.nan * shared.sum()).backward()
    assert field.p.grad.isnan()
    shared = PLAIN_FUNCTION_OUTPUTS[output](field.p - 0.25, y0)  # sqrt at 0 in the plain function
    with pytest.raises(SolverError, match=NAN_VJP):
        (odeint(field, y0, [0.0, 1.0]).ys[-1].sum() + shared.sum()).backward()


# Times -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", ["12", b"12", ["0", "1"], [0.0, True], 3.0, {0.0, 1.0}])
def test_a_string_or_non_numeric_t_is_refused(t):
    sde_y0 = torch.ones(1, 2)
    for call in (
        lambda: odeint(decay, torch.ones(2), t),
        lambda: sdeint(DiagonalSDE(), sde_y0, t),
        lambda: LocallyRegularized(decay)(torch.ones(2), t),
        lambda: GloballyRegularized(decay)(torch.ones(2), t),
    ):
        with pytest.raises(TypeError, match="t must"):
            call()


def test_numpy_times_are_accepted_like_a_tensor():
    y0 = torch.ones(2, dtype=torch.float64)
    times = np.linspace(0.0, 1.0, 4)
    from_numpy = odeint(decay, y0, times)
    from_tensor = odeint(decay, y0, torch.from_numpy(times))
    assert torch.equal(from_numpy.ys, from_tensor.ys)
    assert torch.equal(from_numpy.ts, from_tensor.ts)
    with pytest.raises(ValueError, match="t must be a 1-D array"):
        odeint(decay, y0, np.zeros((2, 2)))
    with pytest.raises(TypeError, match="t must be a real array"):
        odeint(decay, y0, np.array(["0", "1"]))


# Tolerances and counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("solve", [odeint, local_reg.compat.odeint])
def test_numpy_scalars_and_0_dim_tensors_are_numbers(solve):
    """torchdiffeq takes tolerances as tensors; numpy's scalars are real numbers too."""
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    reference = solve(decay, y0, t, rtol=1e-4, atol=1e-6)
    reference = getattr(reference, "ys", reference)
    for rtol, atol in (
        (np.float32(1e-4), np.float64(1e-6)),
        (torch.tensor(1e-4, dtype=torch.float64), torch.tensor(1e-6, dtype=torch.float64)),
    ):
        ys = solve(decay, y0, t, rtol=rtol, atol=atol)
        # np.float32(1e-4) is not exactly 1e-4: equal within the tolerance, not bit for bit.
        assert torch.allclose(getattr(ys, "ys", ys), reference, rtol=1e-6, atol=0)
    with pytest.raises(local_reg.SolverError, match="max_steps=2 exceeded"):
        odeint(decay, y0, t, max_steps=np.int64(2))


# The public step ---------------------------------------------------------------------------------


def test_public_step_validates_like_odeint():
    y = torch.ones(2, dtype=torch.float64)
    tableau = get_tableau("tsit5")
    with pytest.raises(ValueError, match="dt must be finite"):
        local_reg.step(decay, 0.0, y, float("nan"), tableau)
    with pytest.raises(ValueError, match="t must be finite"):
        local_reg.step(decay, float("inf"), y, 0.1, tableau)
    with pytest.raises(ValueError, match="rtol must be non-negative"):
        local_reg.step(decay, 0.0, y, 0.1, tableau, rtol=-1.0, atol=-1.0)
    with pytest.raises(ValueError, match="atol must be positive"):
        local_reg.step(decay, 0.0, y, 0.1, tableau, atol=0.0)
    with pytest.raises(ValueError, match="unknown method 'tsit'"):
        local_reg.step(decay, 0.0, y, 0.1, "tsit")
    with pytest.raises(TypeError, match="func must be callable"):
        local_reg.step(42, 0.0, y, 0.1, tableau)
    with pytest.raises(ValueError, match="k1 has shape"):
        local_reg.step(decay, 0.0, y, 0.1, tableau, k1=torch.ones(3, dtype=torch.float64))
    by_name = local_reg.step(decay, 0.0, y, 0.1, "tsit5")
    by_object = local_reg.step(decay, 0.0, y, 0.1, tableau)
    assert torch.equal(by_name.y1, by_object.y1)
    assert torch.allclose(by_name.y1, torch.full((2,), math.exp(-0.1), dtype=torch.float64), rtol=1e-8)


# The initial step ------------------------------------------------------------------------------


def test_initial_step_survives_a_derivative_whose_scaled_norm_overflows():
    """``f0 / scale`` overflows float32 (1e33 / 1e-6): the heuristic divided by zero."""
    solution = odeint(lambda t, y: torch.full_like(y, 1e33), torch.ones(2), [0.0, 1.0])
    assert torch.allclose(solution.ys[-1], torch.full((2,), 1e33), rtol=1e-5)


def test_initial_step_evaluates_func_only_inside_the_span():
    times = []

    def growing(t, y):
        times.append(float(t))
        return 1e-3 * y * torch.exp(100 * t)

    solution = odeint(growing, torch.ones(1), [0.0, 0.01])
    exact = math.exp(1e-5 * (math.exp(1.0) - 1.0))  # y = exp(1e-3 (e^{100 t} - 1) / 100)
    assert solution.ys[-1].item() == pytest.approx(exact, rel=1e-6)
    assert max(times) <= 0.01 + 1e-8


def test_initial_step_stays_in_a_backward_span():
    times = []

    def field(t, y):
        times.append(float(t))
        return -y

    odeint(field, torch.ones(1, dtype=torch.float64), [1.0, 0.999])
    assert min(times) >= 0.999 - 1e-12


# Overflowing trial steps -----------------------------------------------------------------------


def test_an_overflowing_trial_step_is_rejected_not_fatal():
    """A first step of 1.0 on y' = -1e3 y from 1e30 overflows float32; float64 solves it with
    rejections. Both now agree (the exact value, 1e30 e^{-1000}, is 0 at this atol)."""
    results = {}
    for dtype in (torch.float32, torch.float64):
        y0 = torch.full((2,), 1e30, dtype=dtype)
        solution = odeint(lambda t, y: -1e3 * y, y0, torch.tensor([0.0, 1.0]), first_step=1.0)
        assert solution.stats.n_rejected > 0
        results[dtype] = solution.ys[-1].double()
    assert torch.allclose(results[torch.float32], results[torch.float64], atol=1e-8)
    assert results[torch.float64].abs().max() < 1e-8


def test_a_step_whose_state_overflows_is_rejected_though_its_error_estimate_is_finite():
    """A constant field: every stage is finite and the error estimate (scaled by ``|y1| = inf``) is
    0, but the first step of 3.0 overflows float32 on the way to ``y1``. It must be rejected."""
    solution = odeint(lambda t, y: torch.full_like(y, 1e38), torch.zeros(2), [0.0, 3.0], first_step=3.0)
    assert solution.stats.n_rejected > 0
    torch.testing.assert_close(solution.ys[-1], torch.full((2,), 3e38), rtol=1e-6, atol=0.0)


def test_a_persistently_non_finite_field_still_raises_solver_error():
    with pytest.raises(SolverError, match="non-finite") as info:
        odeint(lambda t, y: torch.where(t > 0.5, torch.full_like(y, float("nan")), -y), torch.ones(2), [0, 1])
    assert 0.4 < info.value.t <= 0.5 + 1e-6
    with pytest.raises(SolverError, match="non-finite"):  # fixed steps cannot shrink
        odeint(lambda t, y: y / (0.5 - t), torch.ones(1), [0.0, 1.0], method="rk4", step_size=0.25)


# torchdiffeq backend ---------------------------------------------------------------------------


class LearnedDecaySDE(torch.nn.Module):
    """``dy = -a y dt + 0.1 y dW`` with a learnable rate (picklable: no lambdas)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def f(self, t, y):
        return -self.rate * y

    def g(self, t, y):
        return 0.1 * y


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_model_on_a_peer_backend_pickles_after_training(backend):
    """Its statistics count the backward solve's calls with an object, not a closure."""
    import pickle

    field = Decay() if backend == "torchdiffeq" else LearnedDecaySDE()
    model = LocallyRegularized(field, backend=backend, gradient="adjoint")
    y0 = torch.ones(2, 2, dtype=torch.float64)
    ys = model(y0, [0.0, 1.0])
    (ys[-1].sum() + model.reg_loss).backward()
    assert model.stats.nfe_backward > 0
    copy = pickle.loads(pickle.dumps(model))
    assert copy.stats.nfe_backward == model.stats.nfe_backward
    ys = copy(y0, [0.0, 1.0])
    (ys[-1].sum() + copy.reg_loss).backward()  # the copy counts its own calls
    assert copy.stats.nfe_backward > 0 and model.stats.nfe_backward > 0


class CubicDriftSDE(torch.nn.Module):
    """dy = y^3 dt + 0.1 dW: from y = 2 the drift blows up at t = 1/8."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return y**3

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


def test_torchsde_backend_follows_the_error_contract():
    """torchsde's failures are asserts: a bare AssertionError left the model where the local_reg
    backend, and the torchdiffeq one, give a SolverError naming t."""
    pytest.importorskip("torchsde")
    model = Regularized(CubicDriftSDE(), backend="torchsde").eval()
    # The drift overflows to inf past the blow-up: the earliest such evaluation is named.
    with pytest.raises(
        SolverError,
        match=r"^torchsde: the drift or diffusion returned non-finite values \(torchsde then stopped: "
        r".*evaluations of the drift and diffusion\); the earliest at t=",
    ) as blowup:
        model(torch.full((3, 2), 2.0), torch.linspace(0, 2, 3))
    assert 0.0 < blowup.value.t < 0.2 and blowup.value.n_steps is None
    # An empty batch, which the local_reg backend solves, is named as the cause.
    with pytest.raises(SolverError, match=r"y0 has no elements.*backend='local_reg'"):
        model(torch.ones(0, 2), torch.linspace(0, 2, 3))
    # Times that are one value in y0's float32, as local_reg.sdeint names them (torchsde said
    # "Evaluation times `ts` must be strictly increasing" of increasing times).
    with pytest.raises(ValueError, match=r"100000000\.0 and 100000001\.0 are one value in torch\.float32"):
        model(torch.ones(1, 2), [1e8, 1e8 + 1])
    assert Regularized(CubicDriftSDE()).eval()(torch.ones(0, 2), torch.linspace(0, 2, 3)).shape == (3, 0, 2)

    # A drift of another kind than a real float: a complex one made a complex solution silently (and
    # then torch's own error in the finiteness record).
    class ComplexDrift(DiagonalSDE):
        def f(self, t, y):
            return (-y).to(torch.complex64)

    peer = Regularized(ComplexDrift(), backend="torchsde", options={"adaptive": False, "dt": 0.1}).eval()
    with pytest.raises(TypeError, match=r"^the SDE's drift f returned a torch\.complex64 tensor"):
        peer(torch.ones(2, 1), torch.tensor([0.0, 1.0]))


class LateNanSDE(torch.nn.Module):
    """dy = -y dt + 0.1 dW, whose drift or diffusion (``non_finite``) is NaN past t = 0.6."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, non_finite: str) -> None:
        super().__init__()
        self.non_finite = non_finite
        self.non_finite_at: list[float] = []

    def _late_nan(self, name, t, value):
        if name == self.non_finite and float(t) > 0.6:
            self.non_finite_at.append(float(t))
            return value * math.nan
        return value

    def f(self, t, y):
        return self._late_nan("drift", t, -y)

    def g(self, t, y):
        return self._late_nan("diffusion", t, 0.1 * torch.ones_like(y))


@pytest.mark.parametrize("non_finite", ["drift", "diffusion"])
@pytest.mark.parametrize("options", [{}, {"adaptive": False, "dt": 0.1}], ids=["adaptive", "fixed"])
def test_the_torchsde_backend_names_where_the_sde_turned_non_finite(non_finite, options):
    """torchsde's adaptive solve asserts on the NaN in its error estimate, its fixed steps go on with
    it: the error named the last drift evaluation (0.76, past the NaN) or the output time (2.0)."""
    pytest.importorskip("torchsde")
    sde = LateNanSDE(non_finite)
    model = LocallyRegularized(sde, backend="torchsde", weight=1.0, options=options).eval()
    with pytest.raises(
        SolverError,
        match=r"^torchsde: the drift or diffusion returned non-finite values.*; the earliest at t=",
    ) as raised:
        model(torch.ones(3, 2, dtype=torch.float64), [0.0, 2.0])
    assert raised.value.t == min(sde.non_finite_at) and raised.value.n_steps is None


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_users_own_assert_in_the_field_passes_through_the_peer_backends(backend):
    """The peer backends turn their solvers' asserts into SolverErrors: the user's own assert in
    func (or the drift) was turned too, and blamed on the peer, where the local_reg backend passes
    it on as raised."""
    pytest.importorskip(backend)

    def checked(t, y):
        assert y.shape[-1] == 3, "my own check: three features"
        return -y

    class CheckedSDE(CubicDriftSDE):
        def f(self, t, y):
            return checked(t, y)

    field = checked if backend == "torchdiffeq" else CheckedSDE()
    for chosen in (backend, "local_reg"):
        with pytest.raises(AssertionError, match=r"^my own check: three features") as raised:
            LocallyRegularized(field, backend=chosen, weight=1.0).eval()(torch.ones(3, 2), [0.0, 1.0])
        assert not isinstance(raised.value, SolverError)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("callback_step", {}),
        ("callback_accept_step", {}),
        # A first step of 1 on y' = -50 y is rejected; rk4's grid has no accept callback of ours.
        ("callback_reject_step", {"options": {"first_step": 1.0}}),
        ("callback_step", {"method": "rk4", "options": {"step_size": 0.1}}),
    ],
    ids=["step", "accept", "reject", "fixed-grid step"],
)
def test_a_users_assert_in_torchdiffeqs_callbacks_passes_through_too(name, settings):
    def forward(t, y):
        return -50 * y

    def callback(t0, y0, dt):
        assert False, "my own check in a callback"  # noqa: B011

    field = torch.nn.Module()
    field.forward = forward
    setattr(field, name, callback)
    model = LocallyRegularized(field, backend="torchdiffeq", weight=1.0, **settings).eval()
    with pytest.raises(AssertionError, match=r"^my own check in a callback") as raised:
        model(torch.ones(3, 2), [0.0, 1.0])
    assert not isinstance(raised.value, SolverError)


@pytest.mark.parametrize("backend", ["torchdiffeq", "torchsde"])
def test_a_users_assert_in_an_adjoint_backward_solve_keeps_nothing_alive(backend):
    """The error raised in the backward solve of the peers' adjoints was kept by the wrapper the
    model's stats hold, and its traceback the pass's tensors: memory grew with each failed pass."""
    import gc

    pytest.importorskip(backend)
    calls = {"n": 0, "limit": 10**9}

    def checked(t, y):
        calls["n"] += 1
        assert calls["n"] <= calls["limit"], "my own check"
        return -y

    class CheckedSDE(CubicDriftSDE):
        def f(self, t, y):
            return checked(t, y) * self.scale

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(1.0))

    field = checked if backend == "torchdiffeq" else CheckedSDE()
    scale = torch.nn.Parameter(torch.tensor(1.0))
    model = LocallyRegularized(
        (lambda t, y: field(t, y) * scale) if backend == "torchdiffeq" else field,
        backend=backend,
        gradient="adjoint",
        weight=1.0,
        **({"adjoint_params": [scale]} if backend == "torchdiffeq" else {}),
    )

    def failed_pass():
        ys = model(torch.randn(500, 2, dtype=torch.float64), [0.0, 1.0])
        calls["limit"] = calls["n"] + 3  # fails inside the backward solve
        with pytest.raises(AssertionError, match=r"^my own check"):
            (ys[-1].sum() + model.reg_loss).backward()
        calls["limit"] = 10**9

    def live_tensors():
        gc.collect()
        return len(live_objects(torch.Tensor))

    failed_pass()
    before = live_tensors()
    for _ in range(3):
        failed_pass()
    assert live_tensors() <= before


def test_torchdiffeq_backend_follows_the_error_contract():
    model = LocallyRegularized(decay, backend="torchdiffeq")
    with pytest.raises(ValueError, match="y0 must be finite"):
        model(torch.tensor([float("nan"), 1.0]), [0.0, 1.0])
    stiff = LocallyRegularized(
        lambda t, y: -1e4 * (y - torch.cos(t)), backend="torchdiffeq", options={"max_num_steps": 50}
    )
    with pytest.raises(SolverError, match="max_num_steps") as limited:
        stiff(torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    # The steps attempted, as local_reg's own error counts them and torchdiffeq's limit counts them
    # (the accepted ones, fewer, read "(50>=50) ... after 39 steps").
    assert limited.value.n_steps == 50
    with pytest.raises(SolverError, match="torchdiffeq") as blowup:
        LocallyRegularized(lambda t, y: y**2, backend="torchdiffeq")(
            torch.ones(1, dtype=torch.float64), [0, 2]
        )
    # y' = y^2 from y(0) = 1 blows up at t = 1: the error names where the solve stopped, and after
    # how many accepted steps (in eval mode too, where no step is recorded).
    assert blowup.value.t == pytest.approx(1.0, abs=0.05)
    with pytest.raises(SolverError, match="torchdiffeq") as plain:
        LocallyRegularized(lambda t, y: y**2, backend="torchdiffeq").eval()(
            torch.ones(1, dtype=torch.float64), [0, 2]
        )
    assert blowup.value.n_steps > 10 and plain.value.n_steps > 10
    with pytest.raises(SolverError, match=r"y0 has no elements.*backend='local_reg'"):
        LocallyRegularized(decay, backend="torchdiffeq").eval()(torch.ones(0, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"options: unknown keys \['bogus'\]"):
        LocallyRegularized(decay, backend="torchdiffeq", options={"bogus": 1})
    with pytest.raises(ValueError, match="unknown method 'tsit5'"):
        LocallyRegularized(decay, backend="torchdiffeq", method="tsit5")
    # A tableau was "unknown method ButcherTableau(name=..., c=(...), ...)", 778 characters.
    with pytest.raises(
        TypeError, match=r"^method: backend='torchdiffeq' takes torchdiffeq's method names, got the"
    ):
        LocallyRegularized(decay, backend="torchdiffeq", method=local_reg.get_tableau("bosh3"))
    # Values torchdiffeq would refuse only at the first call (or, for a safety of 0, underflow on).
    for options, name in (
        ({"first_step": -1.0}, "first_step"),
        ({"max_num_steps": 0}, "max_num_steps"),
        ({"safety": 0.0}, "safety"),
        ({"dfactor": -0.2}, "dfactor"),
        # Where a rejected step need not shrink, torchdiffeq retried it without end (a hang).
        ({"safety": 1.5}, "safety"),
        ({"dfactor": 2.0}, "dfactor"),
        ({"dfactor": 1.0}, "dfactor"),
        ({"safety": None}, "safety"),
        ({"step_t": "x"}, "step_t"),
        ({"jump_t": [float("nan")]}, "jump_t"),
        # A norm that is no function failed at the first call as "'int' object is not callable".
        ({"norm": 5}, "norm"),
        ({"norm": None}, "norm"),
    ):
        with pytest.raises((ValueError, TypeError), match=rf"options\['{name}'\] must be"):
            LocallyRegularized(decay, backend="torchdiffeq", options=options)
    with pytest.raises(ValueError, match=r"options\['step_size'\] must be"):
        LocallyRegularized(decay, backend="torchdiffeq", method="rk4", options={"step_size": 0.0})
    # torchdiffeq reads max_num_steps into an int32: a whole float is taken, 2**31 is not.
    LocallyRegularized(decay, backend="torchdiffeq", options={"max_num_steps": 1e5})
    with pytest.raises(
        ValueError, match=r"options\['max_num_steps'\] must be a whole number from 1 to 2\*\*31 - 1"
    ):
        LocallyRegularized(decay, backend="torchdiffeq", options={"max_num_steps": 2**31})
    # Known options pass and act: a fixed grid of 0.25 takes 4 rk4 steps of 4 evaluations.
    ys = LocallyRegularized(decay, backend="torchdiffeq", method="rk4", options={"step_size": 0.25}).eval()(
        torch.ones(1, dtype=torch.float64), [0.0, 1.0]
    )
    assert ys[-1].item() == pytest.approx(math.exp(-1.0), rel=1e-4)


def nan_past_0_6(direction: float, non_finite_at: list[float]):
    """y' = -y, NaN past t = 0.6 along ``direction``; the times of its NaN calls go to ``non_finite_at``."""

    def late_nan(t, y):
        if direction * float(t) > 0.6:
            non_finite_at.append(float(t))
            return -y * math.nan
        return -y

    return late_nan


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_the_torchdiffeq_backend_names_where_func_turned_non_finite(direction):
    """torchdiffeq shrinks its step away from a NaN derivative down to an underflow in dt: the error
    named only that, at the last evaluation of func (0.78, past where the NaN began), where the
    local_reg backend says the trial steps turned non-finite, at 0.6."""
    non_finite_at: list[float] = []
    late_nan = nan_past_0_6(direction, non_finite_at)

    model = LocallyRegularized(late_nan, backend="torchdiffeq", weight=1.0).eval()
    with pytest.raises(
        SolverError, match=r"^torchdiffeq: func returned non-finite values .*underflow in dt"
    ) as raised:
        model(torch.ones(1, dtype=torch.float64), [0.0, 2.0 * direction])
    # The earliest along the solve, before the last evaluation: the trial stages go past it.
    assert raised.value.t == min(non_finite_at, key=lambda t: direction * t)
    assert direction * raised.value.t < direction * non_finite_at[-1]
    # The outputs of y' = y^2 stay finite up to its blow-up at t = 1: torchdiffeq's own report.
    with pytest.raises(SolverError, match=r"^torchdiffeq: underflow in dt") as blowup:
        LocallyRegularized(lambda t, y: y**2, backend="torchdiffeq", weight=1.0).eval()(
            torch.ones(1, dtype=torch.float64), [0.0, 2.0]
        )
    assert "non-finite" not in str(blowup.value)


@pytest.mark.parametrize("direction", [1.0, -1.0])
@pytest.mark.parametrize(
    ("method", "options"),
    [("rk4", {"step_size": 0.1}), ("euler", {"step_size": 0.1}), ("rk4", {}), ("euler", {"step_size": 1e-3})],
    # The last makes more calls before and after the NaN than the record keeps one by one.
    ids=["rk4-step", "euler-step", "rk4-output-grid", "euler-2000-steps"],
)
def test_a_torchdiffeq_fixed_grid_names_where_func_turned_non_finite(method, options, direction):
    """A fixed grid steps on with a NaN derivative: the error named only the output time whose state
    was NaN (2.0), not the evaluation of func past 0.6 that made it so."""
    non_finite_at: list[float] = []
    late_nan = nan_past_0_6(direction, non_finite_at)

    model = LocallyRegularized(late_nan, backend="torchdiffeq", method=method, options=options, weight=1.0)
    with pytest.raises(
        SolverError, match=r"^torchdiffeq: func returned non-finite values.*; the earliest at t="
    ) as raised:
        model.eval()(torch.ones(1, dtype=torch.float64), [0.0, 2.0 * direction])
    # A fixed grid evaluates func in the order of its times: its first non-finite call is the earliest.
    assert raised.value.t == non_finite_at[0]
    assert raised.value.n_steps is None


def test_a_torchdiffeq_fixed_grid_blames_func_only_for_its_own_non_finite_values():
    """The state of y' = y^2 overflows where func, at a finite state, returns inf (y**2 past float64's
    largest value): that is named. Where the state alone overflows, func returning finite values all
    along (finite entries whose sum overflows, so the state's update does), the output time is."""
    calls = []

    def square(t, y):
        calls.append((float(t), bool(torch.isfinite(y).all()), bool(torch.isfinite(y**2).all())))
        return y**2

    model = LocallyRegularized(square, backend="torchdiffeq", method="rk4", options={"step_size": 0.1})
    with pytest.raises(SolverError, match=r"^torchdiffeq: func returned non-finite values") as blowup:
        model.eval()(torch.ones(1, dtype=torch.float64), [0.0, 2.0])
    first_inf = next(t for t, state_finite, finite in calls if not finite)
    assert blowup.value.t == first_inf and (first_inf, True, False) in calls
    largest = torch.finfo(torch.float64).max / 2

    def huge(t, y):
        return torch.full_like(y, largest)

    model = LocallyRegularized(huge, backend="torchdiffeq", method="euler", options={"step_size": 1.0})
    with pytest.raises(SolverError, match=r"^torchdiffeq: non-finite state at an output time") as overflow:
        model.eval()(torch.ones(4, dtype=torch.float64), [0.0, 1.0, 2.0, 3.0])
    assert overflow.value.t == 3.0

    # The state overflows in the solver's update at 1.8, the output at 1.5 interpolated from it, and
    # func returns NaN only there, at that state: the output time, not func's later NaN, is named.
    def overflowing(t, y):
        return 1e308 + 0 * y

    model = LocallyRegularized(overflowing, backend="torchdiffeq", method="euler", options={"step_size": 0.6})
    with pytest.raises(SolverError, match=r"^torchdiffeq: non-finite state at an output time") as later:
        model.eval()(torch.zeros(2, 1, dtype=torch.float64), [0.0, 1.5, 2.0])
    assert later.value.t == 1.5


class InfInOneErrorEstimate(torch.nn.Module):
    """A fast-varying decay whose dopri5 stage read by the error estimate alone (the sixth call of
    an attempt, ``f(t1, y1)``) is infinite once, past t = 0.5: that trial step is rejected, and the
    solve goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls_in_attempt = 0
        self.inf_at: list[float] = []

    def callback_step(self, t0, y0, dt):
        self.calls_in_attempt = 0

    def forward(self, t, y):
        self.calls_in_attempt += 1
        if self.calls_in_attempt == 6 and float(t) > 0.5 and not self.inf_at:
            self.inf_at.append(float(t))
            return torch.full_like(y, math.inf)
        return -50 * y * (1 + torch.cos(40 * t))


def test_a_non_finite_trial_step_the_torchdiffeq_solve_got_past_is_not_blamed():
    field = InfInOneErrorEstimate()
    model = LocallyRegularized(field, backend="torchdiffeq", weight=1.0, options={"max_num_steps": 60})
    with pytest.raises(SolverError, match=r"^torchdiffeq: max_num_steps exceeded") as raised:
        model.eval()(torch.ones(1, dtype=torch.float64), [0.0, 2.0])
    # At the last evaluation: the steps after the rejected one stayed short of its infinite stage.
    assert field.inf_at and raised.value.t < field.inf_at[0]
    assert "non-finite" not in str(raised.value)


def test_torchdiffeq_backend_calls_the_fields_own_step_callbacks_as_torchdiffeq_does():
    calls = {"step": [], "accept": []}

    class Field(torch.nn.Module):
        def forward(self, t, y):
            return -y

        def callback_step(self, t0, y0, dt):
            calls["step"].append(float(t0))

        def callback_accept_step(self, t0, y0, dt):
            calls["accept"].append(float(t0))

    model = LocallyRegularized(Field(), backend="torchdiffeq").eval()
    model(torch.ones(1, dtype=torch.float64), [0.0, 1.0])
    ours = {name: list(times) for name, times in calls.items()}
    calls["step"].clear()
    calls["accept"].clear()
    y0, t = torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    torchdiffeq.odeint(Field(), y0, t, rtol=1e-6, atol=1e-8)  # the model's default tolerances
    assert len(ours["accept"]) > 3 and ours == calls


def test_a_numpy_bool_flag_is_named_as_numpy_bool():
    with pytest.raises(TypeError, match=re.escape("dense must be a bool, got numpy.bool")):
        odeint(decay, torch.ones(2), [0.0, 1.0], dense=np.True_)
    from local_reg import compat
    from local_reg.interpolants import Interpolant

    y0, ts = torch.ones(2, 1), torch.tensor([0.0, 1.0])
    sde = _ConstantDiagonalSDE()
    # Each of these said "got bool" (its own copy of the check).
    for name, call in [
        ("force_min_step", lambda: local_reg.PIController(force_min_step=np.True_)),
        ("logqp", lambda: compat.sdeint(sde, y0, ts, dt=0.1, logqp=np.True_)),
        ("adaptive", lambda: compat.sdeint(sde, y0, ts, dt=0.1, adaptive=np.True_)),
        ("options['grad_free']", lambda: compat.sdeint(sde, y0, ts, dt=0.1, options={"grad_free": np.True_})),
        (
            "compile['fullgraph']",
            lambda: odeint(decay, torch.ones(2), [0.0, 1.0], compile={"fullgraph": np.True_}),
        ),
        (
            "compile['dynamic'] must be None or",
            lambda: odeint(decay, torch.ones(2), [0.0, 1.0], compile={"dynamic": np.True_}),
        ),
        ("extra_stage", lambda: Interpolant("x", ((1.0,),), 3, extra_stage=np.True_)),
        (
            "compile must be a bool or a dict",
            lambda: odeint(decay, torch.ones(2), [0.0, 1.0], compile=np.True_),
        ),
    ]:
        with pytest.raises(TypeError, match=re.escape(name) + ".*got numpy.bool"):
            call()


# Regularized models validate at construction -----------------------------------------------------


def test_regularized_options_that_would_be_ignored_or_are_not_tensors_are_named():
    with pytest.raises(
        ValueError, match=r"penalty='kinetic' takes no probe step, so \['probe'\] would be ignored"
    ):
        LocallyRegularized(Decay(), penalty="kinetic", probe="initial")
    with pytest.raises(ValueError, match=r"\['reg_method', 'probe_scale'\]"):
        LocallyRegularized(Decay(), penalty="kinetic", reg_method="dopri5", probe_scale=2.0)
    with pytest.raises(TypeError, match="adjoint_params must be an iterable of tensors"):
        LocallyRegularized(Decay(), adjoint_params=5)
    # The penalty object itself refuses every probe option beside the kinetic penalty, the
    # heuristic's other exponent too (it would change nothing).
    for probe_option in [dict(probe="initial-hairer"), dict(probe="solver"), dict(probe_scale=2.0)]:
        with pytest.raises(ValueError, match="penalty='kinetic' takes no probe step"):
            LocalPenalty(penalty="kinetic", **probe_option)
    # rtol = 0 is a pure absolute tolerance, as for odeint and sdeint; atol = 0 beside it is not.
    model = LocallyRegularized(Decay(), rtol=0.0, atol=1e-8)
    model(torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    assert float(model.reg_loss) > 0
    with pytest.raises(ValueError, match="atol must be positive"):
        LocallyRegularized(Decay(), rtol=0.0, atol=0.0)


@pytest.mark.parametrize("cls", [LocallyRegularized, GloballyRegularized])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "tsit"}, ValueError, "unknown method 'tsit'"),
        ({"rtol": -1e-6}, ValueError, "rtol must be non-negative"),
        ({"atol": -1e-3}, ValueError, "atol must be positive"),
        ({"rtol": "1e-3"}, TypeError, "rtol must be a non-negative float"),
        ({"options": {"bogus": 1}}, ValueError, r"unknown keys \['bogus'\]"),
        # Every options entry is named as one, as odeint's keyword it becomes is not the model's.
        ({"options": {"max_steps": 0}}, ValueError, r"^options\['max_steps'\] must be a positive int, got 0"),
        ({"options": {"first_step": 0}}, ValueError, r"^options\['first_step'\] must be positive and finite"),
        ({"options": {"step_size": "big"}}, TypeError, r"^options\['step_size'\] must be a positive float"),
        ({"options": {"controller": "pi"}}, TypeError, r"^options\['controller'\] must be a PIController"),
        (
            {"options": {"compile": {"fullgraph": 1}}},
            TypeError,
            r"^options\['compile'\]\['fullgraph'\] must be a bool",
        ),
        ({"options": [1]}, TypeError, "options must be a dict"),
        ({"method": "rk4"}, ValueError, "fixed-step"),
        ({"options": {"step_to_outputs": "yes"}}, TypeError, "step_to_outputs.* must be a bool"),
        ({"options": {"norm": 5}}, TypeError, r"^options\['norm'\] must be callable"),
        ({"options": {"compile": "fast"}}, TypeError, r"^options\['compile'\] must be a bool"),
        ({"options": {"callbacks": 1}}, TypeError, r"^options\['callbacks'\] must be a StepCallbacks"),
        (
            {"options": {"callbacks": local_reg.StepCallbacks(stop=lambda t, y: y[0])}},
            ValueError,
            r"options\['callbacks'\] has a stop condition",
        ),
    ],
)
def test_regularized_models_check_everything_at_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(Decay(), **kwargs)


@pytest.mark.parametrize("cls", [local_reg.Regularized, LocallyRegularized, GloballyRegularized])
def test_a_field_that_cannot_be_called_as_func_t_y_is_refused_at_construction(cls):
    """An ``nn.Sequential`` of the state alone failed inside torch at the first call."""
    with pytest.raises(TypeError, match=r"func must be callable as func\(t, y\), but Sequential"):
        cls(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="func must be callable as func"):
        cls(lambda y: y)
    cls(lambda t, y, *extra: y, adjoint_params=())  # takes (t, y)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_a_plain_function_without_adjoint_params_is_refused_at_construction(gradient):
    with pytest.raises(ValueError, match="needs the parameters of func"):
        LocallyRegularized(lambda t, y: -y, gradient=gradient)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_steps": -1}, ValueError, r"^options\['max_steps'\] must be a positive int"),
        ({"first_step": -0.1}, ValueError, r"^options\['first_step'\] must be positive"),
        ({"step_size": "big"}, TypeError, r"^options\['step_size'\] must be a positive float"),
        ({"controller": "pi"}, TypeError, r"^options\['controller'\] must be a PIController"),
    ],
)
def test_sde_models_check_their_option_values_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        LocallyRegularized(DiagonalSDE(), options=options)


@pytest.mark.parametrize("cls", [local_reg.Regularized, LocallyRegularized, GloballyRegularized])
def test_times_that_require_grad_are_refused_by_the_modules(cls):
    """The modules solve at fixed times: a ``t`` that requires grad would get a silent ``None``
    gradient (``local_reg.odeint`` differentiates its times)."""
    model = cls(Decay())
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    y0 = torch.ones(2, dtype=torch.float64)
    for mode in (model.train, model.eval):
        mode()
        for times in (t, [0.0, t[1]]):
            with pytest.raises(ValueError, match=r"t requires grad.*t\.detach\(\)"):
                model(y0, times)
    if cls is not local_reg.Regularized:
        with pytest.raises(ValueError, match="t requires grad"):
            model.penalize(y0, t)
    assert torch.isfinite(model(y0, t.detach())).all()


@pytest.mark.parametrize("cls", [LocallyRegularized, GloballyRegularized])
def test_a_non_callable_func_is_refused_at_construction(cls):
    with pytest.raises(TypeError, match="func must be callable"):
        cls(42)


@pytest.mark.parametrize("penalty", ["local", local_reg.LocalPenalty, 1.0])
def test_a_penalty_that_is_not_a_penalty_object_is_refused_naming_it(penalty):
    with pytest.raises(TypeError, match=re.escape("penalty must be a penalty object such as LocalPenalty()")):
        local_reg.Regularized(Decay(), penalty)


def test_sde_models_check_method_and_options_at_construction():
    with pytest.raises(ValueError, match=r"unknown method 'srk'.*not implemented here.*backend='torchsde'"):
        LocallyRegularized(DiagonalSDE(), method="srk")
    # A tableau was "unknown method ButcherTableau(name=..., c=(...), ...)", 917 characters, and a
    # number a ValueError where odeint's is a TypeError.
    tableau = local_reg.get_tableau("tsit5")
    for call in (
        lambda: LocallyRegularized(DiagonalSDE(), method=tableau),
        lambda: sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], method=tableau),
    ):
        with pytest.raises(
            TypeError, match=r"^method must be the name of an SDE method.*ButcherTableau \(Butch"
        ):
            call()
    with pytest.raises(TypeError, match=r"^method must be the name of an SDE method.*got int$"):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], method=5)
    with pytest.raises(TypeError, match=r"^method must be one of \[.*\], got ButcherTableau$"):
        LocallyRegularized(DiagonalSDE(), method=tableau, backend="torchsde")
    LocallyRegularized(DiagonalSDE(), method="srk", backend="torchsde")
    # torchsde's names, as its users write them, are told apart from a typo.
    with pytest.raises(ValueError, match=r"torchsde's 'euler' \(for Ito SDEs\) is 'euler_maruyama' here"):
        LocallyRegularized(DiagonalSDE(), method="euler")
    with pytest.raises(ValueError, match=r"torchsde's 'euler' \(for Ito SDEs\) is 'euler_maruyama' here"):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], method="euler")
    with pytest.raises(ValueError, match="a torchsde method for Stratonovich SDEs; sdeint solves Ito SDEs"):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], method="reversible_heun")
    # Milstein is one of local_reg's SDE methods, for the main solve (the probe stays Euler-Maruyama).
    milstein = LocallyRegularized(
        DiagonalSDE(), method="milstein", generator=torch.Generator().manual_seed(0)
    )
    milstein(torch.ones(3, 2, dtype=torch.float64), [0.0, 1.0])
    assert float(milstein.reg_loss) > 0
    with pytest.raises(ValueError, match="reg_method must be None or 'euler_maruyama'"):
        LocallyRegularized(DiagonalSDE(), penalty="error-dt", reg_method="milstein")
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        LocallyRegularized(DiagonalSDE(), options={"bogus": 1})
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        LocallyRegularized(DiagonalSDE(), backend="torchsde", options={"bogus": 1})
    # diffrax's dt0 was read as the main solve's first step, where a diffrax program means a fixed step.
    for func in (DiagonalSDE(), lambda t, y: -y):
        with pytest.raises(
            ValueError,
            match=r"unknown keys \['dt0'\] for backend='local_reg' \('dt0': diffrax's dt0: "
            r"options=\{'step_size': \.\.\.\} here",
        ):
            LocallyRegularized(func, options={"dt0": 0.01})
    LocallyRegularized(DiagonalSDE(), backend="torchsde", options={"dt": 0.1})


def test_an_ode_model_that_draws_nothing_refuses_an_unused_generator():
    from local_reg import RNODERegularized, SteerRegularized, TayNODERegularized

    for make in (Regularized, GloballyRegularized, TayNODERegularized):
        with pytest.raises(ValueError, match="generator is unused here"):
            make(Decay(), generator=torch.Generator())
    with pytest.raises(ValueError, match="generator is unused here"):
        local_reg.global_regularization(Decay(), torch.ones(2), [0.0, 1.0], generator=torch.Generator())
    # The models that draw (t_reg, STEER's end time, RNODE's noise, an SDE's Brownian seeds) take one.
    for make in (LocallyRegularized, SteerRegularized, RNODERegularized):
        make(Decay(), generator=torch.Generator())
    GloballyRegularized(DiagonalSDE(), generator=torch.Generator())
    Regularized(DiagonalSDE(), generator=torch.Generator())


# Stiffness hint ----------------------------------------------------------------------------------


def test_max_steps_on_a_stiff_problem_says_it_is_stiff():
    def stiff(t, y):
        return -1e4 * (y - torch.cos(t))

    with pytest.raises(SolverError, match="max_steps=200 exceeded; the problem looks stiff") as info:
        odeint(stiff, torch.zeros(2, dtype=torch.float64), [0.0, 10.0], max_steps=200)
    assert "raise max_steps" in str(info.value)


@pytest.mark.parametrize(("method", "rtol", "atol"), [("dopri8", 1e-3, 1e-5), ("tsit5", 1e-2, 1e-8)])
def test_max_steps_on_a_fast_oscillator_does_not_say_stiff(method, rtol, atol):
    # y'' = -100^2 y over a long span needs many steps for accuracy, not stability: its steps'
    # |dt| * rho / stability_size is 0.5-0.6 (the oscillator's eigenvalues lie on the imaginary
    # axis), which the former threshold 0.5 called stiff, advising against a looser tolerance.
    def oscillator(t, y):
        return torch.stack([y[1], -1e4 * y[0]])

    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with pytest.raises(SolverError, match=re.escape("exceeded (raise max_steps")) as info:
        odeint(oscillator, y0, [0.0, 2000.0], method=method, rtol=rtol, atol=atol, max_steps=1500)
    assert "looks stiff" not in str(info.value) and "loosen rtol/atol" in str(info.value)


@pytest.mark.parametrize("method", ["bosh3", "heun_euler"])
def test_max_steps_with_a_method_that_cannot_judge_stiffness_says_so(method):
    def stiff(t, y):
        return -1e4 * (y - torch.cos(t))

    expected = f"loosen rtol/atol); {method} has no stiffness estimate to tell whether the problem is stiff"
    with pytest.raises(SolverError, match=re.escape(expected)):
        odeint(stiff, torch.zeros(2, dtype=torch.float64), [0.0, 10.0], method=method, max_steps=200)


def test_a_solution_at_the_edge_of_its_dtypes_range_is_named_as_the_cause():
    # It said "raise max_steps, or loosen rtol/atol" while y sat at float32's largest value and the
    # steps shrank to keep it finite: neither helps.
    growth = torch.tensor([1e37])
    with pytest.raises(
        SolverError, match=r"largest \|y\| 3.403e\+38, the dtype's largest value: the solution overflows"
    ) as info:
        odeint(lambda t, y: y, growth, [0.0, 100.0], max_steps=300)
    assert "solve in float64" in str(info.value) and "loosen" not in str(info.value)
    # In float64 the trial steps overflow first: that is said, and the range too.
    with pytest.raises(SolverError, match=r"kept turning non-finite.*near the largest torch\.float64 value"):
        odeint(lambda t, y: y, growth.double() * 1e270, [0.0, 100.0])


def test_steps_whose_increments_round_away_in_the_states_dtype_are_a_solver_error():
    """y' = y from 1e37 in float32 passes float32's largest value at t = 3.5272: the state was
    pinned there step after step (3.402823e38 returned for t = 3.5274, an error of 8e-4, silently)
    or ground on to max_steps, its steps (1e-8) far above the loop's underflow threshold."""
    with pytest.raises(
        SolverError, match=r"100 accepted steps in a row .* round away in float32 .*overflows it"
    ) as info:
        odeint(lambda t, y: y, torch.tensor([1e37]), [0.0, 3.5274], max_steps=10**6)
    assert 3.527 < info.value.t < 3.5274 and info.value.n_steps < 1000  # not at max_steps
    # Increments below the state's resolution without overflow: named too. A zero derivative adds
    # nothing: no stall (the same steps reach max_steps); nor a step growing out of a tiny first one.
    for rate, span, max_step, message in (
        (1.0, 1.0, 1e-8, r"round away in float32 \(largest \|y\| 1e\+08\)"),
        (0.0, 1e4, 1e-3, r"max_steps=500 exceeded"),
    ):
        with pytest.raises(SolverError, match=message):
            odeint(
                lambda t, y, rate=rate: torch.full_like(y, rate),
                torch.tensor([1e8]),
                [0.0, span],
                controller=local_reg.PIController(max_step=max_step),
                max_steps=500,
            )
    grown = odeint(decay, torch.ones(2, dtype=torch.float64), [0.0, 1.0], first_step=1e-300)
    assert grown.ys[-1, 0].item() == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_an_rtol_below_float64s_precision_does_not_advise_float64():
    with pytest.raises(SolverError, match=r"below what torch.float64 resolves.*loosen rtol\)") as info:
        odeint(
            rotation,
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            [0.0, 1.0],
            rtol=1e-20,
            atol=1e-20,
            max_steps=300,
        )
    assert "solve in float64" not in str(info.value)


def test_max_steps_with_steps_held_at_max_step_names_max_step():
    with pytest.raises(SolverError, match=r"held at controller.max_step=0.0001.*a longer max_step"):
        odeint(
            rotation,
            torch.tensor([1.0, 0.0]),
            [0.0, 1.0],
            controller=local_reg.PIController(max_step=1e-4),
            max_steps=300,
        )


def test_max_steps_on_a_non_stiff_problem_gives_no_stiffness_hint():
    with pytest.raises(SolverError, match="max_steps=10 exceeded") as info:
        odeint(rotation, torch.tensor([1.0, 0.0], dtype=torch.float64), [0.0, 100.0], max_steps=10)
    assert "stiff" not in str(info.value)


def test_a_failing_adjoint_backward_solve_names_that_solve_and_its_settings():
    """The backsolve adjoint's backward solve has its own tolerances and ``max_steps``: a failure
    there says so, rather than pointing at the forward solve's settings, which succeeded."""
    func = Decay()
    y0 = torch.ones(3, dtype=torch.float64, requires_grad=True)
    gradient = BacksolveAdjoint(rtol=1e-10, atol=1e-10, max_steps=5)
    ys = odeint(func, y0, [0.0, 1.0, 2.0], method="heun_euler", gradient=gradient).ys
    with pytest.raises(SolverError, match=r"backsolve adjoint, backward solve from t=2\.0 to t=1\.0") as info:
        ys.sum().backward()
    assert "max_steps=5 exceeded (raise BacksolveAdjoint(max_steps=...)" in str(info.value)
    assert info.value.n_steps == 5 and 1.0 < info.value.t < 2.0


# Devices -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_solve_and_gradients_stay_on_y0s_device_and_dtype(device, gradient):
    func = Decay(0.7).to(device)
    y0 = torch.ones(3, dtype=torch.float64, device=device, requires_grad=True)
    solution = odeint(func, y0, torch.linspace(0, 1, 3), gradient=gradient, rtol=1e-8, atol=1e-10)
    assert solution.ys.device == y0.device and solution.ys.dtype == y0.dtype
    assert solution.ts.device == y0.device and solution.ts.dtype == y0.dtype
    solution.ys[-1].sum().backward()
    exact = math.exp(-0.7)
    assert y0.grad.device == y0.device
    assert torch.allclose(y0.grad.cpu(), torch.full((3,), exact, dtype=torch.float64), rtol=1e-5)
    assert func.rate.grad.item() == pytest.approx(-3 * exact, rel=1e-5)  # d/da 3 e^{-a}


@pytest.mark.parametrize("device", DEVICES)
def test_sde_and_regularized_models_stay_on_y0s_device(device):
    y0 = torch.ones(2, 3, device=device)
    solution = sdeint(DiagonalSDE().to(device), y0, [0.0, 1.0], generator=torch.Generator().manual_seed(0))
    assert solution.ys.device == y0.device and solution.ys.dtype == y0.dtype
    model = LocallyRegularized(Decay(dtype=torch.float32).to(device))
    ys = model(y0, [0.0, 1.0])
    assert ys.device == y0.device and model.reg_loss.device == y0.device
    (ys.sum() + model.reg_loss).backward()


# torch.compile -----------------------------------------------------------------------------------


def test_a_compiled_vector_field_gives_the_same_values_and_gradients():
    """What works with torch.compile: compiling the vector field the solver calls (the solver loop
    itself is Python control flow and is not compiled). ``aot_eager`` traces forward and backward
    graphs like the default backend but skips code generation, which keeps the test fast."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    field = NetField(net)
    compiled = torch.compile(field, backend="aot_eager")
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    for gradient in GRADIENTS:
        results = []
        for func in (field, compiled):
            solution = odeint(func, y0, [0.0, 1.0], gradient=gradient)
            grads = torch.autograd.grad(solution.ys[-1].sum(), (y0, *net.parameters()))
            results.append((solution.ys, grads, solution.stats.nfe, solution.stats.nfe_backward))
        (ys, grads, nfe, nfe_backward), (compiled_ys, compiled_grads, compiled_nfe, compiled_backward) = (
            results
        )
        assert (nfe, nfe_backward) == (compiled_nfe, compiled_backward)
        assert torch.allclose(ys, compiled_ys, rtol=1e-12, atol=1e-14)
        for reference, value in zip(grads, compiled_grads, strict=True):
            assert torch.allclose(reference, value, rtol=1e-10, atol=1e-14)
    # In another thread than the forward, the graph-free methods keep func's graph between
    # differentiations (what func captured cannot be told apart there), which the compiled
    # backward's donated buffers refuse: they then differentiate without keeping it.
    for gradient in ("checkpoint", "symplectic", "adjoint"):
        solution = odeint(compiled, y0, [0.0, 1.0], gradient=gradient)
        expected = torch.autograd.grad(odeint(field, y0, [0.0, 1.0], gradient=gradient).ys[-1].sum(), y0)
        y0.grad = None
        in_thread(solution.ys[-1].sum().backward)
        torch.testing.assert_close(y0.grad, expected[0], rtol=1e-10, atol=1e-14)


def in_thread(call):
    """Run ``call`` in a new thread, raising what it raised."""
    import threading

    raised = []

    def run():
        try:
            call()
        except BaseException as error:  # re-raised in the caller's thread
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


def heun_euler_fields(**changes):
    """The keywords of Heun's method with Euler embedded, as a user would write it, with ``changes``."""
    fields = dict(name="mine", c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, error_weights=(-0.5, 0.5))
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(c=(0.0, 0.5)), ValueError, r"c\[1\] = 0.5 must be the sum of a\[1\]"),
        (dict(c=(0.1, 1.0), a=((), (0.9,))), ValueError, r"c\[0\]"),
        (dict(a=((0.5,), (1.0,))), ValueError, "strictly lower-triangular"),
        (dict(b=(0.5, 0.6)), ValueError, r"order-1 condition sum\(b\)"),
        (dict(b=(1.0, 0.0), error_weights=(0.5, -0.5)), ValueError, r"order-2 condition b\.c"),
        (dict(order=0), ValueError, "order must be a positive int"),
        (dict(order=2.5), TypeError, "order must be a positive int, got float"),
        (dict(order=True), TypeError, "order must be a positive int, got bool"),
        (dict(a=((), (math.nan,))), ValueError, r"a\[1\] must be finite"),
        (dict(error_weights=(math.nan, 0.5)), ValueError, "error_weights must be finite"),
        (dict(error_weights=(0.0, 0.0)), ValueError, "error_weights=None"),
        (dict(error_weights=(-0.5, 0.6)), ValueError, "must sum to 0"),
        (dict(b=("0.5", 0.5)), TypeError, "b must hold real numbers"),
        (dict(stiffness_stages=(5, 6)), ValueError, "stiffness_stages"),
        (dict(stiffness_stages=(0, 1)), ValueError, "stiffness_stages"),
        (dict(stability_size=-1.0), ValueError, "stability_size"),
        (dict(stability_size=0.0), ValueError, "stability_size must be positive"),
        (dict(stiffness_stages=(1, 1)), ValueError, "stiffness_stages must be two different"),
        (dict(error_weights=(-0.5, 0.5, 0.0)), ValueError, "error_weights needs one entry per stage"),
        (dict(name=3), TypeError, "name must be a str"),
        (dict(c=(), a=(), b=(), error_weights=None), ValueError, "at least one stage"),
        (dict(b=(1.0,), error_weights=None), ValueError, "one entry per stage, got 2, 2 and 1"),
    ],
)
def test_bad_tableau_is_refused_by_field(changes, error, match):
    # Each of these used to be accepted: an inconsistent c or a zero error estimate integrated to a
    # silently wrong solution, NaN entries ran into a step-size underflow, order 0 divided by zero.
    with pytest.raises(error, match=match):
        local_reg.ButcherTableau(**heun_euler_fields(**changes))


def test_tableau_from_lists_and_numpy_solves_like_the_builtin():
    # Lists (as a user copies coefficients) used to be kept as lists, unhashable in the dense output.
    mine = local_reg.ButcherTableau(
        **heun_euler_fields(a=[[], [1.0]], b=np.array([0.5, 0.5]), c=[0, 1], error_weights=[-0.5, 0.5])
    )
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ours = odeint(decay, y0, t, method=mine)
    builtin = odeint(decay, y0, t, method="heun_euler")
    assert torch.equal(ours.ys, builtin.ys)
    assert ours.stats.nfe == builtin.stats.nfe


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        (dict(order=0), ValueError, "order must be a positive int"),
        (dict(order=True), TypeError, "order must be a positive int, got bool"),
        (dict(coefficients=()), TypeError, "non-empty sequence of rows"),
        (dict(coefficients="12"), TypeError, "non-empty sequence of rows"),
        (dict(coefficients=((), ())), ValueError, "at least one power of theta"),
        (dict(coefficients=((1.0,), (math.inf,))), ValueError, r"coefficients\[1\] must be finite"),
        (dict(coefficients=((1.0,), ("0",))), TypeError, r"coefficients\[1\] must hold real numbers"),
        (dict(extra_stage=1), TypeError, "extra_stage must be a bool"),
        (dict(name=None), TypeError, "name must be a str"),
    ],
)
def test_bad_interpolant_is_refused_by_field(fields, error, match):
    """An ``Interpolant`` took ``order=0`` and any coefficients, and lists made it unhashable."""
    with pytest.raises(error, match=match):
        local_reg.Interpolant(**{"name": "mine", "coefficients": ((1.0,), (0.0,)), "order": 1, **fields})


def test_an_interpolant_from_lists_equals_the_builtin_and_is_hashable():
    builtin = local_reg.get_interpolant("rk4")
    rows = np.array([list(row) for row in builtin.coefficients])
    mine = local_reg.Interpolant("rk4", [list(row) for row in rows], builtin.order, builtin.extra_stage)
    assert mine == builtin and hash(mine) == hash(builtin)
    np.testing.assert_array_equal(mine.weight_matrix([0.3, 1.0]), builtin.weight_matrix([0.3, 1.0]))


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_custom_tableau_gradient_matches_analytic(gradient):
    mine = local_reg.ButcherTableau(**heun_euler_fields())
    func = Decay(0.7)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    odeint(func, y0, t, method=mine, gradient=gradient, rtol=1e-8, atol=1e-10).ys[-1].sum().backward()
    assert func.rate.grad.item() == pytest.approx(-math.exp(-0.7), rel=1e-5)


@pytest.mark.parametrize(
    ("keywords", "error", "match"),
    [
        (dict(beta1=-1.0), ValueError, "beta1 must be positive"),
        (dict(beta1=0.0), ValueError, "beta1 must be positive"),
        (dict(beta1=math.nan), ValueError, "beta1 must be positive"),
        (dict(beta2=math.nan), ValueError, "beta2 must be non-negative and finite"),
        (dict(beta2=-0.04), ValueError, "beta2 must be non-negative and finite"),
        (dict(max_factor=math.inf), ValueError, "1 < max_factor < inf"),
        (dict(beta1="0.1"), TypeError, "beta1 must be a real number"),
        (dict(safety="0.9"), TypeError, "safety must be a real number"),
        (dict(safety=True), TypeError, "safety must be a real number"),
        (dict(beta2=True), TypeError, "beta2 must be a real number"),
        (dict(min_factor=0.0), ValueError, "0 < min_factor"),
    ],
)
def test_pi_controller_bad_values_are_refused(keywords, error, match):
    # A negative or NaN beta1 used to run into a step-size underflow, a string into a TypeError
    # from inside the controller's arithmetic.
    with pytest.raises(error, match=match):
        local_reg.PIController(**keywords)


# 4/21 at order 3 leaves the default beta1 = 1/3 - 0.75 * 4/21 equal to it, exactly in float.
@pytest.mark.parametrize(
    ("method", "beta2"), [("tsit5", 0.3), ("tsit5", 0.2), ("bosh3", 0.25), ("bosh3", 4 / 21)]
)
def test_a_controller_whose_steps_could_never_grow_is_named_before_the_first_step(method, beta2):
    """At a steady error the factor after an accepted step is ``safety * EEst ** (beta2 - beta1)``:
    with ``beta1 <= beta2`` no step grows again, and the solve shrank its steps until ``max_steps``
    or an underflow. A given ``beta2`` that leaves the default ``beta1 = 1/order - 0.75 beta2`` not
    above it is refused when the order is known: by odeint, the backsolve adjoint's own adaptive
    method (before the forward solve), and a regularized model (when it is made)."""
    calls = []

    def counted(t, y):
        calls.append(t)
        return -y

    controller = local_reg.PIController(beta2=beta2)
    match = rf"beta2={beta2:g} leaves the default beta1 .* not above beta2"
    with pytest.raises(ValueError, match=match):
        odeint(counted, torch.ones(1, dtype=torch.float64), [0.0, 1.0], method=method, controller=controller)
    assert len(calls) <= 2  # f(t0, y0) and the first-step heuristic at most: refused before a step
    with pytest.raises(ValueError, match=match):
        odeint(
            counted,
            torch.ones(1, dtype=torch.float64, requires_grad=True),
            [0.0, 1.0],
            method="rk4",
            step_size=0.1,
            controller=controller,
            gradient=BacksolveAdjoint(method=method),
            adjoint_params=(),
        )
    with pytest.raises(ValueError, match=match):
        LocallyRegularized(Decay(), method=method, options={"controller": controller})
    for beta1 in (0.05, 0.3):  # below beta2, and equal to it
        with pytest.raises(ValueError, match=r"beta1 must exceed beta2"):
            local_reg.PIController(beta1=beta1, beta2=0.3)
    # A given beta1 at or below the default beta2 (0.2 / order) too.
    for beta1 in (0.03, 0.04):
        with pytest.raises(ValueError, match=rf"beta1={beta1} is not above the default beta2 = 0.2/5"):
            odeint(
                decay,
                torch.ones(1, dtype=torch.float64),
                [0.0, 1.0],
                controller=local_reg.PIController(beta1=beta1),
            )
    fine = local_reg.PIController(beta1=beta2 + 0.1, beta2=beta2)
    solution = odeint(decay, torch.ones(1, dtype=torch.float64), [0.0, 1.0], method=method, controller=fine)
    assert float(solution.ys[-1]) == pytest.approx(math.exp(-1.0), rel=1e-4)


def test_a_tiny_atol_is_raised_alike_in_step_and_the_backsolve_adjoint():
    """``atol=1e-50`` beside ``rtol > 0`` rounds to 0 in float32: ``step``'s error estimate was NaN
    for an element at exactly 0, and the backsolve adjoint's backward solve failed."""
    y = torch.tensor([1.0, 0.0])
    tiny = local_reg.step(decay, 0.0, y, 0.1, "tsit5", rtol=1e-6, atol=1e-50)
    floor = local_reg.step(decay, 0.0, y, 0.1, "tsit5", rtol=1e-6, atol=torch.finfo(torch.float32).tiny)
    assert torch.isfinite(tiny.error_estimate) and float(tiny.error_estimate) == float(floor.error_estimate)
    y0 = torch.tensor([1.0, 0.0], requires_grad=True)
    ys = odeint(decay, y0, [0.0, 1.0], gradient=BacksolveAdjoint(rtol=1e-6, atol=1e-50), adjoint_params=()).ys
    ys[-1].sum().backward()
    assert float(y0.grad[0]) == pytest.approx(math.exp(-1.0), rel=1e-4)


def test_the_public_step_functions_refuse_what_odeint_refuses():
    """``local_reg.step`` returned a NaN step for a span too long for float32 (and passed func an
    infinite time for a t beyond it), ``initial_step_size`` a NaN step for a NaN ``f0``; the
    baselines failed inside torch on a list ``y0`` or a field of the wrong shape; ``is_sde`` took a
    class for an SDE."""
    y = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"t spans 3e\+37: too long for steps in torch.float32"):
        local_reg.step(decay, 0.0, y, 3e37, "tsit5")
    with pytest.raises(ValueError, match=r"t=1e\+300 \+ dt=0.1 is beyond torch.float32"):
        local_reg.step(decay, 1e300, y, 0.1, "rk4")
    with pytest.raises(ValueError, match="k1 is not finite"):
        local_reg.step(decay, 0.0, y, 0.1, "tsit5", k1=torch.full((2,), math.nan))
    # float32 stage times that all round to t = 1e8 (odeint refuses such times as one value).
    with pytest.raises(
        ValueError,
        match=r"times 100000000.0 and .* are one value in torch.float32, .* first stage time, t \+ 0.161 dt",
    ):
        local_reg.step(decay, 1e8, y, 4.0, "tsit5")
    with pytest.raises(
        ValueError, match=r"times 10000.0 and 10000.0004 are one value in torch.float32, .* t \+ 0.2 dt"
    ):
        local_reg.step(decay, 1e4, y, 0.002, "dopri5")  # t + dt is another float32, t + 0.2 dt is not
    # The state is the argument y here, not odeint's y0.
    with pytest.raises(ValueError, match=r"k1 has shape \(3,\), expected \(2,\) \(from y's shape\)"):
        local_reg.step(decay, 0.0, y, 0.1, "tsit5", k1=torch.ones(3))
    with pytest.raises(ValueError, match=r"func returned shape \(\), expected \(2,\) \(from y's shape\)"):
        local_reg.step(lambda t, y: y.sum(), 0.0, y, 0.1, "tsit5")
    with pytest.raises(ValueError, match="f0 is not finite"):
        local_reg.initial_step_size(decay, 0.0, y, torch.full((2,), math.nan), 5, 1e-6, 1e-8)
    for functional in (local_reg.rnode_regularization, local_reg.taynode_regularization):
        with pytest.raises(TypeError, match=re.escape("y0 must be a torch.Tensor, got list")):
            functional(Decay(dtype=torch.float32), [1.0, 1.0], [0.0, 1.0])
        with pytest.raises(ValueError, match=r"func returned shape \(\), expected \(2,\)"):
            functional(lambda t, y: y.sum(), torch.ones(2), [0.0, 1.0], adjoint_params=())
    assert local_reg.is_sde(DiagonalSDE()) and not local_reg.is_sde(DiagonalSDE)
    with pytest.raises(
        TypeError, match=r"sde must be an SDE instance, got the class DiagonalSDE: pass DiagonalSDE\(\)"
    ):
        sdeint(DiagonalSDE, torch.ones(2, 1), [0.0, 1.0])


def test_a_class_given_as_sde_is_named_as_a_class_wherever_an_sde_is_checked():
    """sdeint and compat.sdeint named a class without f and g by its type ("got type"), where the
    SDE step functions named the class: each checked for a class by a copy of its own."""
    from local_reg import compat
    from local_reg.sde import sde_step

    class Field(torch.nn.Module):
        noise_type = "diagonal"

        def forward(self, t, y):
            return -y

    y = torch.ones(2, 1)
    for solve in (
        lambda: sdeint(Field, y, [0.0, 1.0]),
        lambda: compat.sdeint(Field, y, torch.tensor([0.0, 1.0]), dt=0.1),
        lambda: sde_step(Field, "diagonal", 0.0, y, 0.1, torch.ones(2, 1), rtol=1e-2, atol=1e-2),
    ):
        with pytest.raises(
            TypeError, match=r"^sde must be an SDE instance, got the class Field: pass Field\(\)$"
        ):
            solve()


def test_the_backsolve_adjoints_own_solve_is_checked_before_the_forward_solve():
    """The backward solve's own method may have larger coefficients than the forward's (rk4 1,
    tsit5 12.9), and its own tolerances may be refused: both were found only in ``backward()``
    (torch's bare overflow error; the atol message after the whole forward solve)."""
    calls = []

    def counted(t, y):
        calls.append(t)
        return torch.zeros_like(y)

    y0 = torch.ones(2, requires_grad=True)
    for gradient in (
        BacksolveAdjoint(method="tsit5"),
        BacksolveAdjoint(rtol=0.0, atol=1e-50),
    ):
        span = [0.0, 1e38] if gradient.rtol is None else [0.0, 1.0]
        with pytest.raises(ValueError, match=r"t spans 1e\+38: too long|atol=1e-50 with rtol=0"):
            odeint(
                counted, y0, span, method="rk4", step_size=span[1] / 10, gradient=gradient, adjoint_params=()
            )
    assert calls == []


def test_a_field_that_is_nan_past_a_time_is_named_non_finite_not_a_blow_up():
    """Past t = 0.5 the field is NaN: the step shrinks away from non-finite trials, with finite
    slivers accepted up to 0.5 between them. The underflow used to read as a blow-up ("step size
    underflow") whenever the last attempt was such a sliver."""

    def nan_past_half(t, y):
        return y * float("nan") if float(t) > 0.5 else -y

    with pytest.raises(
        SolverError, match=r"non-finite state or derivative: the trial steps kept turning non-finite"
    ):
        odeint(nan_past_half, torch.ones(1, dtype=torch.float64), [0.0, 1.0])


def test_record_states_and_step_callbacks_are_checked_when_the_solve_is_set_up():
    """``record_states="no"`` recorded every state; a callback that is not callable failed at the
    first step with Python's bare "'int' object is not callable" (or never, for ``reject``)."""
    with pytest.raises(TypeError, match="record_states must be a bool, got str"):
        odeint(decay, torch.ones(1, dtype=torch.float64), [0.0, 1.0], record_states="no")
    with pytest.raises(TypeError, match="record_states must be a bool"):
        sdeint(DiagonalSDE(), torch.ones(2, 1, dtype=torch.float64), [0.0, 1.0], record_states=1)
    for name in ("step", "accept", "reject", "stop"):
        with pytest.raises(TypeError, match=f"callbacks.{name} must be callable or None, got int"):
            local_reg.StepCallbacks(**{name: 3})


def test_pi_controller_large_beta1_does_not_overflow():
    # EEst ** -beta1 overflowed Python's float power (an OverflowError) on a small error estimate.
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solution = odeint(decay, y0, t, controller=local_reg.PIController(beta1=100.0), rtol=1e-8, atol=1e-10)
    assert solution.ys[-1].item() == pytest.approx(math.exp(-1.0), rel=1e-6)


def test_step_checks_norm_and_grad_times_and_takes_rtol_zero():
    y = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(TypeError, match="norm must return a 0-dim tensor"):
        local_reg.step(decay, 0.0, y, 0.1, "tsit5", norm=lambda error: 1.0)
    with pytest.raises(ValueError, match="t requires grad"):
        local_reg.step(decay, torch.tensor(0.0, requires_grad=True), y, 0.1, "tsit5")
    with pytest.raises(ValueError, match="dt requires grad"):
        local_reg.step(decay, 0.0, y, torch.tensor(0.1, requires_grad=True), "tsit5")
    # rtol = 0 is a pure absolute tolerance, as in odeint: EEst = rms(err / atol).
    result = local_reg.step(decay, 0.0, y, 0.1, "tsit5", rtol=0.0, atol=1e-8)
    error = 0.1 * sum(w * k for w, k in zip(get_tableau("tsit5").error_weights, result.stages, strict=True))
    assert result.error_estimate.item() == pytest.approx(local_reg.rms_norm(error / 1e-8).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(order=0), ValueError, "order must be a positive int"),
        (dict(rtol=-1e-6), ValueError, "rtol must be non-negative"),
        (dict(f0=torch.ones(3, dtype=torch.float64)), ValueError, r"f0 has shape \(3,\)"),
        (dict(f0=None), TypeError, "f0 must be a torch.Tensor"),
        (dict(t0=math.nan), ValueError, "t0 must be finite"),
        (dict(direction=0.0), ValueError, "direction must be"),
        (dict(direction=2.0), ValueError, "direction must be"),
        (dict(t_end=-1.0), ValueError, "t_end=-1.0 lies behind t0"),
        (dict(func=lambda t, y: torch.ones(3, dtype=torch.float64)), ValueError, "func returned shape"),
        (dict(norm=lambda error: 1.0), TypeError, "norm must return"),
        (dict(time_dtype=torch.int64), TypeError, "time_dtype"),
    ],
)
def test_initial_step_size_bad_arguments_are_refused(changes, error, match):
    # It was unchecked: order 0 divided by zero, a wrong-shape f0 or func broadcast to a number,
    # direction 2 or a t_end behind t0 gave a step size without complaint.
    y0 = torch.tensor([1.0], dtype=torch.float64)
    arguments = dict(func=decay, t0=0.0, y0=y0, f0=-y0, order=5, rtol=1e-6, atol=1e-8) | changes
    with pytest.raises(error, match=match):
        local_reg.initial_step_size(**arguments)


def test_initial_step_size_is_the_solvers():
    y0 = torch.tensor([1.0, 3.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    dt, nfe = local_reg.initial_step_size(decay, 0.0, y0, -y0, 5, 1e-6, 1e-8, t_end=1.0)
    assert nfe == 1
    assert odeint(decay, y0, t).steps.dt[0] <= dt
    assert odeint(decay, y0, t, first_step=dt).ys.equal(odeint(decay, y0, t).ys)


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic", "adjoint", "interpolating_adjoint"])
def test_adjoint_params_behind_a_captured_non_leaf_get_their_gradient(gradient):
    """func captures w = 2 * raw and adjoint_params lists raw (torchcde's coefficients behind a
    linear interpolation's slopes): the backward pass differentiates func through w's graph at
    every evaluation, as torchdiffeq's adjoint does; the first freed it, and the next was refused.
    A graph some other backward pass freed is named, with the ways out."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    raw = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    w = 2 * raw
    for listed in ((raw,), (w,)):
        raw.grad = None
        solution = odeint(
            lambda t, y: -w * y, y0, t, gradient=gradient, adjoint_params=listed, rtol=1e-9, atol=1e-11
        )
        solution.ys[-1].sum().backward()
        assert raw.grad.item() == pytest.approx(-2 * math.exp(-1.0), rel=1e-6)
    # A backward pass in another thread than the forward (autograd's device threads on a GPU),
    # where autograd's node numbers cannot tell what was made before func was called.
    w, raw.grad = 2 * raw, None
    solution = odeint(
        lambda t, y: -w * y, y0, t, gradient=gradient, adjoint_params=(raw,), rtol=1e-9, atol=1e-11
    )
    in_thread(solution.ys[-1].sum().backward)
    assert raw.grad.item() == pytest.approx(-2 * math.exp(-1.0), rel=1e-6)
    # Solved in one thread that has ended, differentiated in another, which may get its ident.
    raw.grad, kept = None, []
    in_thread(
        lambda: kept.append(
            odeint(
                lambda t, y: -w * y, y0, t, gradient=gradient, adjoint_params=(raw,), rtol=1e-9, atol=1e-11
            )
        )
    )
    in_thread(kept[0].ys[-1].sum().backward)
    assert raw.grad.item() == pytest.approx(-2 * math.exp(-1.0), rel=1e-6)
    # Made in this thread after hundreds of nodes, solved and differentiated in a new one whose
    # count starts at 0: w's node numbered above the solve's marker was taken as func's own, its
    # graph freed by the first differentiation, and the next refused.
    for _ in range(100):
        (raw * 1.0).exp().backward()
    w, raw.grad = 2 * raw, None
    in_thread(
        lambda: (
            odeint(
                lambda t, y: -w * y, y0, t, gradient=gradient, adjoint_params=(raw,), rtol=1e-9, atol=1e-11
            )
            .ys[-1]
            .sum()
            .backward()
        )
    )
    assert raw.grad.item() == pytest.approx(-2 * math.exp(-1.0), rel=1e-6)
    solution = odeint(lambda t, y: -w * y, y0, t, gradient=gradient, adjoint_params=(raw,))
    w.backward()  # frees w's graph
    with pytest.raises(ValueError, match=r"whose graph was freed, by an earlier backward pass"):
        solution.ys[-1].sum().backward()


@pytest.mark.parametrize("make", [local_reg.GradientRatio, lambda p: local_reg.RatioWeight(parameters=p)])
@pytest.mark.parametrize(
    ("parameters", "error", "match"),
    [
        (3, TypeError, "parameters must be an iterable of tensors"),
        (torch.nn.Parameter(torch.ones(2)), TypeError, "got a tensor"),
        ([1.0], TypeError, "parameters must be an iterable of tensors"),
        ([], ValueError, "no tensor that requires grad"),
        ([torch.ones(2)], ValueError, "no tensor that requires grad"),
    ],
)
def test_gradient_ratio_parameters_are_checked(make, parameters, error, match):
    # GradientRatio took a tensor's rows as parameters (a wrong ratio), failed with "'int' object is
    # not iterable" or "'float' object has no attribute 'requires_grad'", and with nothing to measure
    # failed at its first use with autograd's "inputs argument to grad() cannot be empty".
    with pytest.raises(error, match=match):
        make(parameters)


def test_gradient_ratio_refuses_a_vector_reg_loss_and_measures_a_scalar_one():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    ratio = local_reg.GradientRatio([p])
    with pytest.raises(ValueError, match=r"reg_loss must be one value \(a 0-dim tensor\), got shape \(2,\)"):
        ratio.before_backward(3 * p)
    assert math.isnan(ratio.after_backward())  # nothing measured, as documented
    reg_loss, task_loss = 3 * p.sum(), (p**2).sum()
    ratio.before_backward(reg_loss)
    (task_loss + reg_loss).backward()
    # d reg / dp = (3, 3), d task / dp = 2 p = (2, 4).
    assert ratio.after_backward() == pytest.approx(math.sqrt(18 / 20), rel=1e-12)


@pytest.mark.parametrize(
    "schedule",
    [
        local_reg.ConstantWeight(1.0),
        local_reg.ExponentialDecay(1.0, 0.1, 10),
        local_reg.AdaptiveWeight(),
        local_reg.RatioWeight(),
    ],
    ids=type,
)
@pytest.mark.parametrize("state", [{}, {"w": 1.0}, None])
def test_weight_load_state_dict_without_an_iteration_is_named(schedule, state):
    # It was a bare KeyError: 'iteration' (or a TypeError from indexing None).
    with pytest.raises((ValueError, TypeError), match="state"):
        schedule.load_state_dict(state)


def test_weight_load_state_dict_of_another_schedule_is_refused():
    with pytest.raises(ValueError, match="RatioWeight state is missing"):
        local_reg.RatioWeight().load_state_dict(local_reg.AdaptiveWeight().state_dict())
    with pytest.raises(ValueError, match="AdaptiveWeight state is missing"):
        local_reg.AdaptiveWeight().load_state_dict(local_reg.RatioWeight().state_dict())


def test_a_constant_weight_warns_when_it_drops_another_schedules_state():
    # It dropped a self-tuning weight's state without a word.
    ratio = local_reg.RatioWeight()
    constant = local_reg.ConstantWeight(0.5)
    with pytest.warns(UserWarning, match=r"ConstantWeight.load_state_dict ignores the state's keys \['"):
        constant.load_state_dict(ratio.state_dict())
    assert constant() == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a schedule's own state loads without a word
        constant.load_state_dict(local_reg.ConstantWeight(2.0).state_dict())
        ratio.load_state_dict(local_reg.RatioWeight().state_dict())


_decay, _adaptive = local_reg.ExponentialDecay, local_reg.AdaptiveWeight


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: _decay(0.0, 1.0, 10), ValueError, "w0 must be positive"),
        (lambda: _decay(1.0, 0.0, 10), ValueError, "w1 must be positive"),
        (lambda: _decay(2.0, 1.0, 10.0), TypeError, "n_steps must be a positive int, got float"),
        (lambda: _decay(2.0, 1.0, 0), ValueError, "n_steps must be a positive int, got 0"),
        (lambda: _decay(2.0, 1.0, 10).value(-1), ValueError, "iteration must be a non-negative int, got -1"),
        (
            lambda: _decay(2.0, 1.0, 10).value(0.5),
            TypeError,
            "iteration must be a non-negative int, got float",
        ),
        (lambda: _adaptive(w_min=10.0, w_max=0.1), ValueError, "w_min must not exceed w_max"),
        (lambda: _adaptive(warmup=2.0), TypeError, "warmup must be a non-negative int, got float"),
        (lambda: _adaptive(warmup=-1), ValueError, "warmup must be a non-negative int, got -1"),
        (lambda: local_reg.RatioWeight(every=1.5), TypeError, "every must be a positive int, got float"),
    ],
)
def test_schedule_arguments_are_named_with_the_right_error_type(make, error, match):
    # ExponentialDecay.value(-1) extrapolated above w0, w_min > w_max read as "initial must lie in
    # [10, 0.1]", a float count was a ValueError and a zero weight did not say which.
    with pytest.raises(error, match=match):
        make()


def test_evaluate_refuses_a_t_that_requires_grad_and_differentiates_the_parameters():
    # t's gradient used to be silently None (the times are read as floats).
    func = Decay(0.7)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solution = odeint(func, y0, t, dense=True, rtol=1e-10, atol=1e-12)
    query = torch.tensor([0.3, 0.55], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape("not differentiable w.r.t. t")):
        solution.evaluate(query)
    with torch.no_grad():
        assert solution.evaluate(query).shape == (2, 1)
    # Under gradient="direct" the parameters' gradient is d/da sum exp(-a s) = -sum s exp(-a s).
    solution.evaluate(query.detach()).sum().backward()
    exact = sum(-s * math.exp(-0.7 * s) for s in (0.3, 0.55))
    assert func.rate.grad.item() == pytest.approx(exact, rel=1e-6)


def test_solve_options_check_themselves_once_made_and_stay_checked():
    """``SolveOptions`` is checked on construction (and on ``dataclasses.replace``) and is frozen, so
    no solve can start from options that skipped the checks."""
    import dataclasses

    from local_reg._integrate import SolveOptions
    from local_reg.tableaus import get_tableau

    options = SolveOptions(rtol=1e-6, atol=1e-8, tableau=get_tableau("tsit5"), compile=True)
    assert options.compile == {} and options.controller == local_reg.PIController()
    with pytest.raises(ValueError, match="atol"):
        SolveOptions(rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match="rtol"):
        dataclasses.replace(options, rtol=-1.0)
    with pytest.raises(ValueError, match="'rk4' is fixed-step: pass step_size"):
        dataclasses.replace(options, tableau=get_tableau("rk4"))
    with pytest.raises(TypeError, match="dense must be a bool"):
        SolveOptions(rtol=1e-6, atol=1e-8, dense=1)
    with pytest.raises(TypeError, match="controller must be a PIController"):
        SolveOptions(rtol=1e-6, atol=1e-8, controller="pi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rtol = 1.0


def test_sdeint_refuses_a_drift_or_diffusion_that_changes_its_input_in_place():
    # As odeint does: the caller's y0 (and every later state the solver reuses) was silently changed.
    def clamp(t, y):
        y.clamp_(min=0.0)
        return 0.1 * torch.ones_like(y)

    for sde in (DiagonalSDE(g=clamp), DiagonalSDE(f=lambda t, y: y.mul_(2.0))):
        y0 = torch.tensor([[-1.0, 1.0]])
        with pytest.raises(ValueError, match=r"\((drift|diffusion)\) modified its input y in place"):
            sdeint(sde, y0, [0.0, 1.0], step_size=0.5)


@pytest.mark.parametrize("reused", ["drift", "diffusion"])
def test_sdeint_refuses_a_drift_or_diffusion_that_reuses_an_output_buffer(reused):
    # As odeint does: a step's drift or diffusion was silently replaced by a later call's.
    constant = reusing_one_buffer(lambda t, y: 0.1 * torch.ones_like(y))
    sde = DiagonalSDE(f=reusing_one_buffer(lambda t, y: -y)) if reused == "drift" else DiagonalSDE(g=constant)
    with pytest.raises(ValueError, match=rf"\({reused}\) changed a tensor it returned earlier in place"):
        sdeint(sde, torch.tensor([[-1.0, 1.0]]), [0.0, 1.0], step_size=0.25)


def test_refusals_name_what_the_caller_gave():
    # An SDE's probe_dtype refusal named an internal class (SDEProblem); compat's adjoint norm
    # refusal named 'seminorm' alone, where 'default' is taken too.
    with pytest.raises(ValueError, match=r"needs an ODE whose func is an nn\.Module, got an SDE$"):
        Regularized(DiagonalSDE(), local_reg.LocalPenalty(probe_dtype="float64"))
    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"only 'seminorm' and 'default' are supported"):
        local_reg.compat.odeint_adjoint(
            Decay(), y0, torch.tensor([0.0, 1.0]), adjoint_options={"norm": lambda x: x.abs().max()}
        )


def test_sdeint_refuses_output_times_it_cannot_each_end_a_step_on():
    # Their SolverError advised step_to_outputs, an odeint option sdeint does not have.
    close = [0.0, 0.5, math.nextafter(0.5, 1.0), 1.0]
    with pytest.raises(ValueError, match=r"t holds 0\.5 and 0\.5000000000000001, within a few ulps"):
        sdeint(DiagonalSDE(), torch.ones(2, 1), close)
    ones = torch.ones(2, 1, dtype=torch.float64)  # in float32 0.5 + 1e-9 is 0.5 (refused: one value)
    assert sdeint(DiagonalSDE(), ones, [0.0, 0.5, 0.5 + 1e-9, 1.0]).ys.shape == (4, 2, 1)


def test_sdeint_refuses_a_generator_its_given_brownian_motion_leaves_unused():
    import torchsde

    bm = torchsde.BrownianInterval(0.0, 1.0, size=(2, 1), entropy=0)
    with pytest.raises(ValueError, match="with bm given it would be unused"):
        sdeint(DiagonalSDE(), torch.ones(2, 1), [0.0, 1.0], bm=bm, generator=torch.Generator())
    # So do the SDE penalties that draw nothing else; the local one draws t_reg from it.
    y0, t = torch.ones(2, 1), [0.0, 1.0]
    with pytest.raises(ValueError, match="generator is unused here: GlobalPenalty draws nothing"):
        local_reg.global_regularization(DiagonalSDE(), y0, t, bm=bm, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator is unused here"):
        GloballyRegularized(DiagonalSDE(), generator=torch.Generator()).penalize(y0, t, bm=bm)
    LocallyRegularized(DiagonalSDE(), generator=torch.Generator()).penalize(y0, t, bm=bm)


def test_sde_step_checks_its_noise_type_step_and_increment():
    from local_reg.sde import sde_step

    y = torch.ones(3, 2)
    step = dict(rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=r"dw has shape \(2,\), expected \(3, 2\) \(from y's shape"):
        sde_step(DiagonalSDE(), "diagonal", 0.0, y, 0.1, torch.ones(2), **step)  # one row for all
    # A non-finite increment, as sdeint's Brownian motion refuses one: it gave a NaN state silently.
    for bad in (math.nan, math.inf):
        with pytest.raises(
            ValueError, match=r"dw must be finite, got 1 non-finite entries \(the first at index \(1, 0\)"
        ):
            sde_step(
                DiagonalSDE(),
                "diagonal",
                0.0,
                y,
                0.1,
                torch.ones(3, 2).index_put_((torch.tensor(1), torch.tensor(0)), torch.tensor(bad)),
                **step,
            )
    for dt in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="dt must be positive and finite"):
            sde_step(DiagonalSDE(), "diagonal", 0.0, y, dt, torch.ones(3, 2), **step)
    with pytest.raises(ValueError, match="unknown noise_type 'general'"):
        sde_step(DiagonalSDE(), "general", 0.0, y, 0.1, torch.ones(3, 2), **step)
    # The tolerances, as local_reg.step checks them: NaN gave a NaN estimate, inf accepted any step,
    # negative ones a plausible number (the sign squared away), and so did the initial step size.
    from local_reg.sde import sde_initial_step_size

    for tolerances, match in (
        (dict(rtol=math.nan, atol=1e-2), "rtol must be"),
        (dict(rtol=1e-2, atol=math.inf), "atol must be positive and finite"),
        (dict(rtol=-1.0, atol=-1.0), "rtol must be"),
        (dict(rtol="a", atol=1e-2), "rtol must be"),
    ):
        with pytest.raises((TypeError, ValueError), match=match):
            sde_step(DiagonalSDE(), "diagonal", 0.0, y, 0.1, torch.ones(3, 2), **tolerances)
        with pytest.raises((TypeError, ValueError), match=match):
            sde_initial_step_size(DiagonalSDE(), "diagonal", 0.0, y, y, y, **tolerances)
    # A given f0 or g0 that is not finite (a NaN step size, or one of 5e-320 for an infinite g0),
    # as odeint's step and initial step refuse theirs; flags that are not bools (a truthy string
    # estimated the error with estimate_error="no").
    for bad in (math.nan, math.inf):
        for name in ("f0", "g0"):
            given = {"f0": y, "g0": y, name: torch.full_like(y, bad)}
            with pytest.raises(ValueError, match=f"^{name} is not finite$"):
                sde_initial_step_size(DiagonalSDE(), "diagonal", 0.0, y, given["f0"], given["g0"], **step)
            with pytest.raises(ValueError, match=f"^{name} is not finite$"):
                sde_step(
                    DiagonalSDE(), "diagonal", 0.0, y, 0.1, torch.ones(3, 2), **step, **{name: given[name]}
                )
    for flag in ("estimate_error", "milstein"):
        with pytest.raises(TypeError, match=f"^{flag} must be a bool, got str"):
            sde_step(DiagonalSDE(), "diagonal", 0.0, y, 0.1, torch.ones(3, 2), **step, **{flag: "no"})


def test_a_field_class_in_place_of_an_instance_is_named():
    """The class is callable (its constructor): the models took it with a plain function's warning
    and failed at the first call inside torch ("empty(): argument 'size'"), odeint alike."""

    class Field(torch.nn.Module):
        def __init__(self, d=2, h=16):
            super().__init__()
            self.lin = torch.nn.Linear(d, d)

        def forward(self, t, y):
            return self.lin(y)

    match = r"func must be a vector field, got the class Field: pass an instance, Field\(\.\.\.\)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no plain function's warning first
        for call in (
            lambda: LocallyRegularized(Field),
            lambda: odeint(Field, torch.ones(2), [0.0, 1.0]),
            lambda: local_reg.step(Field, 0.0, torch.ones(2), 0.1, "tsit5"),
            # A tuple or complex state's own callable check named a plain non-callable only.
            lambda: odeint(Field, (torch.ones(2), torch.ones(2)), [0.0, 1.0]),
            lambda: odeint(Field, torch.ones(2, dtype=torch.complex128), [0.0, 1.0]),
            lambda: local_reg.compat.odeint(Field, (torch.ones(2), torch.ones(2)), torch.tensor([0.0, 1.0])),
        ):
            with pytest.raises(TypeError, match=match):
                call()


def test_a_constant_weight_set_after_construction_is_checked():
    from local_reg.regularization import ConstantWeight

    weight = ConstantWeight(1.0)
    with pytest.raises(ValueError, match="weight must be non-negative and finite, got -5"):
        weight.weight = -5  # it was taken: a negative reg_loss
    weight.weight = 2
    assert weight.value(3) == 2.0 and weight.weight == 2.0
    with pytest.raises(ValueError, match="value must be non-negative"):
        ConstantWeight(-1.0)


def test_a_step_penalty_beside_times_requiring_grad_is_refused():
    """The penalties' steps have fixed sizes: their gradient to ``t`` was 0 at the end and only the
    start state's share at the start (of the wrong sign on ``y' = -0.8 y``), silently."""
    penalty = lambda result, dt: abs(dt) * (result.stages[0] ** 2).sum()  # noqa: E731
    y0 = torch.tensor([1.5], dtype=torch.float64)
    t = torch.tensor([0.2, 1.7], dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"t requires grad beside a step_penalty.*pass detached times \(t.detach\(\)"
    ):
        odeint(decay, y0, t, step_penalty=penalty)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="t0 requires grad beside a step_penalty"):
        local_reg.odeint_event(decay, y0, t0, event_fn=lambda t, y: y - 1.0, step_penalty=penalty)
    # Without the penalty, or with detached times, both solve (and t gets its gradient).
    (
        odeint(decay, y0, t).ys[-1].sum()
        + odeint(decay, y0, t.detach(), step_penalty=penalty).penalties.sum()
    ).backward()
    assert t.grad is not None and float(t.grad[1]) != 0.0


def test_sde_step_functions_check_their_sde_times_state_and_given_evaluations():
    """As local_reg.step and initial_step_size check theirs: a NaN time, a ``t`` requiring grad, an
    integer state, a drift of another shape (given or returned) and a diffusion of another noise
    type's shape were taken (silently broadcast, dropped or failing inside torch), and the initial
    step size returned a negative or zero step for a safety or growth out of range."""
    from local_reg.sde import sde_initial_step_size, sde_step

    y, dw = torch.ones(4, 3), torch.zeros(4, 3)
    step = functools.partial(sde_step, rtol=1e-3, atol=1e-3)

    class ShortDrift(DiagonalSDE):
        def f(self, t, y):
            return -y[0]

    for call, error, match in (
        (lambda: step(DiagonalSDE(), "diagonal", math.nan, y, 0.01, dw), ValueError, "t must be finite"),
        (
            lambda: step(DiagonalSDE(), "diagonal", torch.tensor(0.0, requires_grad=True), y, 0.01, dw),
            ValueError,
            "t requires grad",
        ),
        (
            lambda: step(DiagonalSDE(), "diagonal", 0.0, y.long(), 0.01, dw),
            TypeError,
            "y must have a floating",
        ),
        (
            lambda: step(DiagonalSDE(), "diagonal", 0.0, y[0], 0.01, dw),
            ValueError,
            r"y must have shape \(batch",
        ),
        (lambda: step(DiagonalSDE, "diagonal", 0.0, y, 0.01, dw), TypeError, "pass DiagonalSDE()"),
        (
            lambda: step(object(), "diagonal", 0.0, y, 0.01, dw),
            TypeError,
            "sde must be an object with methods",
        ),
        (
            lambda: step(DiagonalSDE(), "diagonal", 0.0, y, 0.01, dw, f0=-y[0]),
            ValueError,
            r"f0 has shape \(3,\)",
        ),
        (lambda: step(DiagonalSDE(), "scalar", 0.0, y, 0.01, dw, g0=y), ValueError, "g0 has shape"),
        (
            lambda: step(ShortDrift(), "diagonal", 0.0, y, 0.01, dw),
            ValueError,
            r"sde.f \(drift\) returned shape",
        ),
    ):
        with pytest.raises(error, match=match):
            call()
    start = functools.partial(sde_initial_step_size, DiagonalSDE(), "diagonal", rtol=1e-3, atol=1e-3)
    for kwargs, error, match in (
        (dict(t0=math.nan, y0=y, f0=y, g0=y), ValueError, "t0 must be finite"),
        (dict(t0=0.0, y0=y, f0=y, g0=y, safety=-1.0), ValueError, "safety must be positive"),
        (dict(t0=0.0, y0=y, f0=y, g0=y, safety=2.0), ValueError, r"safety must be in \(0, 1\]"),
        (dict(t0=0.0, y0=y, f0=y, g0=y, max_growth=0.5), ValueError, "max_growth must be at least 1"),
        (dict(t0=0.0, y0=y, f0=y, g0=y, t_end=math.inf), ValueError, "t_end must be finite"),
        # It was read as |t_end - t0| (the ODE heuristic refuses it too).
        (dict(t0=0.0, y0=y, f0=y, g0=y, t_end=-1e-3), ValueError, "t_end=-0.001 lies behind t0=0.0"),
        (dict(t0=0.0, y0=y, f0=None, g0=y), TypeError, "f0 and g0 must be"),
        (dict(t0=0.0, y0=y, f0=y[:2], g0=y), ValueError, "f0 has shape"),
    ):
        with pytest.raises(error, match=match):
            start(**kwargs)
    # Valid arguments give the unchecked functions' results.
    assert float(start(t0=0.0, y0=y, f0=-y, g0=0.1 * y)[0]) > 0


@pytest.mark.parametrize("solve", ["odeint", "sdeint"])
def test_a_step_penalty_that_is_not_callable_or_returns_no_scalar_is_named(solve):
    """A non-callable ``step_penalty`` failed after the first step with "'int' object is not
    callable"; one returning ``None`` failed after the whole solve inside ``torch.stack``."""
    if solve == "odeint":
        run = functools.partial(odeint, decay, torch.ones(2), [0.0, 1.0])
    else:
        run = functools.partial(sdeint, DiagonalSDE(), torch.ones(2, 1), [0.0, 1.0])
    with pytest.raises(TypeError, match="step_penalty must be callable as penalty"):
        run(step_penalty=3)
    for returned, got, error in ((None, "NoneType", TypeError), (torch.ones(2), r"shape \(2,\)", ValueError)):
        with pytest.raises(
            error, match=rf"step_penalty must return a 0-dim tensor, got {got} \(the step from t=0"
        ):
            run(step_penalty=lambda result, dt, returned=returned: returned)


def test_sde_models_check_torchsde_settings_when_made_not_at_the_first_batch():
    # dt = 0 with adaptive=False made torchsde loop forever; the Stratonovich methods and srk failed
    # at the first call with torchsde's messages.
    for options, error, message in [
        ({"dt": 0.0, "adaptive": False}, ValueError, r"options\['dt'\] must be positive and finite"),
        ({"dt": -0.1}, ValueError, r"options\['dt'\] must be positive"),
        ({"dt_min": 0.0}, ValueError, r"options\['dt_min'\] must be positive"),
        ({"adaptive": 1}, TypeError, r"options\['adaptive'\] must be a bool"),
        ({"logqp": True}, ValueError, r"options \['logqp'\] change what torchsde.sdeint returns"),
    ]:
        with pytest.raises(error, match=message):
            LocallyRegularized(DiagonalSDE(), backend="torchsde", options=options)
    for method in ("reversible_heun", "midpoint", "euler_heun"):
        with pytest.raises(ValueError, match=f"method '{method}' is a Stratonovich scheme of torchsde"):
            LocallyRegularized(DiagonalSDE(), backend="torchsde", method=method)
    with pytest.raises(ValueError, match=r"fixed steps do not compute: drop options\['step_size'\]"):
        GloballyRegularized(DiagonalSDE(), options={"step_size": 0.1})


def test_output_times_given_as_one_element_tensors_are_named_as_such():
    # The message said "got an element of type Tensor", though 0-dim tensors are taken.
    with pytest.raises(TypeError, match=r"0-dim tensors, got a tensor of shape \(1,\)"):
        odeint(decay, torch.ones(2), [torch.tensor([0.0]), torch.tensor([1.0])])


# Inputs at the edges of the floating-point range --------------------------------------------------


def test_sdeint_refuses_times_that_are_one_value_in_the_states_dtype():
    """The drift saw t = 1e8 throughout, ts held [1e8, 1e8] and the state still moved."""
    with pytest.raises(ValueError, match=r"are one value in torch\.float32.*solve in float64"):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [1e8, 1e8 + 1])
    assert sdeint(DiagonalSDE(), torch.ones(1, 2, dtype=torch.float64), [1e8, 1e8 + 1]).ts[1] == 1e8 + 1


def test_a_non_finite_brownian_increment_is_named_not_blamed_on_the_state():
    """A float32 Brownian motion cannot resolve a step of 1e-300: the solve used to reject steps down
    to an underflow and then blame the state, drift or diffusion. A Brownian motion sdeint made is
    not called "a given bm"."""
    with pytest.raises(
        ValueError,
        match=r"^the Brownian motion sdeint made has a non-finite increment over \[0.0, .*a first_step",
    ):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], first_step=1e-300)

    def nan_path(ta, tb):
        return torch.full((1, 2), math.nan)

    with pytest.raises(ValueError, match=r"^bm\(0.0, .*\) returned a non-finite increment: its own values"):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], bm=nan_path)

    # Judged once the step turns non-finite, which it does also where the diffusion is 0, and
    # with fixed steps, whatever the noise type.
    class Quiet(DiagonalSDE):
        def g(self, t, y):
            return torch.zeros_like(y)

    for sde, steps in ((Quiet(), {}), (DiagonalSDE(), {"step_size": 0.25}), (Quiet(), {"step_size": 0.25})):
        with pytest.raises(ValueError, match=r"^bm\(0.0, .*\) returned a non-finite increment"):
            sdeint(sde, torch.ones(1, 2), [0.0, 1.0], bm=nan_path, **steps)


@pytest.mark.parametrize(
    ("dtype", "atol", "match"),
    [
        (torch.float32, 1e-50, r"atol=1e-50 with rtol=0 is below what torch.float32 holds as a normal"),
        (torch.float64, 1e-310, r"atol=1e-310 with rtol=0 is below what torch.float64 holds"),
        # Per-element rtols with a zero: the atol is named as given (it was read in float32, as 0).
        (torch.float64, 1e-320, r"atol=9\.99989e-321 with rtol=0 is below what torch.float64 holds"),
        # A normal float64 atol whose scaled state overflows the norm.
        (torch.float64, 1e-300, r"tolerances are too small for this state \(raise atol\)"),
    ],
)
def test_an_absolute_tolerance_too_small_for_the_dtype_is_named(dtype, atol, match):
    # It failed with a step-size underflow blamed on a non-finite state, or on the (default) norm.
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2, dtype=dtype), [0.0, 1.0], rtol=0.0, atol=atol)
    with pytest.raises(ValueError, match=match):
        rtols = torch.tensor([0.0, 1e-6], dtype=torch.float64)
        odeint(decay, torch.ones(2, dtype=dtype), [0.0, 1.0], rtol=rtols, atol=atol)
    with pytest.raises(ValueError, match=re.escape("below what torch.float32 holds")):
        sdeint(DiagonalSDE(), torch.ones(1, 2), [0.0, 1.0], rtol=0.0, atol=1e-50)
    # With rtol > 0 a tiny atol asks for a purely relative tolerance: rtol * |y| keeps the scale.
    exact = math.exp(-1.0)
    for tiny in (1e-40, 1e-300):
        ys = odeint(decay, torch.ones(2, dtype=dtype), [0.0, 1.0], rtol=1e-6, atol=tiny).ys
        assert float(ys[-1, 0]) == pytest.approx(exact, rel=1e-4)
    per_element = torch.tensor([1e-310, 1e-8], dtype=torch.float64)
    with pytest.raises(ValueError, match="atol=1e-310 with rtol=0"):
        odeint(
            decay,
            torch.ones(2, dtype=torch.float64),
            [0.0, 1.0],
            rtol=torch.tensor([0.0, 1e-6]),
            atol=per_element,
        )
    odeint(
        decay,
        torch.ones(2, dtype=torch.float64),
        [0.0, 1.0],
        rtol=torch.tensor([1e-6, 0.0]),
        atol=per_element,
    )


@pytest.mark.parametrize("method", ["euler", "rk4", "tsit5"])
def test_a_span_whose_steps_overflow_the_states_dtype_is_refused(method):
    # torch's "value cannot be converted to type float without overflow" from inside a step, also
    # for a span below float32's largest value (1e38 with tsit5, whose step times a coefficient up to
    # 12.9 overflows). The limit is the dtype's largest value over twice the tableau's largest
    # coefficient: a span or fixed step within it is taken (its steps may still be limited).
    fixed = {} if method == "tsit5" else {"step_size": 1e36}
    zero = odeint(lambda t, y: torch.zeros_like(y), torch.ones(2), [0.0, 1e37], method=method, **fixed)
    assert torch.equal(zero.ys[-1], torch.ones(2))
    too_long = {} if method == "tsit5" else {"step_size": 3e38}
    with pytest.raises(ValueError, match=r"t spans 3e\+38: too long for steps in torch.float32"):
        odeint(lambda t, y: torch.zeros_like(y), torch.ones(2), [0.0, 3e38], method=method, **too_long)
    with pytest.raises(ValueError, match=r"t spans 1e\+39: too long for steps in torch.float32"):
        odeint(
            decay,
            torch.ones(2),
            torch.tensor([0.0, 1e39], dtype=torch.float64),
            method=method,
            step_size=1e38,
        )
    if method != "tsit5":  # a fixed step too long inside a span the dtype holds is named
        with pytest.raises(ValueError, match=r"step_size=2e\+38: too long for steps in torch.float32"):
            odeint(
                lambda t, y: torch.zeros_like(y), torch.ones(2), [0.0, 3e38], method=method, step_size=2e38
            )
    with pytest.raises(ValueError, match=r"t spans 6e\+38"):
        local_reg.compat.odeint(decay, torch.ones(2), torch.tensor([-3e38, 3e38]), method="euler")


def test_a_repeated_time_is_named():
    for t, match in [
        ([0.0, 1.0, 1.0], r"strictly increasing or strictly decreasing: it holds 1\.0 twice$"),
        ([0.0, 2.0, 1.0], r"strictly increasing or strictly decreasing$"),
        # Integers that differ, but not as floats: the refusal says why and what to do.
        (torch.tensor([2**62, 2**62 + 1]), r"twice as a float \(integers beyond 2\*\*53 .* t - t\[0\]\)"),
        ([2**62, 2**62 + 1], r"twice as a float \(integers beyond 2\*\*53"),
        (np.array([2**62, 2**62 + 1]), r"twice as a float \(integers beyond 2\*\*53"),
    ]:
        with pytest.raises(ValueError, match=match):
            odeint(decay, torch.ones(2), t)
    # sdeint integrates forward only: its messages offer increasing times alone.
    for t, match in [
        ([0.0, 0.7, 0.5, 1.0], r"^t must be strictly increasing$"),
        ([0.0, 1.0, 1.0], r"^t must be strictly increasing: it holds 1\.0 twice$"),
        ([1.0, 0.5, 0.0], r"^t must be strictly increasing: sdeint does not integrate backwards$"),
    ]:
        with pytest.raises(ValueError, match=match):
            sdeint(DiagonalSDE(), torch.ones(1, 2), t)


@pytest.mark.parametrize("t", [1.0, 3, None, np.float64(1.0)], ids=["float", "int", "None", "numpy scalar"])
def test_a_locally_regularized_training_call_names_a_t_that_is_no_sequence_of_times(t):
    """Training mode counted t's times before t was checked: "object of type 'float' has no len()"
    where eval() mode and every other model name t."""
    net = torch.nn.Linear(2, 2)
    model = LocallyRegularized(lambda t, y: net(y), adjoint_params=net.parameters())
    with pytest.raises(TypeError, match=r"^t must be a 1-D tensor, numpy array or sequence of floats, got"):
        model(torch.randn(4, 2), t)


def test_compat_fixed_grids_check_t_and_refuse_a_grid_past_torchdiffeqs_step_limit():
    """The grid was read from t before t was checked (a bare ZeroDivisionError for repeated times),
    and a step size of 1e-300 ran on without end (max_num_steps is ignored by fixed grids)."""
    for t, match in [
        ([0.0, math.nan], "t must be finite"),
        (torch.zeros(2, 2), r"t must be a 1-D tensor of times, got shape \(2, 2\)"),
        ([1.0, 1.0], "strictly increasing or strictly decreasing"),
    ]:
        for method in ("euler", "rk4"):
            with pytest.raises(ValueError, match=match):
                local_reg.compat.odeint(decay, torch.ones(2), torch.as_tensor(t), method=method)
    with pytest.raises(ValueError, match=r"step_size=1e-300 needs about 1e299 steps.*max_steps=2147483647"):
        local_reg.compat.odeint(
            decay, torch.ones(2), torch.tensor([0.0, 1.0]), method="euler", options={"step_size": 1e-300}
        )


def test_per_sample_output_times_are_refused_with_what_to_do_instead():
    # torchode's t_eval of shape (batch, n) was told only that t must be 1-D.
    per_sample = torch.linspace(0.0, 1.0, 5).repeat(3, 1) + torch.arange(3.0)[:, None]
    for t in (per_sample, per_sample.numpy()):
        with pytest.raises(
            ValueError, match=r"t must be a 1-D (tensor|array) of times, got shape \(3, 5\)"
        ) as error:
            odeint(decay, torch.ones(3, 2), t)
        assert "per-sample output times" in str(error.value) and "sorted union" in str(error.value)
    with pytest.raises(ValueError, match="per-sample output times"):
        sdeint(DecaySDE(), torch.ones(3, 1), per_sample)
    # Times that are no output times are only told their shape.
    with pytest.raises(ValueError, match=r"jump_ts must be a 1-D tensor of times, got shape \(3, 5\)$"):
        local_reg.PIController(jump_ts=per_sample)


def test_compat_odeint_dense_names_a_t0_of_several_times():
    with pytest.raises(
        ValueError, match=r"t0 must be one time \(a float or a one-element tensor\), got shape \(2,\)"
    ):
        local_reg.compat.odeint_dense(decay, torch.ones(2), torch.tensor([0.0, 1.0]), 1.0)


def test_keywords_that_mean_another_thing_in_a_regularized_module_say_so():
    # step_size and penalty are odeint's fixed step and Regularized's penalty object elsewhere: a
    # number or an object here was refused as an "unknown step_size" / "unknown penalty"; a weight
    # given to STEER, whose reg_loss is always 0, was taken and did nothing.
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, t, y):
            return self.linear(y)

    with pytest.raises(ValueError, match=re.escape("goes in options={'step_size': 0.1}")):
        LocallyRegularized(Field(), method="rk4", step_size=0.1)
    with pytest.raises(TypeError, match=re.escape("a penalty object is Regularized(func, penalty)'s")):
        LocallyRegularized(Field(), penalty=local_reg.LocalPenalty())
    with pytest.raises(TypeError, match="SteerRegularized takes no weight: STEER adds no term to the loss"):
        local_reg.SteerRegularized(Field(), weight=100.0)
    model = LocallyRegularized(Field(), method="rk4", options={"step_size": 0.1})
    assert model(torch.ones(3, 2), [0.0, 1.0]).shape == (2, 3, 2)
    # Dense output was taken and kept, unread: the model returns ys only.
    with pytest.raises(ValueError, match=re.escape("options['dense']=True: the model returns ys only")):
        LocallyRegularized(Field(), options={"dense": True})
    LocallyRegularized(Field(), options={"dense": False})
    # odeint's other keywords, given to a module directly, were Python's bare "unexpected keyword".
    for kind in (LocallyRegularized, local_reg.Regularized, local_reg.RNODERegularized):
        with pytest.raises(
            TypeError,
            match=re.escape(
                f"first_step, max_steps are keywords of the solve that {kind.__name__} does not take "
                "itself: pass options={'first_step': 0.1, 'max_steps': 100}"
            ),
        ):
            kind(Field(), max_steps=100, first_step=0.1)
    # Only the backend's own keywords are sent to options=; a typo gets the module's closest keyword.
    with pytest.raises(TypeError, match=r"got unexpected keyword arguments: max_steps$"):
        LocallyRegularized(Field(), backend="torchdiffeq", max_steps=10)
    with pytest.raises(TypeError, match=re.escape("pass options={'max_num_steps': 10}")):
        LocallyRegularized(Field(), backend="torchdiffeq", max_num_steps=10)
    with pytest.raises(
        TypeError, match=re.escape("unexpected keyword arguments: rtoll (did you mean 'rtol'?)")
    ):
        LocallyRegularized(Field(), rtoll=1e-3)
    with pytest.raises(TypeError, match=re.escape("kinetik (did you mean 'kinetic'?)")):
        local_reg.RNODERegularized(Field(), kinetik=1.0)
    # A torchsde keyword the models refuse in options is not sent there either.
    with pytest.raises(TypeError, match=r"got unexpected keyword arguments: logqp$"):
        LocallyRegularized(DecaySDE(), backend="torchsde", logqp=True)
    # torchdiffeq's adjoint settings were "did you mean 'adjoint_params'?" with backend='torchdiffeq'
    # and a deprecated options={'adjoint_rtol': ...} with local_reg's; its max_num_steps had no hint.
    for backend in ("local_reg", "torchdiffeq"):
        for keyword in ("adjoint_rtol", "adjoint_options"):
            with pytest.raises(
                TypeError,
                match=re.escape(f"'{keyword}' (torchdiffeq's adjoint settings") + ".*BacksolveAdjoint",
            ):
                LocallyRegularized(Field(), gradient="adjoint", backend=backend, **{keyword: 1e-6})
    with pytest.raises(
        TypeError, match=re.escape("'max_num_steps' (torchdiffeq's step limit: options={'max_steps'")
    ):
        LocallyRegularized(Field(), max_num_steps=10)
    # An SDE model sent diffrax's dt0 to options=, which read it as the first step.
    for func in (Field(), DecaySDE()):
        with pytest.raises(
            TypeError,
            match=re.escape(
                "'dt0' (diffrax's dt0: options={'step_size': ...} here for its default fixed step"
            ),
        ):
            LocallyRegularized(func, dt0=0.1)
    # On torchdiffeq's fixed grid, which has no step limit, local_reg's spelling is no answer.
    with pytest.raises(TypeError, match=r"got unexpected keyword arguments: max_num_steps$"):
        LocallyRegularized(
            Field(), backend="torchdiffeq", method="rk4", options={"step_size": 0.1}, max_num_steps=10
        )
    # An SDE model's adjoint settings are torchsde's, taken by its backend's adjoint only.
    with pytest.raises(
        TypeError, match=re.escape("'adjoint_rtol' (torchsde's adjoint settings: with backend='torchsde'")
    ):
        LocallyRegularized(DecaySDE(), adjoint_rtol=1e-6)
    # A fixed-step main solve without its step was told "pass step_size", the probe's keyword here.
    with pytest.raises(
        ValueError, match=re.escape("method 'rk4' is fixed-step: pass options={'step_size': ...}")
    ):
        LocallyRegularized(Field(), method="rk4")


@pytest.mark.parametrize(
    ("method", "hint"),
    [
        ("adaptive_heun", "torchdiffeq's name for 'heun_euler'"),
        ("heun3", "local_reg.compat.METHODS holds its tableau"),
        ("RK45", "scipy's RK45 is 'dopri5'"),
        ("Tsit5", "did you mean 'tsit5'?"),  # diffrax's class
        ("Heun", "diffrax's Heun is 'heun_euler'"),
    ],
)
def test_another_librarys_method_name_says_what_it_is_here(method, hint):
    with pytest.raises(ValueError, match=re.escape(f"unknown method {method!r}") + ".*" + re.escape(hint)):
        local_reg.odeint(decay, torch.ones(2), [0.0, 1.0], method=method)


def test_compat_names_another_librarys_method_in_its_own_terms():
    for method, hint in [("RK45", "scipy's RK45 is 'dopri5'"), ("Heun", "diffrax's Heun is 'adaptive_heun'")]:
        with pytest.raises(
            ValueError, match=re.escape(f"unknown method {method!r}") + ".*" + re.escape(hint)
        ):
            local_reg.compat.odeint(decay, torch.ones(2), torch.tensor([0.0, 1.0]), method=method)


def test_compat_takes_perturb_as_a_bool_and_refuses_it_where_it_cannot_apply():
    # perturb=False is torchdiffeq's default and asks for nothing: it was refused as unsupported.
    t = torch.tensor([0.0, 0.5, 1.0])
    ys = local_reg.compat.odeint(
        decay, torch.ones(2), t, method="rk4", options={"step_size": 0.1, "perturb": False}
    )
    assert torch.equal(
        ys, local_reg.compat.odeint(decay, torch.ones(2), t, method="rk4", options={"step_size": 0.1})
    )
    perturbed = local_reg.compat.odeint(
        decay, torch.ones(2), t, method="rk4", options={"step_size": 0.1, "perturb": True}
    )
    torch.testing.assert_close(perturbed, ys)  # a smooth field: the same solve, to rounding
    with pytest.raises(TypeError, match=re.escape("options['perturb'] must be a bool, got int")):
        local_reg.compat.odeint(decay, torch.ones(2), t, method="rk4", options={"perturb": 1})
    # The fixed grid of an event solve runs on to a time not known before it.
    with pytest.raises(ValueError, match=re.escape("options['perturb'] with event_fn is not supported")):
        local_reg.compat.odeint(
            decay,
            torch.ones(2),
            torch.tensor([0.0, 1.0]),
            method="rk4",
            options={"step_size": 0.1, "perturb": True},
            event_fn=lambda t, y: y[0] - 0.5,
        )
    # The backward solve reads each side of a step's end where the forward solve does only.
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=re.escape("adjoint_options['perturb'] needs options['perturb']")):
        local_reg.compat.odeint_adjoint(
            lambda t, y: layer(y),
            torch.ones(2),
            t,
            method="rk4",
            adjoint_options={"perturb": True},
            adjoint_params=tuple(layer.parameters()),
        )


def test_torchdiffeq_and_torchsde_spellings_given_to_odeint_and_sdeint_say_what_to_write():
    # Python's bare "unexpected keyword argument 'options'" named neither the keywords that replace
    # torchdiffeq's options dict nor local_reg.compat, and a typo got no suggestion.
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(
        TypeError,
        match=re.escape("odeint() got an unexpected keyword argument 'options' (torchdiffeq's dict")
        + ".*step_size=.*local_reg.compat.odeint",
    ):
        local_reg.odeint(decay, torch.ones(2), t, options={"step_size": 0.1})
    with pytest.raises(TypeError, match=re.escape("'event_fn' (local_reg.odeint_event(")):
        local_reg.odeint(decay, torch.ones(2), t, event_fn=lambda t, y: y[0])
    # torchsde's dt was "did you mean 't'?", which points the wrong way; diffrax's spellings too.
    with pytest.raises(TypeError, match=re.escape("'dt' (a fixed step is step_size= here")):
        local_reg.odeint(decay, torch.ones(2), t, dt=0.1)
    with pytest.raises(TypeError, match=re.escape("'solver' (diffrax's solver: method= here")):
        local_reg.odeint(decay, torch.ones(2), t, solver="tsit5")
    with pytest.raises(
        TypeError,
        match=re.escape(
            "got unexpected keyword arguments 'adjoint_parms' (did you mean 'adjoint_params'?); 'rtoll'"
        ),
    ):
        local_reg.odeint(decay, torch.ones(2), t, rtoll=1e-3, adjoint_parms=())
    with pytest.raises(TypeError, match=re.escape("an unexpected keyword argument 'tolerance'") + "$"):
        local_reg.odeint(decay, torch.ones(2), t, tolerance=1e-3)
    # odeint_event passes odeint's other keywords on, and names itself (it said "odeint()").
    with pytest.raises(
        TypeError,
        match=re.escape("odeint_event() got an unexpected keyword argument 'atoll' (did you mean 'atol'?)"),
    ):
        local_reg.odeint_event(decay, torch.ones(2), 0.0, event_fn=lambda t, y: y[0] - 0.5, atoll=1e-6)
    with pytest.raises(
        TypeError, match=re.escape("'options' (torchdiffeq's dict") + ".*local_reg.compat.odeint_event"
    ):
        local_reg.odeint_event(decay, torch.ones(2), 0.0, event_fn=lambda t, y: y[0] - 0.5, options={})
    for keywords, match in [
        ({"dt": 0.1}, "'dt' (torchsde's step: here step_size= fixes the step"),
        ({"adaptive": True}, "'adaptive' (a solve is adaptive here unless step_size="),
        ({"dt_min": 1e-4}, "'dt_min' (torchsde's smallest adaptive step: controller=PIController(min_step=)"),
        ({"logqp": True}, "'logqp' (torchsde's logqp=; local_reg.compat.sdeint takes torchsde's signature)"),
        ({"methd": "euler_maruyama"}, "'methd' (did you mean 'method'?)"),
    ]:
        with pytest.raises(
            TypeError, match=re.escape(f"sdeint() got an unexpected keyword argument {match}")
        ):
            local_reg.sdeint(DecaySDE(), torch.ones(2, 1), t, **keywords)
    # The keywords both take are unchanged, positional arguments too.
    assert torch.allclose(
        local_reg.odeint(decay, torch.ones(2, dtype=torch.float64), t, rtol=1e-8, atol=1e-10).ys[-1],
        torch.full((2,), math.exp(-1.0), dtype=torch.float64),
    )


def three_solvers() -> dict[str, functools.partial]:
    """odeint, odeint_event and sdeint on small problems, keywords still to give."""
    t = torch.tensor([0.0, 1.0])
    return {
        "odeint": functools.partial(local_reg.odeint, decay, torch.ones(2), t),
        "odeint_event": functools.partial(
            local_reg.odeint_event, decay, torch.ones(2), 0.0, event_fn=lambda t, y: y[0] - 0.5
        ),
        "sdeint": functools.partial(local_reg.sdeint, DecaySDE(), torch.ones(2, 1), t),
    }


@pytest.mark.parametrize("solver", ["odeint", "odeint_event", "sdeint"])
def test_step_size_bounds_landing_times_and_output_times_of_other_libraries_point_to_their_spelling(solver):
    # max_step was "did you mean 'max_steps'?" (a step count, not a size), min_step the same,
    # step_ts "did you mean 'step_size'?", scipy's dense_output "did you mean 'step_to_outputs'?",
    # diffrax's adjoint "did you mean 'adjoint_rtol'?"; jump_ts, dtmax, dtmin and t_eval got no hint.
    solve = three_solvers()[solver]
    hints = {
        "max_step": "controller=PIController(max_step=)",
        "dtmax": "controller=PIController(max_step=)",
        "min_step": "controller=PIController(min_step=)",
        "dtmin": "controller=PIController(min_step=) here; a step of min_step is then accepted whatever its "
        "error, as diffrax's force_dtmin=True; force_min_step=False raises there instead",
        "step_ts": "controller=PIController(step_ts=)",
        "jump_ts": "controller=PIController(jump_ts=)",
        # torchdiffeq's options= entries: step_t was "did you mean 'step_size'?", the others bare.
        "step_t": "controller=PIController(step_ts=)",
        "jump_t": "controller=PIController(jump_ts=)",
        "safety": "controller=PIController(safety=)",
        "ifactor": "controller=PIController(max_factor=)",
        "dfactor": "controller=PIController(min_factor=)",
        # OrdinaryDiffEq's solve settings: these had no hint, and dtmin did not say that OrdinaryDiffEq
        # stops where this controller forces a step.
        "tstops": "OrdinaryDiffEq's times to end a step on: controller=PIController(step_ts=)",
        "d_discontinuities": "controller=PIController(jump_ts=)",
        "qmin": "OrdinaryDiffEq's smallest step shrink: controller=PIController(min_factor=)",
        "qmax": "controller=PIController(max_factor=)",
        "gamma": "controller=PIController(safety=)",
        "beta1": "controller=PIController(beta1=)",
        "t_eval": {"odeint_event": "odeint(func, y0, t)"}.get(solver, "the output times are t"),
        "dense_output": {"odeint": "dense=True", "odeint_event": "odeint(", "sdeint": "no interpolant"}[
            solver
        ],
        "adjoint": "gradient=",
        # diffrax's dt0 is a fixed step under its default controller: sdeint read it as first_step.
        "dt0": "step_size= here for its default fixed step",
    }
    for keyword, hint in hints.items():
        with pytest.raises(
            TypeError, match=re.escape(f"{solver}() got an unexpected keyword argument {keyword!r} (")
        ) as error:
            solve(**{keyword: 0.1})
        reason = str(error.value).split(f"{keyword!r} (", 1)[1]
        assert hint in reason and "did you mean" not in reason, (keyword, reason)


def test_diffrax_event_throw_and_root_finder_point_to_their_spelling():
    # Each was Python's bare "unexpected keyword argument" (root_finder and throw without a hint).
    t = torch.tensor([0.0, 1.0])
    event_solve = functools.partial(
        local_reg.odeint_event, decay, torch.ones(2), 0.0, event_fn=lambda t, y: y[0] - 0.5
    )
    cases = [
        (functools.partial(local_reg.odeint, decay, torch.ones(2), t), "odeint", "event",
         "diffrax's Event: local_reg.odeint_event(func, y0, t0, event_fn=...) solves to an event"),
        (functools.partial(local_reg.odeint, decay, torch.ones(2), t), "odeint", "throw",
         "diffrax's throw: a failed solve raises local_reg.SolverError here; catch it"),
        (event_solve, "odeint_event", "event", "diffrax's Event: event_fn= here"),
        (event_solve, "odeint_event", "throw",
         "diffrax's throw: a failed solve raises local_reg.SolverError here; catch it"),
        (event_solve, "odeint_event", "root_finder",
         "diffrax's root finder: the event time is found here by Illinois regula falsi safeguarded by "
         "bisection on the last step's dense output"),
        (functools.partial(local_reg.sdeint, DecaySDE(), torch.ones(2, 1), t), "sdeint", "throw",
         "diffrax's throw: a failed solve raises local_reg.SolverError here; catch it"),
    ]  # fmt: skip
    for solve, name, keyword, hint in cases:
        with pytest.raises(
            TypeError, match=re.escape(f"{name}() got an unexpected keyword argument {keyword!r} ({hint}")
        ):
            solve(**{keyword: None})


def test_scipy_solve_ivp_keywords_and_methods_point_to_their_spelling():
    # Each was Python's bare "unexpected keyword argument" (args "did you mean 'adjoint_params'?"
    # for odeint_event), and Radau, BDF and LSODA a plain unknown method.
    t = torch.tensor([0.0, 1.0])
    solves = three_solvers()
    stiff = (
        "for a stiff solve without gradients, local_reg.compat.odeint(func, y0, t, method='scipy_solver', "
    )
    args = "diffrax's and scipy's args: the functions here take (t, y) only; close over the rest, e.g. with"
    cases = [
        ("odeint", "events", "scipy's events: local_reg.odeint_event(func, y0, t0, event_fn=...) solves to "
         "an event"),
        ("odeint", "t_span", "scipy's t_span: t = [t0, t1] here, and y0 comes before it"),
        ("odeint", "args", args),
        *[("odeint", name, f"scipy's {name}, for its implicit methods' Jacobian: the methods here are "
           f"explicit; {stiff}options={{'solver': 'Radau'}})")
          for name in ("jac", "jac_sparsity", "vectorized", "lband", "uband")],
        ("odeint_event", "events", "scipy's events: event_fn= here"),
        ("odeint_event", "terminal", "scipy's event attribute: the events here are terminal"),
        ("odeint_event", "t_span", "scipy's t_span: t0 here, after y0"),
        ("odeint_event", "args", args),
        ("odeint_event", "jac", "scipy's jac, for its implicit methods' Jacobian: the methods here are "
         "explicit, and scipy's stiff solvers (local_reg.compat.odeint's method='scipy_solver') take no "
         "event_fn"),
        ("sdeint", "args", args),
        ("sdeint", "t_span", "scipy's t_span: t = [t0, t1] here, and y0 comes before it"),
        # "the output times are t here" alone ported t_eval=[2, 5, 10] as t, a solve from t = 2.
        *[(solver, "t_eval", "scipy's output times: the output times are t here, and t[0] is the initial "
           "time: t = [t_span[0], *t_eval] (drop ys[0] if t_eval does not start there)")
          for solver in ("odeint", "sdeint")],
    ]  # fmt: skip
    for solver, keyword, hint in cases:
        with pytest.raises(
            TypeError, match=re.escape(f"{solver}() got an unexpected keyword argument {keyword!r} ({hint}")
        ):
            solves[solver](**{keyword: None})
    for method in ("Radau", "BDF", "LSODA"):
        hint = (
            f"scipy's stiff {method}: the methods here are explicit; {stiff}options={{'solver': {method!r}}})"
        )
        with pytest.raises(
            ValueError, match=re.escape(f"unknown method {method!r}") + ".*" + re.escape(hint)
        ):
            local_reg.odeint(decay, torch.ones(2), t, method=method)
        with pytest.raises(
            ValueError, match=re.escape(f"unknown method {method!r}") + ".*" + re.escape(hint)
        ):
            local_reg.compat.odeint(decay, torch.ones(2), t, method=method)
    # scipy's argument order, t_span where y0 goes, was "y0[0] must be a torch.Tensor, got float".
    with pytest.raises(
        TypeError, match=r"^y0 must be a tensor or a tuple of tensors, got a tuple of numbers"
    ):
        local_reg.odeint(decay, (0.0, 1.0), torch.ones(2))
    # compat.odeint takes method='scipy_solver': its list of methods names it.
    with pytest.raises(ValueError, match=r"unknown method 'nope'; expected one of \[.*'scipy_solver'\]"):
        local_reg.compat.odeint(decay, torch.ones(2), t, method="nope")


def test_diffrax_controller_settings_given_to_picontroller_say_what_to_write():
    # diffrax's PIDController(rtol=, atol=) was a bare "unexpected keyword argument 'rtol'".
    for keywords, match in [
        ({"rtol": 1e-3, "atol": 1e-6}, "'atol' (the solve's tolerance: odeint's and sdeint's atol="),
        ({"rtol": 1e-3}, "'rtol' (the solve's tolerance: odeint's and sdeint's rtol="),
        ({"dtmax": 0.1}, "'dtmax' (diffrax's and OrdinaryDiffEq's largest step: max_step= here)"),
        ({"dtmin": 0.1}, "'dtmin' (diffrax's and OrdinaryDiffEq's smallest step: min_step= here"),
        ({"pcoeff": 0.4}, "'pcoeff' (diffrax's PID gains: beta1= and beta2= here"),
        ({"icoeff": 0.3}, "'icoeff' (diffrax's PID gains: beta1= and beta2= here"),
        ({"safty": 0.8}, "'safty' (did you mean 'safety'?)"),
    ]:
        with pytest.raises(TypeError, match=r"^PIController\.__init__\(\) got .*" + re.escape(match)):
            local_reg.PIController(**keywords)
    # Its repr is unchanged (positional settings are refused: tests/test_julia_ports.py).
    assert repr(local_reg.PIController(max_step=0.5)).startswith("PIController(safety=0.9, min_factor=0.2,")


@pytest.mark.parametrize(
    "regularized",
    [
        lambda y0: local_reg.SteerRegularized(lambda t, y: -y, adjoint_params=())(y0, [0.0, 1.0]),
        lambda y0: local_reg.steer_regularization(lambda t, y: -y, y0, [0.0, 1.0]),
        lambda y0: local_reg.RNODERegularized(lambda t, y: -y, adjoint_params=())(y0, [0.0, 1.0]),
        lambda y0: local_reg.TayNODERegularized(lambda t, y: -y, adjoint_params=())(y0, [0.0, 1.0]),
        lambda y0: LocallyRegularized(lambda t, y: -y, adjoint_params=())(y0, [0.0, 1.0]),
        lambda y0: GloballyRegularized(lambda t, y: -y, adjoint_params=())(y0, [0.0, 1.0]),
    ],
)
@pytest.mark.parametrize("y0", [[[1.0, 2.0]], None, 1.0])
def test_every_regularized_model_names_a_y0_that_is_not_a_tensor(regularized, y0):
    """STEER's solve read ``y0.dtype`` first: an AttributeError of a list's ``dtype``."""
    with pytest.raises(TypeError, match=f"y0 must be a torch.Tensor, got {type(y0).__name__}"):
        regularized(y0)


_HUGE = 10**400  # a Python integer beyond the floats: float() raises an OverflowError naming nothing


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: odeint(rotation, torch.ones(2), [0.0, 1.0], rtol=_HUGE), "rtol"),
        (lambda: odeint(rotation, torch.ones(2), [0.0, 1.0], atol=_HUGE), "atol"),
        (lambda: odeint(rotation, torch.ones(2), [0.0, 1.0], first_step=_HUGE), "first_step"),
        (lambda: odeint(rotation, torch.ones(2), [0.0, 1.0], method="rk4", step_size=_HUGE), "step_size"),
        (lambda: odeint(rotation, torch.ones(2), [0, _HUGE]), "t"),
        (lambda: local_reg.odeint_event(rotation, torch.ones(2), _HUGE, event_fn=lambda t, y: y[0]), "t0"),
        (lambda: local_reg.step(rotation, 0.0, torch.ones(2), _HUGE, "tsit5"), "dt"),
        (lambda: local_reg.PIController(jump_ts=[_HUGE]), "jump_ts"),
        (lambda: local_reg.PIController(max_step=_HUGE), "max_step"),
        (lambda: local_reg.PIController(max_factor=_HUGE), "max_factor"),
        (lambda: sdeint(DecaySDE(), torch.ones(2, 1), [0.0, 1.0], atol=_HUGE), "atol"),
        (
            lambda: local_reg.compat.odeint(rotation, torch.ones(2), torch.tensor([0.0, 1.0]), rtol=_HUGE),
            "rtol",
        ),
        (
            lambda: local_reg.compat.odeint(
                rotation, torch.ones(2), torch.tensor([0.0, 1.0]), options={"jump_t": [_HUGE]}
            ),
            r"options\['jump_t'\]",
        ),
    ],
)
def test_an_integer_beyond_the_floats_is_named(call, named):
    with pytest.raises(ValueError, match=f"^{named} (is|holds a number) too large for a float"):
        call()
