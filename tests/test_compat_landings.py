"""``local_reg.compat`` with torchdiffeq's ``options['jump_t']`` and ``['step_t']`` (local_reg's
``PIController(jump_ts=, step_ts=)``): a field that jumps (or kinks) at known times, solved with
steps that land there, against the analytic solution and torchdiffeq 0.2.5."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import local_reg.compat as compat

DTYPE = torch.float64
Y0 = torch.tensor([0.5, 2.0], dtype=DTYPE)
JUMP = 1.0


class Switched(torch.nn.Module):
    """``y' = -k y + u(t)``, ``u`` switching from 0 to 1 at ``JUMP``: with ``t >= JUMP`` (right-continuous)
    or ``t > JUMP`` (left-continuous), a field's own choice the solve must not depend on."""

    def __init__(self, right_continuous: bool = True, rate: float = 1.0) -> None:
        super().__init__()
        self.right_continuous = right_continuous
        self.rate = torch.nn.Parameter(torch.tensor(rate, dtype=DTYPE))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        on = t >= JUMP if self.right_continuous else t > JUMP
        return -self.rate * y + on.to(y.dtype)


def exact(times, y0=Y0, rate=1.0):
    """The solution from ``y0`` at 0, continuous at the switch."""
    rows = []
    for s in torch.as_tensor(times).tolist():
        if s <= JUMP:
            rows.append(y0 * math.exp(-rate * s))
        else:
            at_jump = y0 * math.exp(-rate * JUMP)
            rows.append(1 / rate + (at_jump - 1 / rate) * math.exp(-rate * (s - JUMP)))
    return torch.stack(rows)


@pytest.mark.parametrize("right_continuous", [True, False], ids=["t>=jump", "t>jump"])
def test_a_jump_is_solved_to_the_tolerance_with_fewer_evaluations_whichever_side_it_belongs_to(
    right_continuous,
):
    t = torch.linspace(0.0, 3.0, 7, dtype=DTYPE)
    across, pieces = Switched(right_continuous), Switched(right_continuous)
    stepped_across = compat.odeint(across, Y0, t)
    solved = compat.odeint(pieces, Y0, t, options={"jump_t": torch.tensor([JUMP])})
    torch.testing.assert_close(solved, exact(t), rtol=1e-7, atol=1e-8)
    # Stepping across the jump, the controller shrinks its steps onto it and errs more.
    assert (stepped_across - exact(t)).abs().max() > 10 * (solved - exact(t)).abs().max()
    assert pieces.calls < 0.5 * across.calls
    reference = torchdiffeq.odeint(
        Switched(right_continuous), Y0, t, options={"jump_t": torch.tensor([JUMP])}
    )
    torch.testing.assert_close(solved, reference, rtol=1e-6, atol=1e-7)


def test_output_times_at_and_beside_the_jump_read_the_continuous_state():
    beside = math.nextafter(JUMP, 2.0)
    t = torch.tensor([0.0, JUMP, beside, 2.0], dtype=DTYPE)
    solved = compat.odeint(Switched(), Y0, t, options={"jump_t": [JUMP]})
    torch.testing.assert_close(solved, exact(t), rtol=1e-7, atol=1e-8)


def test_backwards_in_time_the_jump_is_landed_on_from_the_end():
    t = torch.tensor([3.0, 2.0, 0.5], dtype=DTYPE)
    y3 = exact([3.0])[0]
    solved = compat.odeint(Switched(), y3, t, options={"jump_t": [JUMP]})
    torch.testing.assert_close(solved[-1], exact([0.5])[0], rtol=1e-6, atol=1e-7)


def test_a_tuple_state_and_float32_land_on_the_jump():
    y0 = Y0.float()
    field = Switched()

    def pair(t, y):
        return (field(t, y[0].double()).float(), -y[1])

    first, second = compat.odeint(pair, (y0, y0), torch.tensor([0.0, 2.0]), options={"jump_t": [JUMP]})
    torch.testing.assert_close(first[-1].double(), exact([2.0])[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second[-1], y0 * math.exp(-2.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint", "symplectic"])
def test_gradients_across_the_jump_match_the_analytic_ones(interface):
    field = Switched(rate=0.7)
    y0 = Y0.clone().requires_grad_(True)
    t = torch.tensor([0.0, 2.5], dtype=DTYPE)
    options = {"jump_t": [JUMP]}
    if interface == "odeint":
        ys = compat.odeint(field, y0, t, options=options)
    elif interface == "odeint_adjoint":
        ys = compat.odeint_adjoint(field, y0, t, options=options, adjoint_rtol=1e-10, adjoint_atol=1e-10)
    else:
        ys = compat.odeint_adjoint(field, y0, t, options=options, adjoint_method="symplectic")
    ys[-1].sum().backward()
    # y(2.5) = y0 e^{-2.5 k} + (1 - e^{-1.5 k}) / k.
    k, grow = 0.7, math.exp(-1.5 * 0.7)
    d_y0 = math.exp(-2.5 * k)
    d_k = (-2.5 * Y0 * math.exp(-2.5 * k)).sum() + 2 * (1.5 * grow / k - (1 - grow) / k**2)
    torch.testing.assert_close(y0.grad, torch.full((2,), d_y0, dtype=DTYPE), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(field.rate.grad, d_k, rtol=1e-5, atol=1e-7)


def test_a_kink_lands_a_step_on_its_step_t():
    def kinked(t, y):
        return torch.abs(t - JUMP).to(y.dtype).expand_as(y)

    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    solved = compat.odeint(kinked, Y0, t, options={"step_t": [JUMP]}, rtol=1e-10, atol=1e-10)
    # y(2) = y0 + int_0^2 |s - 1| ds = y0 + 1
    torch.testing.assert_close(solved[-1], Y0 + 1.0, rtol=1e-9, atol=1e-9)
    reference = torchdiffeq.odeint(
        kinked, Y0, t, options={"step_t": torch.tensor([JUMP])}, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(solved, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("jump", [1e3, 1e5])
def test_a_float32_state_far_from_zero_integrates_up_to_the_jump(jump):
    # Steps end and start on the jump itself: none of its neighbourhood, 2 ulps wide in float32
    # (0.016 at 1e5), is skipped. y' = [t >= jump] from 0 over [jump - 10, jump + 10] reaches 10.
    def switched(t, y):
        return (t >= jump).to(y.dtype).expand_as(y)

    t = torch.tensor([jump - 10.0, jump + 10.0], dtype=DTYPE)
    solved = compat.odeint(switched, torch.zeros(1), t, options={"jump_t": [jump]})
    assert solved[-1].item() == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("gap_ulps", [1, 3, 5, 20])
def test_jumps_a_few_ulps_apart_and_next_to_the_end_are_solved(gap_ulps):
    ulp = math.ulp(JUMP)

    def two_switches(t, y):
        return ((t >= JUMP).to(y.dtype) + (t >= JUMP + gap_ulps * ulp).to(y.dtype)).expand_as(y)

    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    jumps = [JUMP, JUMP + gap_ulps * ulp, 2.0 - math.ulp(2.0)]
    solved = compat.odeint(two_switches, torch.zeros(1, dtype=DTYPE), t, options={"jump_t": jumps})
    assert solved[-1].item() == pytest.approx(2.0, abs=1e-12)  # the integral of 1 + 1 over [1, 2]


def test_the_field_never_sees_a_jump_time_but_does_see_a_step_time():
    seen: list[float] = []

    def recording(t, y):
        seen.append(float(t))
        return torch.where(t >= JUMP, -y, y)

    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    compat.odeint(recording, Y0, t, options={"jump_t": [JUMP]})
    assert JUMP not in seen and min(abs(s - JUMP) for s in seen) == math.ulp(JUMP) / 2  # the time before
    assert math.nextafter(JUMP, 2.0) in seen
    seen.clear()
    compat.odeint(recording, Y0, t, options={"step_t": [JUMP]})  # lands on it; no side to choose
    assert JUMP in seen


def test_landings_outside_the_span_change_nothing():
    t = torch.tensor([0.0, 0.8], dtype=DTYPE)
    plain = compat.odeint(Switched(), Y0, t)
    assert torch.equal(compat.odeint(Switched(), Y0, t, options={"jump_t": [JUMP, -1.0, 0.0, 0.8]}), plain)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: compat.odeint(
                Switched(), Y0, torch.tensor([0.0, 2.0]), options={"jump_t": [1.0], "step_t": [1.0]}
            ),
            "share",
        ),
        (
            lambda: compat.odeint(Switched(), Y0, torch.tensor([0.0, 2.0]), options={"jump_t": [math.nan]}),
            "finite",
        ),
        (
            lambda: compat.odeint_adjoint(
                Switched(),
                Y0,
                torch.tensor([0.0, 2.0]),
                options={"jump_t": [1.0]},
                adjoint_options={"jump_t": [1.5]},
            ),
            "adjoint_options",
        ),
        (
            lambda: compat.odeint_adjoint(
                Switched(), Y0, torch.tensor([0.0, 2.0]), adjoint_options={"step_t": [1.5]}
            ),
            "adjoint_options",
        ),
    ],
    ids=["both", "nan", "adjoint-differs", "adjoint-only"],
)
def test_landings_torchdiffeq_refuses_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_an_event_dense_output_and_time_gradients_work_across_the_jump():
    # y' = -y + [t >= 1] from (0.5, 2): y[0] falls to 0.18 at the jump, then rises towards 1,
    # reaching 0.6 (the event) after it.
    t = torch.tensor([0.0, 3.0], dtype=DTYPE)
    options = {"jump_t": [JUMP]}
    event_t, ys = compat.odeint(Switched(), Y0, t, options=options, event_fn=lambda s, y: y[0] - 0.6)
    at_jump = 0.5 * math.exp(-JUMP)
    expected = JUMP + math.log((1 - at_jump) / (1 - 0.6))  # 1 + (y(1) - 1) e^{-(s - 1)} = 0.6
    assert event_t.item() == pytest.approx(expected, abs=1e-7)
    dense = compat.odeint_dense(Switched(), Y0, 0.0, 3.0, options=options)
    inside = torch.tensor([0.3, JUMP, 1.7], dtype=DTYPE)
    torch.testing.assert_close(torch.stack([dense(s) for s in inside]), exact(inside), rtol=1e-6, atol=1e-7)
    # dL/dt1 = <v, f(t1, y(t1))> for an end time after the jump.
    times = torch.tensor([0.0, 2.0], dtype=DTYPE, requires_grad=True)
    solved = compat.odeint(Switched(), Y0, times, options=options)
    solved[-1].sum().backward()
    rate = (-exact([2.0])[0] + 1.0).sum()
    torch.testing.assert_close(times.grad[1], rate, rtol=1e-6, atol=1e-8)


def test_adjoint_options_may_repeat_the_landings_in_another_order_and_type():
    t = torch.tensor([0.0, 2.5], dtype=DTYPE)
    options = {"jump_t": torch.tensor([JUMP, 2.0], dtype=DTYPE)}
    ys = compat.odeint_adjoint(Switched(), Y0, t, options=options, adjoint_options={"jump_t": [2.0, JUMP]})
    torch.testing.assert_close(ys, compat.odeint_adjoint(Switched(), Y0, t, options=options))


def test_a_fixed_step_method_ignores_landings_with_a_warning_as_torchdiffeq():
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    with pytest.warns(UserWarning, match="jump_t"):
        solved = compat.odeint(Switched(), Y0, t, method="rk4", options={"step_size": 0.1, "jump_t": [JUMP]})
    torch.testing.assert_close(
        solved, compat.odeint(Switched(), Y0, t, method="rk4", options={"step_size": 0.1})
    )
