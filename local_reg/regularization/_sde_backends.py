"""The main SDE solve of a regularizer: ``local_reg.sdeint`` or torchsde.

torchsde (Li et al. 2020, "Scalable gradients for stochastic differential equations"; Kidger et
al. 2021) offers ``sdeint`` and the stochastic adjoint ``sdeint_adjoint``. It is driven by the
same Brownian motion as the regularization step, so the penalty is measured on the path the model
was trained on. Its outputs between steps are linear interpolations, so ``u(t_reg)`` is
approximate there, and it does not report its steps: biased sampling and ``step_size="solver"``
need the ``local_reg`` backend.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_times_distinct, times_as_given
from ..gradients import BacksolveAdjoint, Checkpoint, Direct, GradientMethod, as_gradient_method
from ..gradients._finite import guard_direct_gradients, in_float16_autocast
from ..gradients._function import in_peer_backward
from ..gradients._params import peer_module_check
from ..sde import sdeint
from ..sde._sdeint import sde_gradient
from ..solution import Stats
from ._main_solve import (
    BackwardCounter,
    FinitenessRecord,
    MainSolve,
    Request,
    call_user,
    check_peer_outputs,
    peer_solver_error,
    raised_by_user,
)

BACKENDS = ("local_reg", "torchsde")
GRADIENTS = {"local_reg": ("direct", "checkpoint"), "torchsde": ("direct", "adjoint")}
DEFAULT_METHOD = {"local_reg": "euler_maruyama", "torchsde": "euler"}


def check_backend_gradient(backend: object, gradient: object) -> GradientMethod:
    """The gradient method (checked) of the main SDE solve on ``backend``."""
    if backend == "torchdiffeq":
        raise ValueError("backend='torchdiffeq' solves ODEs: an SDE takes backend='local_reg' or 'torchsde'")
    backend = check_choice("backend", backend, BACKENDS)
    method = as_gradient_method(gradient)
    allowed = (Direct, BacksolveAdjoint) if backend == "torchsde" else (Direct, Checkpoint)
    if not isinstance(method, allowed):
        raise ValueError(
            f"gradient={method.name!r} is not available for SDEs with backend={backend!r}: expected one "
            f"of {list(GRADIENTS[backend])} ('adjoint' is torchsde.sdeint_adjoint, backend='torchsde')"
        )
    if backend == "local_reg":
        sde_gradient(method, None)  # sdeint's own refusals (Checkpoint's checkpoints), now
    return method


class CountingSDE(nn.Module):
    """Wraps an SDE for torchsde and counts drift and diffusion calls.

    The SDE is a submodule, so ``sdeint_adjoint``'s default ``adjoint_params`` are its parameters.
    """

    def __init__(self, sde: Any) -> None:
        super().__init__()
        self.sde = sde
        self.noise_type = sde.noise_type
        self.sde_type = getattr(sde, "sde_type", "ito")
        self.drift_calls = 0
        self.diffusion_calls = 0
        self.last_t: Tensor | None = None
        """The time of the last drift evaluation of the forward solve: where a failed solve stopped."""
        self.calls_record = FinitenessRecord(1.0, "the drift or diffusion returned non-finite values")
        """The forward solve's drift and diffusion calls, all of them (torchsde reports no accepted
        step to clear the record at): where they returned non-finite values, read where the solve
        fails, past which the last evaluation may lie (an adaptive step's full and half steps)."""
        self.solving = False
        """Whether the forward solve runs (the adjoint's backward solve calls the drift too)."""
        self.reevaluated_by: str | None = None
        """The adjoint (a gradient method's name) whose backward pass evaluates the SDE again."""

    @property
    def calls(self) -> int:
        return self.drift_calls + self.diffusion_calls

    @property
    def evaluations(self) -> str:
        """The evaluations so far, as a failure names them."""
        return f"{self.calls} evaluations of the drift and diffusion"

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        self.drift_calls += 1
        if self.solving:
            self.last_t = t
        with in_peer_backward(self.reevaluated_by):
            return self._noted(t, call_user(self.sde.f, t, y), "drift f")

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        self.diffusion_calls += 1
        with in_peer_backward(self.reevaluated_by):
            return self._noted(t, call_user(self.sde.g, t, y), "diffusion g")

    def _noted(self, t: Tensor, output: Tensor, name: str) -> Tensor:
        if self.solving and isinstance(output, Tensor):  # torchsde's own error for another type
            if not output.dtype.is_floating_point:
                # A complex or integer output made a complex or wrong solution without a word.
                raise TypeError(
                    f"the SDE's {name} returned a {output.dtype} tensor: it must return a real float"
                )
            self.calls_record.note(t, output)
        return output


def solve_main(
    problem: Any,
    y0: Tensor,
    times: list[float],
    bm: Any,
    request: Request,
    rounded_to: torch.dtype | None = None,
) -> MainSolve:
    """Solve ``problem`` (an :class:`~._problems.SDEProblem`) at ``times`` on the Brownian motion
    ``bm``; its ``options`` are extra keywords of the backend's solver (``local_reg.sdeint``, or
    ``torchsde.sdeint``: e.g. ``dt``, ``adaptive``); ``rounded_to``: the float the times came in
    (local_reg's fixed steps allow for its rounding)."""
    sde, backend, method, gradient = problem.sde, problem.backend, problem.method, problem.gradient
    rtol, atol = problem.rtol, problem.atol
    method = DEFAULT_METHOD[backend] if method is None else method
    options = dict(problem.options)
    if backend == "local_reg":
        for key in problem.main_solve_unread:
            options.pop(key, None)  # the probe's alone, if any
        solution = sdeint(
            sde,
            y0,
            times_as_given(times, rounded_to),
            method=method,
            rtol=rtol,
            atol=atol,
            bm=bm,
            record_states=request.states,
            step_penalty=request.step_penalty,
            gradient=gradient,
            adjoint_params=problem.adjoint_params,
            **options,
        )
        return MainSolve.from_solution(solution)

    import torchsde

    if bm is not None:
        _check_torchsde_brownian(torchsde, bm, y0)
    counting = CountingSDE(sde)
    # torchsde's own message for times this makes equal says they are not increasing.
    check_times_distinct(times, y0.dtype, "(y0's: torchsde's ts): solve in float64 or shift t towards 0")
    ts = torch.tensor(times, dtype=y0.dtype, device=y0.device)
    # torchsde's adaptive mode estimates the error by step doubling; its dt is the first step.
    options.setdefault("adaptive", True)
    options.setdefault("dt", (times[-1] - times[0]) / 20)
    is_adjoint = isinstance(gradient, BacksolveAdjoint)
    # torchsde's adjoint evaluates the SDE again in its backward pass, as local_reg's checkpoint.
    check_module = peer_module_check(sde, gradient, "sde") if is_adjoint else None
    solve = torchsde.sdeint_adjoint if is_adjoint else torchsde.sdeint
    counting.solving = True
    try:
        ys = solve(counting, y0, ts, bm=bm, method=method, rtol=rtol, atol=atol, **options)
        if is_adjoint:
            # Its backward pass evaluates the SDE again; its forward solve, even inside a backward
            # pass (torch.utils.checkpoint's recomputation), does not.
            counting.reevaluated_by = gradient.name
    except AssertionError as error:
        if raised_by_user(error):
            raise  # the user's own, from the drift or diffusion: as the local_reg backend passes it on
        raise peer_solver_error(
            error, "torchsde", counting.evaluations, y0, counting.last_t, None, counting.calls_record
        ) from error
    else:
        # Read before the record goes: torchsde's fixed steps go on with non-finite values.
        check_peer_outputs(ys, times, "torchsde", counting.evaluations, counting.calls_record)
    finally:
        # The stats keep the wrapper, not its tensors.
        counting.solving, counting.last_t = False, None
        counting.calls_record.clear()
    if check_module is not None:
        check_module(ys)
    if ys.requires_grad:
        # As local_reg.sdeint's: torchsde hands a NaN gradient back without a word. The tensors
        # checked are the model's adjoint_params (those torchsde's adjoint differentiates), by
        # default the SDE's parameters, under either gradient, as sdeint's.
        inputs = (y0, *problem.checked_params())
        float16 = in_float16_autocast()
        guard_direct_gradients(inputs, times[0], None, problem.field_name, float16_autocast=float16)(ys)
    stats = Stats(nfe=counting.calls, nfe_diffusion=counting.diffusion_calls)
    counter = BackwardCounter(counting, counting.calls, is_adjoint)
    return MainSolve(ys=ys, stats=stats, backward_counter=counter)


def _check_torchsde_brownian(torchsde: Any, bm: Any, y0: Tensor) -> None:
    """torchsde reads a Brownian motion's ``shape``, ``dtype`` and ``device`` and casts nothing: one
    of another dtype would drive the solve with increments rounded to it (``local_reg.sdeint``
    checks every increment; this is the same check made once)."""
    if not isinstance(bm, torchsde.BaseBrownian):
        raise TypeError(
            "bm must be a torchsde Brownian motion (torchsde.BrownianInterval, BrownianPath or "
            f"BrownianTree) with backend='torchsde', got {type(bm).__name__}"
        )
    if bm.dtype != y0.dtype:
        raise TypeError(f"bm has dtype {bm.dtype}, expected the dtype of y0 {y0.dtype}")
    # torchsde keeps the device as given ("cpu", "cuda"): compared as torch resolves it.
    if torch.empty(0, device=bm.device).device != y0.device:
        raise ValueError(f"bm is on {bm.device}, expected y0's device {y0.device}")
