"""Property tests of the error contract over the public entry points.

For arbitrary (valid or invalid) combinations of dtype, shape, output times, tolerances, method,
step limits and landing times, every call either returns a finite result that agrees with a float64
reference (the exact solution of ``dy/dt = -a y``, and the same call in float64) within its
tolerance, or raises one of the documented errors: ``ValueError``, ``TypeError`` or
:class:`local_reg.SolverError`. Any other exception fails the test; ``max_steps`` is bounded so no
example can hang.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from local_reg import LocallyRegularized, PIController, SolverError, odeint, sdeint
from local_reg.sde._step import DRIFT_ERROR_WEIGHT

DOCUMENTED = (ValueError, TypeError, SolverError)
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


VALID_DTYPES = [torch.float64, torch.float32]
INVALID_DTYPES = [torch.float16, torch.bfloat16, torch.int64, torch.complex64]
EPS = {torch.float64: 2.2e-16, torch.float32: 1.2e-7, torch.complex128: 2.2e-16, torch.complex64: 1.2e-7}
COMPLEX_DTYPES = [torch.complex128, torch.complex64]
"""odeint's own (the regularized modules and sdeint refuse them: INVALID_DTYPES)."""


class Decay(torch.nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, t, y):
        return -self.rate * y


class DecaySDE(torch.nn.Module):
    """``dy = -a y dt + 0 dW``: an SDE whose solution is exact, ``y0 exp(-a t)``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def f(self, t, y):
        return -self.rate * y

    def g(self, t, y):
        return torch.zeros_like(y)


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy, weight: int = 8) -> st.SearchStrategy:
    """``valid`` about ``weight`` times as often as ``invalid``: enough examples get past the checks
    to exercise the solve, and every check is still reached."""
    return st.integers(0, weight).flatmap(lambda i: invalid if i == 0 else valid)


dtypes = mostly(st.sampled_from(VALID_DTYPES), st.sampled_from(INVALID_DTYPES), weight=6)
odeint_dtypes = mostly(
    st.sampled_from(VALID_DTYPES + COMPLEX_DTYPES),
    st.sampled_from([dtype for dtype in INVALID_DTYPES if dtype not in COMPLEX_DTYPES]),
    weight=6,
)


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64, or complex128 for a complex ``x``."""
    return x.to(torch.complex128) if x.is_complex() else x.double()


def as_container(times: object, kind: str):
    """``times`` as a list, tensor or numpy array when it is a flat list of numbers (else as is)."""
    if not isinstance(times, list) or not all(isinstance(t, float) for t in times):
        return times
    if kind == "tensor":
        return torch.tensor(times, dtype=torch.float64)
    if kind == "numpy":
        return np.asarray(times, dtype=np.float64)
    return times


def cumulative(start: float, gaps: list[float]) -> list[float]:
    times = [start]
    for gap in gaps:
        times.append(times[-1] + gap)
    return times


def increasing_times(min_size: int) -> st.SearchStrategy:
    """Increasing times with gaps the solver can resolve, now and then ones it cannot (a span of a
    few ulps, where the step size underflows: a documented SolverError)."""
    spaced = st.builds(
        cumulative, st.floats(-2.0, 2.0), st.lists(st.floats(0.01, 1.5), min_size=min_size - 1, max_size=3)
    )
    crowded = st.lists(st.floats(-2.0, 2.0), min_size=min_size, max_size=4, unique=True).map(sorted)
    return mostly(spaced, crowded)


increasing = increasing_times(1)
valid_times = st.one_of(increasing, increasing.map(lambda ts: ts[::-1]))
invalid_times = st.one_of(
    st.text(max_size=3),
    st.just([]),
    st.just([0.0, 0.0]),
    st.just([0.0, 1.0, 0.5]),
    st.lists(st.sampled_from([0.0, math.nan, math.inf, -math.inf]), min_size=1, max_size=3),
    st.just([[0.0, 1.0]]),
)
containers = st.sampled_from(["list", "tensor", "numpy"])
times = st.tuples(mostly(valid_times, invalid_times), containers)
# sdeint and the regularizers need a start and an end, and sdeint integrates forwards only.
spans = st.tuples(
    mostly(increasing_times(2), valid_times),
    containers,
)
tolerance = mostly(
    st.floats(1e-9, 1e-1), st.sampled_from([0.0, -1e-3, math.nan, math.inf, "1e-3", None, True])
)
shape = st.sampled_from([(), (1,), (3,), (2, 2), (0,)])
max_steps = mostly(st.sampled_from([1, 20, 400, 400]), st.sampled_from([0, -5, 2.5]))


def make_y0(shape_: tuple, dtype: torch.dtype, scale: float) -> torch.Tensor:
    values = torch.linspace(-1.0, 2.0, max(1, math.prod(shape_)), dtype=torch.float64)[: math.prod(shape_)]
    return (scale * values).reshape(shape_).to(dtype)


def exact(y0: torch.Tensor, ts: list[float], rate: float) -> torch.Tensor:
    y0 = widened(y0)
    return torch.stack([y0 * math.exp(-rate * (t - ts[0])) for t in ts])


def max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def tolerance_bound(
    reference: torch.Tensor, rtol: float, atol: float, dtype: torch.dtype, factor: float = 50.0
) -> float:
    """Adaptive solvers keep the global error of this well-conditioned decay within a small multiple
    (``factor``) of the local tolerance; rounding adds a few thousand ulps in float32."""
    size = max_abs(reference)
    return factor * (rtol * size + atol) + 1e3 * EPS[dtype] * max(1.0, size)


# What a property's check returns: the name of the documented error raised, ACCURATE when the result
# was checked against the reference, or UNCHECKED when there was no reference to check it against.
ACCURATE = "accurate"
UNCHECKED = "unchecked"


def call_or_documented_error(call):
    """``call()``'s result, or the documented error it raised (any other propagates)."""
    try:
        result = call()
    except DOCUMENTED as error:
        event(f"raised {type(error).__name__}: {str(error)[:60]}")
        return error
    event("returned a result")
    return result


ODEINT_ARGUMENTS = {
    "dtype": odeint_dtypes,
    "shape_": shape,
    "scale": st.sampled_from([1.0, 1e-3, 1e3]),
    "times_": times,
    "rtol": tolerance,
    "atol": tolerance,
    "method": mostly(
        st.sampled_from(["tsit5", "dopri5", "dopri8", "bosh3", "heun_euler", "rk4"]),
        st.sampled_from(["tsit", 3]),
    ),
    "step_size": mostly(st.sampled_from([None, None, 0.1]), st.sampled_from([0.0, -0.1, "0.1"])),
    "max_steps_": max_steps,
    "gradient": mostly(
        st.sampled_from(["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]),
        st.just("bogus"),
    ),
    "rate": st.floats(0.1, 3.0),
    # PIController's max_step as a fraction of the span (10 or 1000 steps at least), or a bad one.
    "max_step_": mostly(
        st.sampled_from([None, None, 0.1, 0.001]), st.sampled_from([0.0, -1.0, math.nan]), weight=20
    ),
    # PIController's step_ts or jump_ts as fractions of the span (a fraction of 0 or 1 is an end of
    # it, 1.5 beyond it; two jumps one float32 ulp apart), or a bad one.
    "landings_": mostly(
        st.sampled_from(
            [
                None,
                None,
                ("jump_ts", (0.37,)),
                ("step_ts", (0.0, 0.5, 1.0, 1.5)),
                ("jump_ts", (0.25, 0.2500001)),
            ]
        ),
        st.sampled_from([("jump_ts", (math.nan,)), ("step_ts", ("a",))]),
        weight=20,
    ),
}


def span_of(ts: object) -> tuple[float, float]:
    """``(t0, t1 - t0)`` of drawn output times, or ``(0, 1)`` where they are not two finite numbers."""
    try:
        start, end = float(ts[0]), float(ts[-1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return 0.0, 1.0
    if not (math.isfinite(start) and math.isfinite(end)) or start == end:
        return 0.0, 1.0
    return start, end - start


def check_odeint(
    dtype,
    shape_,
    scale,
    times_,
    rtol,
    atol,
    method,
    step_size,
    max_steps_,
    gradient,
    rate,
    max_step_,
    landings_,
):
    ts, kind = times_
    start, signed_span = span_of(ts)
    max_step = max_step_ * abs(signed_span) if max_step_ is not None and max_step_ > 0 else max_step_
    landings = {}
    if landings_ is not None:
        name, fractions = landings_
        landings = {name: [start + f * signed_span if isinstance(f, float) else f for f in fractions]}
    y0 = (
        make_y0(shape_, dtype, scale)
        if dtype.is_floating_point or dtype.is_complex
        else torch.ones(shape_, dtype=dtype)
    )

    def solve(state):
        return odeint(
            Decay(rate),
            state,
            as_container(ts, kind),
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            max_steps=max_steps_,
            gradient=gradient,
            adjoint_params=(),
            controller=PIController(max_step=max_step, **landings),
        )

    solution = call_or_documented_error(lambda: solve(y0))
    if isinstance(solution, DOCUMENTED):
        return type(solution).__name__
    assert dtype in (torch.float32, torch.float64, *COMPLEX_DTYPES)
    assert solution.ys.dtype == dtype and solution.ys.shape == (len(ts), *shape_)
    assert torch.isfinite(solution.ys).all()
    if step_size is None:  # error control: within tolerance of the exact solution
        if max_step is not None and solution.steps.dt.numel():
            # Up to the rounding of the times: a landing step may fold in a remainder of 4 ulps.
            assert solution.steps.dt.abs().max() <= max_step + 4 * math.ulp(max(abs(float(t)) for t in ts))
        reference = exact(y0, [float(t) for t in ts], rate)
        bound = tolerance_bound(reference, rtol, atol, dtype)
    else:  # fixed steps: no tolerance promised, but float32 must follow the float64 solve
        reference = call_or_documented_error(lambda: solve(widened(y0)))
        if isinstance(reference, DOCUMENTED):
            return UNCHECKED
        reference = reference.ys
        bound = 1e3 * EPS[dtype] * max(1.0, max_abs(reference))
    assert max_abs(widened(solution.ys) - reference) <= bound
    return ACCURATE


@SETTINGS
@given(**ODEINT_ARGUMENTS)
def test_odeint_returns_an_accurate_finite_result_or_a_documented_error(**arguments):
    check_odeint(**arguments)


SDEINT_ARGUMENTS = {
    "dtype": dtypes,
    "shape_": mostly(st.sampled_from([(1, 2), (3, 1)]), st.sampled_from([(2,), (1, 2, 2)])),
    "times_": spans,
    "rtol": tolerance,
    "atol": tolerance,
    "step_size": mostly(st.sampled_from([None, None, 0.05]), st.just(-1.0)),
    "max_steps_": max_steps,
    "rate": st.floats(0.1, 3.0),
}


def check_sdeint(dtype, shape_, times_, rtol, atol, step_size, max_steps_, rate):
    ts, kind = times_
    y0 = make_y0(shape_, dtype, 1.0)
    solution = call_or_documented_error(
        lambda: sdeint(
            DecaySDE(rate),
            y0,
            as_container(ts, kind),
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            max_steps=max_steps_,
            generator=torch.Generator().manual_seed(0),
        )
    )
    if isinstance(solution, DOCUMENTED):
        return type(solution).__name__
    assert dtype in (torch.float32, torch.float64)
    assert solution.ys.dtype == dtype and torch.isfinite(solution.ys).all()
    reference = exact(y0, [float(t) for t in ts], rate)
    # Euler--Maruyama's estimate weights the drift's local error by DRIFT_ERROR_WEIGHT (1/6), so each
    # accepted step may err by 1/DRIFT_ERROR_WEIGHT times the tolerance, and the errors of a decay add
    # up at most over the steps taken. A fixed step of 0.05 errs by at most ~ 0.1 * |y0|.
    if step_size is not None:
        bound = 0.2
    else:
        steps = solution.stats.n_accepted + 1
        bound = steps / DRIFT_ERROR_WEIGHT * (rtol * max_abs(reference) + atol) + 1e3 * EPS[dtype]
    assert max_abs(solution.ys.double() - reference) <= bound
    return ACCURATE


@SETTINGS
@given(**SDEINT_ARGUMENTS)
def test_sdeint_returns_an_accurate_finite_result_or_a_documented_error(**arguments):
    check_sdeint(**arguments)


REGULARIZED_ARGUMENTS = {
    "dtype": dtypes,
    "times_": mostly(spans, times),
    "rtol": tolerance,
    "backend": mostly(st.sampled_from(["local_reg", "local_reg", "torchdiffeq"]), st.just("bogus")),
    "method": mostly(st.sampled_from([None, "dopri5", "bosh3"]), st.just("tsit")),
    "options": mostly(st.just(None), st.sampled_from([{"bogus": 1}, {"max_steps": 0}])),
    "sampling": st.sampled_from(["random", "biased"]),
    "rate": st.floats(0.1, 3.0),
}


def check_locally_regularized(dtype, times_, rtol, backend, method, options, sampling, rate):
    ts, kind = times_
    # Every example's step budget is bounded, whatever the backend.
    step_limit = {"local_reg": {"max_steps": 400}, "torchdiffeq": {"max_num_steps": 400}}.get(backend, {})
    options = step_limit if options is None else options
    y0 = make_y0((2, 2), dtype, 1.0)

    def forward():
        model = LocallyRegularized(
            Decay(rate),
            sampling=sampling,
            method=method,
            rtol=rtol,
            atol=1e-6,
            backend=backend,
            options=options,
            generator=torch.Generator().manual_seed(0),
        )
        return model(y0, as_container(ts, kind)), model.reg_loss

    result = call_or_documented_error(forward)
    if isinstance(result, DOCUMENTED):
        return type(result).__name__
    ys, reg_loss = result
    assert dtype in (torch.float32, torch.float64)
    assert ys.dtype == dtype and torch.isfinite(ys).all() and torch.isfinite(reg_loss)
    reference = exact(y0, [float(t) for t in ts], rate)
    # torchdiffeq's own controller is looser than local_reg's (its accuracy is not under test here).
    factor = 50.0 if backend == "local_reg" else 500.0
    rtol = 1e-6 if rtol is None else rtol  # the model's default
    assert max_abs(ys.double() - reference) <= tolerance_bound(reference, rtol, 1e-6, dtype, factor)
    return ACCURATE


@SETTINGS
@given(**REGULARIZED_ARGUMENTS)
def test_locally_regularized_returns_a_finite_result_or_a_documented_error(**arguments):
    check_locally_regularized(**arguments)


# Generation only: the first example with the outcome will do, no need to shrink it.
GUARD_SETTINGS = settings(SETTINGS, phases=[Phase.generate])


STRATEGIES = {
    check_odeint: ODEINT_ARGUMENTS,
    check_sdeint: SDEINT_ARGUMENTS,
    check_locally_regularized: REGULARIZED_ARGUMENTS,
}
EVERY_ERROR = ["ValueError", "TypeError", "SolverError"]


@pytest.mark.parametrize(
    "check,outcome",
    [(check_odeint, outcome) for outcome in [ACCURATE, *EVERY_ERROR]]
    + [(check_sdeint, outcome) for outcome in [ACCURATE, *EVERY_ERROR]]
    # Its strategies aim at argument checking, not at making the solve fail.
    + [(check_locally_regularized, outcome) for outcome in [ACCURATE, "ValueError", "TypeError"]],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_the_property_strategies_reach_every_outcome(check, outcome):
    """Guard against a vacuous property: a property whose examples all raise documented errors (or
    all return) passes without testing one side of the contract. Draw from the property's own
    strategies, with the same settings, until an example ends in ``outcome``."""
    examples = st.fixed_dictionaries(STRATEGIES[check])
    try:
        find(examples, lambda drawn: check(**drawn) == outcome, settings=GUARD_SETTINGS)
    except NoSuchExample:
        pytest.fail(f"no example of {check.__name__} drawn from its strategies ended in {outcome}")
