"""Terminal events: the event time's error and the evaluations spent, local_reg beside torchdiffeq.

``odeint_event`` of ``local_reg.compat`` and of torchdiffeq 0.2.5 on three small float64 problems
(dopri5, torchdiffeq's default tolerances rtol=1e-7, atol=1e-9): a falling ball (analytic event
time), a damped spiral crossing a moving threshold and a driven pendulum (event times from scipy's
``solve_ivp`` with DOP853 at rtol=1e-13 and its own event location). Reported: the event time's
error, the calls of ``func`` in the forward solve and of ``event_fn`` (the per-step sign checks and
the root finding), and the calls of ``func`` in the backward pass of ``d event_t / d y0`` (plain
backpropagation, ``odeint``). Counts are deterministic.

    python benchmarks/events.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torchdiffeq
from fields import CallCounter
from scipy.integrate import solve_ivp

import local_reg.compat as compat


def ball(t, y):
    return torch.stack([y[1], torch.full_like(y[1], -9.81)])


def spiral(t, y):
    return torch.stack([-0.1 * y[0] + y[1], -y[0] - 0.1 * y[1]])


def pendulum(t, y):
    return torch.stack([y[1], -(1.3**2) * torch.sin(y[0]) - 0.2 * y[1] + 0.4 * torch.cos(t)])


PROBLEMS = {
    "ball": (ball, [10.0, 2.0], lambda t, y: y[0]),
    "spiral": (spiral, [1.0, 0.0], lambda t, y: y[0] - 0.2 * torch.cos(t)),
    "pendulum": (pendulum, [1.0, 0.5], lambda t, y: y[0] + 0.3),
}


def reference_time(func, y0, event_fn) -> float:
    """The first event time from scipy (DOP853 at rtol=1e-13, its own event location)."""

    def rhs(t, y):
        return func(torch.tensor(t, dtype=torch.float64), torch.tensor(y)).numpy()

    def event(t, y):
        return float(event_fn(torch.tensor(t, dtype=torch.float64), torch.tensor(y)))

    event.terminal = True
    solved = solve_ivp(rhs, (0.0, 100.0), np.array(y0), method="DOP853", rtol=1e-13, atol=1e-15, events=event)
    return float(solved.t_events[0][0])


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print("| problem | library | event time error | NFE forward | event_fn calls | NFE backward |")
    print("|---|---|---|---|---|---|")
    for name, (func, state, event_fn) in PROBLEMS.items():
        exact = math.sqrt(2.0**2 + 2 * 9.81 * 10.0) / 9.81 + 2.0 / 9.81 if name == "ball" else None
        reference = exact if exact is not None else reference_time(func, state, event_fn)
        for library, module in (("local_reg.compat", compat), ("torchdiffeq", torchdiffeq)):
            counted_func, counted_event = CallCounter(func), CallCounter(event_fn)
            y0 = torch.tensor(state, dtype=torch.float64, requires_grad=True)
            event_t, _ = module.odeint_event(
                counted_func, y0, torch.tensor(0.0, dtype=torch.float64), event_fn=counted_event
            )
            forward, events = counted_func.calls, counted_event.calls
            counted_func.calls = 0
            torch.autograd.grad(event_t, y0)
            error = abs(event_t.item() - reference)
            print(f"| {name} | {library} | {error:.1e} | {forward} | {events} | {counted_func.calls} |")


if __name__ == "__main__":
    main()
