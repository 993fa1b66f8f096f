"""``InterpolatingAdjoint``: the adjoint system solved backwards with ``y(t)`` read from the forward
solve's dense output, checked against analytic gradients, against ``direct`` as the tolerances
tighten, and where the backsolve adjoint's backward ``y`` is unstable."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from local_reg import (
    BacksolveAdjoint,
    InterpolatingAdjoint,
    LocallyRegularized,
    PIController,
    SolverError,
    odeint,
    odeint_event,
)
from tests.test_gradients import TIMES, TinyField, gradients, relative_error
from tests.test_jump_times import JUMP, Forced, exact

DTYPE = torch.float64


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_where_the_backsolved_state_is_unstable_the_interpolated_one_gives_the_gradient():
    # benchmarks/adjoint_stability.py's problem, u' = -20 u, v' = -v + 3 u^2, at T = 3: the
    # backsolve's u(0) is the forward's u(3) ~ 1e-26, with its absolute error, times e^60.
    stability = load_benchmark("adjoint_stability")
    expected = stability.exact_gradient(3.0)
    interpolated, interpolated_nfe, _ = stability.gradient("interpolating_adjoint", 3.0, 1e-7)
    assert relative_error(interpolated, expected) < 1e-6
    # The backsolve's y left the forward solution: it says so (its gradient was wrong silently).
    with pytest.warns(UserWarning, match="the backsolve adjoint's y, solved backwards, has left the forward"):
        backsolved, backsolved_nfe, _ = stability.gradient("adjoint", 3.0, 1e-7)
    assert relative_error(backsolved, expected) > 1.0
    assert interpolated_nfe < backsolved_nfe
    # Where the backward y is stable (T = 0.5), no word, and the gradient is right; nor where a
    # state has decayed to the tolerance's scale (y' = -p y to t = 20: y(15) ~ 3e-7, known to atol
    # 1e-8, a 50% relative gap, with a gradient exact to 1e-6).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stable, _, _ = stability.gradient("adjoint", 0.5, 1e-7)
        rate = torch.tensor(1.0, dtype=DTYPE, requires_grad=True)
        times = torch.linspace(0.0, 20.0, 5, dtype=DTYPE)
        decayed = odeint(
            lambda t, y: -rate * y,
            torch.ones(2, dtype=DTYPE),
            times,
            gradient="adjoint",
            adjoint_params=(rate,),
        )
        (backsolved,) = torch.autograd.grad(decayed.ys.sum(), rate)
    assert relative_error(stable, stability.exact_gradient(0.5)) < 1e-5
    (reference,) = torch.autograd.grad(
        odeint(lambda t, y: -rate * y, torch.ones(2, dtype=DTYPE), times).ys.sum(), rate
    )
    assert relative_error(backsolved, reference) < 1e-5
    # At T = 20 the backsolved state overflows: the error says where to turn, not only that the
    # solution looks singular (the forward solution is bounded).
    unstable = r"solving y backwards .* is unstable.*'interpolating_adjoint'"
    with pytest.raises(SolverError, match=unstable), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stability.gradient("adjoint", 20.0, 1e-7)


def test_the_backsolves_drift_is_judged_element_by_element_against_its_tolerance():
    """Lorenz-63 beside a constant component of 5000 (an accumulated cost): its backsolved y drifts
    by 5 at t = 0.5, 83% of the gradient, which a test against the state's largest element missed.
    A rotation through zero components at loose rtol, and a state that starts at zero, are
    backsolved within their tolerance: no word. No failure there names y's instability either."""
    p = torch.tensor([10.0, 28.0, 8 / 3], dtype=DTYPE, requires_grad=True)

    def lorenz_and_constant(t, s):
        x, y, z = s[..., 0], s[..., 1], s[..., 2]
        return torch.stack([p[0] * (y - x), x * (p[1] - z) - y, x * y - p[2] * z, 0 * x], -1)

    y0 = torch.tensor([[1.0, 1.0, 1.0, 5000.0]], dtype=DTYPE)
    times = torch.tensor([0.0, 0.5, 2.0], dtype=DTYPE)
    solution = odeint(
        lorenz_and_constant, y0, times, gradient="adjoint", rtol=1e-8, atol=1e-8, adjoint_params=(p,)
    )
    with pytest.warns(
        UserWarning, match="has left the forward solution.*may be wrong here.*against gradient=.direct."
    ):
        solution.ys[1:, ..., :3].pow(2).sum().backward()
    rotation = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=DTYPE, requires_grad=True)
    quarter_turns = torch.linspace(0.0, 2 * torch.pi, 5, dtype=DTYPE)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(DTYPE)
    # The last: a backward tolerance tighter than the forward's does not make the forward's outputs
    # more accurate, so the drift is judged against the larger tolerance (it warned, at the same
    # gradient).
    rotations = (
        (1e-3, 1e-6, "adjoint"),
        (1e-6, 1e-8, "adjoint"),
        (1e-4, 1e-6, BacksolveAdjoint(rtol=1e-9, atol=1e-10)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rtol, atol, gradient in rotations:
            turned = odeint(
                lambda t, y: y @ rotation.T,
                torch.tensor([1.0, 0.0], dtype=DTYPE),
                quarter_turns,
                rtol=rtol,
                atol=atol,
                gradient=gradient,
                adjoint_params=(rotation,),
            )
            turned.ys.pow(2).sum().backward()
        from_zero = odeint(
            lambda t, y: net(y),
            torch.zeros(8, 2, dtype=DTYPE),
            TIMES,
            gradient="adjoint",
            adjoint_params=net.parameters(),
        )
        from_zero.ys[-1].pow(2).sum().backward()
    with pytest.raises(
        SolverError, match=r"^backsolve adjoint.*max_steps=5 exceeded \(raise Backsolve"
    ) as failed:
        odeint(
            lambda t, y: torch.cos(t) * y,
            torch.ones(2, dtype=DTYPE, requires_grad=True),
            [0.0, 8.0],
            gradient=BacksolveAdjoint(max_steps=5),
            adjoint_params=(),
        ).ys.sum().backward()
    assert "unstable" not in str(failed.value)
    # A max_steps failure after many times the forward's steps (Lorenz-63 over [0, 2]: 75 forward)
    # is the instability again, and says so.
    lorenz = odeint(
        lambda t, s: lorenz_and_constant(t, s)[..., :3],
        y0[..., :3],
        [0.0, 2.0],
        rtol=1e-6,
        atol=1e-6,
        gradient=BacksolveAdjoint(max_steps=1000),
        adjoint_params=(p,),
    )
    with pytest.raises(SolverError, match=r"max_steps=1000 exceeded.*solving y backwards .* is unstable"):
        lorenz.ys[-1].sum().backward()


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bosh3", "heun_euler"])
def test_the_gradient_converges_to_directs_as_the_tolerances_tighten(method):
    # Several output times carry a cotangent, some read inside steps: each restarts the backward
    # solve, which reads y(t) from the forward's interpolant (cubic Hermite for heun_euler).
    torch.manual_seed(0)
    field = TinyField()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    errors = []
    # The low orders reach tight tolerances in many steps: they stop earlier.
    ladder = {"heun_euler": (1e-2, 1e-4, 1e-6), "bosh3": (1e-4, 1e-6, 1e-8)}.get(method, (1e-5, 1e-8, 1e-11))
    for tolerance in ladder:
        options = {"method": method, "rtol": tolerance, "atol": tolerance}
        reference, _ = gradients(field, y0, "direct", **options)
        result, solution = gradients(field, y0, InterpolatingAdjoint(), **options)
        assert solution.stats.nfe_backward > 0
        errors.append(relative_error(result, reference))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 100 * ladder[-1]


@pytest.mark.parametrize("norm", ["default", "seminorm"])
def test_its_own_tolerances_norm_and_method_set_the_backward_solve(norm):
    torch.manual_seed(1)
    field = TinyField()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    forward = {"rtol": 1e-10, "atol": 1e-10}
    reference, _ = gradients(field, y0, "direct", **forward)
    loose, loose_solution = gradients(
        field, y0, InterpolatingAdjoint(rtol=1e-4, atol=1e-4, norm=norm), **forward
    )
    tight, tight_solution = gradients(
        field, y0, InterpolatingAdjoint(method="dopri5", rtol=1e-10, atol=1e-10, norm=norm), **forward
    )
    assert loose_solution.stats.nfe_backward < tight_solution.stats.nfe_backward
    assert relative_error(tight, reference) < 1e-7 < relative_error(loose, reference)


def test_the_dense_record_is_the_methods_own_unless_asked_for():
    torch.manual_seed(2)
    field = TinyField()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    plain, plain_solution = gradients(field, y0, "interpolating_adjoint")
    assert plain_solution.steps.dense_output is None
    with pytest.raises(ValueError, match="dense=True"):
        plain_solution.evaluate(0.5)
    asked, asked_solution = gradients(field, y0, "interpolating_adjoint", dense=True)
    torch.testing.assert_close(asked, plain, rtol=0, atol=0)
    direct = odeint(field, y0, TIMES, dense=True)
    torch.testing.assert_close(asked_solution.evaluate(0.5), direct.evaluate(0.5))


def test_a_float32_solve_reads_its_span_ends_through_rounded_stage_times():
    # A float32 field gets its stage times rounded to float32: 0.1 rounds above the recorded 0.1.
    torch.manual_seed(3)
    field = TinyField().float()
    y0 = torch.randn(2, 3, requires_grad=True)
    solution = odeint(field, y0, [0.0, 0.1], gradient="interpolating_adjoint")
    (grad,) = torch.autograd.grad(solution.ys[-1].sum(), y0)
    reference_y0 = y0.detach().clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(odeint(field, reference_y0, [0.0, 0.1]).ys[-1].sum(), reference_y0)
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("t0", "dtype", "checkpoints"),
    [(1e12, torch.float64, None), (1e12, torch.float64, 2), (1e4, torch.float32, None)],
)
def test_a_span_far_from_zero_reads_each_stage_at_its_place_in_the_step(t0, dtype, checkpoints):
    """Far from t = 0 a stage's time rounds by ulps of t (1.2e-4 at 1e12 in float64, 1e-3 at 1e4 in
    float32): y read there was off by that times its rate, noise the backward error estimate chased
    (float64 at 1e12: a step size underflow; float32 at 1e4: 40x the backward evaluations and 30x
    the error). The stage is read at its exact fraction of the step instead."""

    class Autonomous(TinyField):  # the same dynamics at every t0
        def forward(self, t, y):
            return self.scale * self.net(y)

    torch.manual_seed(0)
    field = Autonomous().to(dtype)
    y0 = torch.randn(2, 3, dtype=dtype)
    tol = 1e-8 if dtype == torch.float64 else 1e-6
    options = {"rtol": tol, "atol": tol}
    gradient = InterpolatingAdjoint(checkpoints=checkpoints)
    near, near_solution = gradients(field, y0, gradient, times=[0.0, 1.0], **options)
    far, far_solution = gradients(
        field, y0, gradient, times=torch.tensor([t0, t0 + 1.0], dtype=dtype), **options
    )
    direct, _ = gradients(field, y0, "direct", times=[0.0, 1.0], **options)
    assert relative_error(far, direct) < 10 * max(relative_error(near, direct), 1e-7)
    assert far_solution.stats.nfe_backward <= 1.2 * near_solution.stats.nfe_backward


def test_jumps_and_a_gradient_with_respect_to_the_output_times():
    # The forward steps land on the jump; the backward solve lands there too and reads y(t) on
    # each side from the steps beside it.
    model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=DTYPE, requires_grad=True)
    solution = odeint(
        model,
        y0,
        t,
        rtol=1e-10,
        atol=1e-12,
        gradient=InterpolatingAdjoint(),
        controller=PIController(jump_ts=[JUMP]),
    )
    result = torch.autograd.grad(
        solution.ys[-1].sum() + solution.ys[1].sum(), (y0, model.rate, model.amplitude, t)
    )
    solved = exact(model, y0, 0.0, 1.0).sum() + exact(model, y0, 0.0, 0.3).sum()
    expected = torch.autograd.grad(solved, (y0, model.rate, model.amplitude))
    for got, want in zip(result[:3], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    # d/dt1 of sum y(t1) is sum f(t1, y(t1)); no dependence on t0 but through y.
    rate_at_end = model(torch.tensor(1.0, dtype=DTYPE), solution.ys[-1].detach()).sum()
    torch.testing.assert_close(result[3][2], rate_at_end, rtol=1e-7, atol=1e-9)


def test_a_stop_condition_is_refused_by_name():
    field = TinyField()
    y0 = torch.randn(3, dtype=DTYPE, requires_grad=True)
    with pytest.raises(ValueError, match=r"interpolating_adjoint.*stop condition"):
        odeint_event(field, y0, 0.0, event_fn=lambda t, y: y[0] - 10.0, gradient="interpolating_adjoint")


def test_its_settings_are_checked_by_name():
    with pytest.raises(ValueError, match="InterpolatingAdjoint: norm"):
        InterpolatingAdjoint(norm="l2")
    with pytest.raises(ValueError, match="InterpolatingAdjoint rtol"):
        InterpolatingAdjoint(rtol=-1.0)
    with pytest.raises(ValueError, match=r"pass InterpolatingAdjoint\(step_size=...\)"):
        odeint(
            TinyField(), torch.ones(3, dtype=DTYPE), [0.0, 1.0], gradient=InterpolatingAdjoint(method="rk4")
        )


def test_a_locally_regularized_model_trains_with_it():
    torch.manual_seed(4)
    y0 = torch.randn(4, 3, dtype=DTYPE)
    grads = {}
    for gradient in ("direct", "interpolating_adjoint"):
        torch.manual_seed(5)
        model = LocallyRegularized(TinyField(), gradient=gradient, rtol=1e-9, atol=1e-9)
        ys = model(y0, [0.0, 1.0])
        (ys.square().sum() + model.reg_loss).backward()
        grads[gradient] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert relative_error(grads["interpolating_adjoint"], grads["direct"]) < 1e-5
    with pytest.raises(ValueError, match="torchdiffeq"):
        LocallyRegularized(TinyField(), gradient="interpolating_adjoint", backend="torchdiffeq")


def test_the_backsolve_keeps_its_messages():
    # The two share their settings' code: the backsolve's names stay its own.
    with pytest.raises(ValueError, match=r"BacksolveAdjoint: norm"):
        BacksolveAdjoint(norm="l2")
    options = {"atol": torch.tensor([1e-8, 1e-9, 1e-8], dtype=DTYPE)}
    with pytest.raises(ValueError, match=r"backsolve adjoint's solve.*local_reg.compat adjoint_atol"):
        odeint(TinyField(), torch.ones(3, dtype=DTYPE), [0.0, 1.0], gradient="adjoint", **options)
    with pytest.raises(
        ValueError, match=r"interpolating adjoint's solve.*InterpolatingAdjoint\(atol=...\)\)"
    ):
        odeint(
            TinyField(), torch.ones(3, dtype=DTYPE), [0.0, 1.0], gradient="interpolating_adjoint", **options
        )


def test_the_backward_solve_is_odeint_of_the_adjoint_system_on_the_dense_solution():
    # An independent reference: odeint of z = (a, g), z' = (-a^T df/dy, -a^T df/dtheta) at
    # y(t) = the forward solution's evaluate(t), from (dL/dy(t1), 0) back to t0 with the same method
    # and tolerances, its error norm the RMS over all of z (the method's default norm).
    torch.manual_seed(6)
    field = TinyField()
    params = tuple(field.parameters())
    y0 = torch.randn(3, dtype=DTYPE)
    forward = odeint(field, y0, [0.0, 1.0], dense=True)

    def adjoint_system(t, z):
        with torch.enable_grad():
            y = forward.evaluate(t).detach().requires_grad_(True)
            grads = torch.autograd.grad(field(t, y), (y, *params), -z[: y.numel()])
        return torch.cat([g.reshape(-1) for g in grads])

    start = torch.cat([torch.ones(3, dtype=DTYPE), torch.zeros(sum(p.numel() for p in params), dtype=DTYPE)])
    reference = odeint(adjoint_system, start, [1.0, 0.0])
    y = y0.clone().requires_grad_(True)
    solution = odeint(field, y, [0.0, 1.0], gradient="interpolating_adjoint")
    grads = torch.autograd.grad(solution.ys[-1].sum(), (y, *params))
    torch.testing.assert_close(
        torch.cat([g.reshape(-1) for g in grads]), reference.ys[-1], rtol=1e-12, atol=1e-14
    )
    assert solution.stats.nfe_backward == reference.stats.nfe


@pytest.mark.parametrize("method", ["tsit5", "heun_euler"])
@pytest.mark.parametrize("checkpoints", [1, 2, 3])
def test_a_budget_of_step_states_replays_the_forward_solution_to_the_bit(method, checkpoints):
    # With checkpoints=C the forward keeps at most C step states instead of the dense record, and the
    # backward pass re-solves the segment holding each time it reads: the same y(t), the same
    # gradient, for the re-solve's evaluations (heun_euler: its cubic Hermite end derivatives too).
    torch.manual_seed(7)
    field = TinyField()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    options = {"times": [0.0, 0.6, 1.7, 2.0], "method": method, "rtol": 1e-5, "atol": 1e-5}
    whole, whole_solution = gradients(field, y0, "interpolating_adjoint", **options)
    kept, kept_solution = gradients(field, y0, InterpolatingAdjoint(checkpoints=checkpoints), **options)
    assert torch.equal(kept, whole)
    assert kept_solution.steps.dense_output is None
    assert kept_solution.stats.nfe_backward > whole_solution.stats.nfe_backward


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("euler", {"step_size": 0.1}),
        ("rk4", {"step_size": 0.1}),
        ("heun_euler", {"rtol": 1e-5, "atol": 1e-7}),
        ("tsit5", {"rtol": 1e-6, "atol": 1e-8}),
        ("dopri8", {"rtol": 1e-10, "atol": 1e-12}),
    ],
)
def test_a_budget_costs_one_more_forward_solve_and_an_evaluation_per_segment(method, options):
    """The replay took each Hermite step's end derivative anew where the forward took the next
    step's first stage (euler's backward cost 2 forward solves more, rk4's 1.25), and kept one
    segment alone, so a backward step straddling a segment's start re-solved both segments again
    when it was rejected or read them in turn (tsit5: 1.47 forward solves). Counted by a field that
    counts its own calls."""

    class Counted(TinyField):
        calls = 0

        def forward(self, t, y):
            self.calls += 1
            return super().forward(t, y)

    torch.manual_seed(0)
    field = Counted()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    times = torch.linspace(0.0, 3.0, 3, dtype=DTYPE)
    whole, whole_solution = gradients(
        field, y0, "interpolating_adjoint", times=times, method=method, **options
    )
    checkpoints, field.calls = 4, 0
    kept, kept_solution = gradients(
        field, y0, InterpolatingAdjoint(checkpoints=checkpoints), times=times, method=method, **options
    )
    assert torch.equal(kept, whole)
    assert field.calls == kept_solution.stats.nfe + kept_solution.stats.nfe_backward
    replay = kept_solution.stats.nfe_backward - whole_solution.stats.nfe_backward
    assert whole_solution.stats.n_accepted > 4 * checkpoints
    assert replay <= whole_solution.stats.nfe + checkpoints


@pytest.mark.parametrize("method", ["tsit5", "bosh3"])
def test_a_budget_replays_segments_of_steps_also_where_every_state_is_recorded(method):
    """With ``record_states=True`` every state was kept for the replay too, each step then replayed
    alone with its first stage evaluated anew: one evaluation per step more than the budget's one
    forward solve (819 where it costs 710 on a 117-step solve). The budget stands: the same
    gradient, the same backward cost as without the record."""
    torch.manual_seed(3)
    field = TinyField()
    y0 = torch.randn(2, 3, dtype=DTYPE)
    options = {"times": [0.0, 0.6, 1.7, 4.0], "method": method, "rtol": 1e-7, "atol": 1e-7}
    budget = InterpolatingAdjoint(checkpoints=3)
    plain, plain_solution = gradients(field, y0, budget, **options)
    recorded, recorded_solution = gradients(field, y0, budget, record_states=True, **options)
    assert recorded_solution.steps.states is not None
    assert recorded_solution.stats.n_accepted > 20
    assert torch.equal(recorded, plain)
    assert recorded_solution.stats.nfe_backward == plain_solution.stats.nfe_backward


@pytest.mark.parametrize("method", ["tsit5", "heun_euler"])
@pytest.mark.parametrize("span", [(0.0, 1.0), (1.0, 0.0)], ids=["forward", "backward"])
def test_the_replay_repeats_the_steps_beside_a_jump(span, method):
    # heun_euler's cubic Hermite interpolant reads f at each step's end: before a jump there.
    model = Forced()
    y0 = torch.tensor([1.0, -0.5], dtype=DTYPE)
    times = [span[0], 0.3 if span[0] < span[1] else 0.7, span[1]]
    options = {"controller": PIController(jump_ts=[JUMP]), "times": times, "method": method, "rtol": 1e-5}
    whole, _ = gradients(model, y0, "interpolating_adjoint", **options)
    kept, _ = gradients(model, y0, InterpolatingAdjoint(checkpoints=2), **options)
    assert torch.equal(kept, whole)


def test_a_float32_loss_scaled_below_its_squares_range_is_solved_as_the_unscaled_one():
    """The cotangents' RMS was summed in float32, whose squares underflow below cotangents of about
    1e-22: the scale fell back to 1 and the tiny adjoint was controlled by atol alone (2.7e-3 off
    where the unscaled loss is 4e-6 off). Summed in float64, the backward steps are the same."""
    torch.manual_seed(8)
    field = TinyField().float()
    y0 = torch.randn(4, 3, requires_grad=True)
    params = (y0, *field.parameters())

    def gradient_and_cost(scale):
        solution = odeint(field, y0, TIMES, gradient="interpolating_adjoint", rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(scale * solution.ys[1:].square().sum(), params)
        return torch.cat([g.reshape(-1) for g in grads]) / scale, solution.stats.nfe_backward

    reference, reference_nfe = gradient_and_cost(1.0)
    scaled, scaled_nfe = gradient_and_cost(1e-25)
    assert scaled_nfe == reference_nfe
    torch.testing.assert_close(scaled, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_budget_is_refused_by_name(bad, error):
    with pytest.raises(error, match="checkpoints"):
        InterpolatingAdjoint(checkpoints=bad)
    assert "checkpoints=4" in repr(InterpolatingAdjoint(checkpoints=4))


@pytest.mark.parametrize("factor", [1e-6, 1e3])
def test_the_backward_solve_does_not_depend_on_the_losss_scale(factor):
    # Solved from the cotangents divided by their largest RMS, a loss scaled by any factor (a mean
    # over many entries instead of a sum) takes the same backward steps, and its gradient is the
    # factor times the other's: the forward's atol does not pass a tiny adjoint at large error.
    torch.manual_seed(8)
    field = TinyField()
    y0 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    params = (y0, *field.parameters())

    def gradient_and_cost(scale):
        solution = odeint(field, y0, TIMES, gradient="interpolating_adjoint")
        grads = torch.autograd.grad(scale * solution.ys[1:].square().sum(), params)
        return torch.cat([g.reshape(-1) for g in grads]), solution.stats.nfe_backward

    reference, reference_nfe = gradient_and_cost(1.0)
    scaled, scaled_nfe = gradient_and_cost(factor)
    assert scaled_nfe == reference_nfe
    torch.testing.assert_close(scaled, factor * reference, rtol=1e-12, atol=0)


def test_the_drift_warning_of_a_fixed_step_backward_solve_names_its_step_first():
    """A contracting linear field solved forward by rk4: Euler's backward steps of 0.01 drift by
    their own first-order error (1e-3 steps do not), which the warning blamed on the flow alone."""
    weight = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=DTYPE, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=DTYPE)
    times = torch.linspace(0.0, 1.5, 4, dtype=DTYPE)

    def backward_with(step_size):
        solution = odeint(
            lambda t, y: y @ weight.T,
            y0,
            times,
            method="rk4",
            step_size=0.1,
            gradient=BacksolveAdjoint(method="euler", step_size=step_size),
            adjoint_params=(weight,),
        )
        solution.ys[1:].pow(2).sum().backward()

    with pytest.warns(UserWarning, match=r"fixed steps \(euler, step_size 0\.01\) may be too coarse"):
        backward_with(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backward_with(1e-3)
