"""Tuple and complex states: what ``odeint`` solves as one real state.

Continuous normalizing flows carry ``(z, logp)``, augmented models several tensors of different
shapes. ``odeint`` accepts a tuple ``y0`` (as torchdiffeq does): the tensors are flattened into one
state, the vector field sees and returns tuples, and the outputs come back as a tuple of tensors of
shape ``(len(t), *y0[i].shape)``. A complex ``y0`` (quantum and wave dynamics; torchdiffeq's
``odeint`` takes one) is solved as its real view ``torch.view_as_real(y0)``, shape
``(*y0.shape, 2)``: the field sees and returns complex tensors and the outputs are complex. Because
the solver, the error norm (one RMS over every real element) and every gradient method see one
real tensor, nothing else in the library needs to know.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from ._checks import refuse_sde
from ._validate import (
    cast_back_from_autocast,
    check_field_callable,
    check_finite_state,
    check_output,
    check_strided,
    per_element_tolerance,
    real_number,
    tolerance,
)


class TupleState:
    """The layout of a tuple of tensors in one flat state."""

    def __init__(self, y0: tuple) -> None:
        if not y0:
            raise ValueError("y0 is an empty tuple: it must hold at least one tensor")
        if all(isinstance(part, numbers.Real) for part in y0):
            # Numbers where a state goes: often scipy's solve_ivp(fun, t_span, y0) order.
            raise TypeError(
                f"y0 must be a tensor or a tuple of tensors, got a {type(y0).__name__} of numbers: "
                "pass torch.tensor(...); the order is odeint(func, y0, t), where scipy's solve_ivp "
                "takes (fun, t_span, y0)"
            )
        for index, part in enumerate(y0):
            if not isinstance(part, Tensor):
                raise TypeError(f"y0[{index}] must be a torch.Tensor, got {type(part).__name__}")
            check_strided(f"y0[{index}]", part)
        first = y0[0]
        if first.is_complex():
            raise TypeError(
                "a tuple y0 of complex tensors is not supported: solve a complex tensor y0, or a tuple "
                "of their real views torch.view_as_real(...)"
            )
        for index, part in enumerate(y0):
            if part.dtype != first.dtype or part.device != first.device:
                raise TypeError(
                    f"the tensors of a tuple y0 must share one dtype and device: y0[0] is {first.dtype} on "
                    f"{first.device}, y0[{index}] is {part.dtype} on {part.device}"
                )
        self.dtype = first.dtype
        self.device = first.device
        if first.is_floating_point():  # another dtype is refused by name with the flat state
            # Named by its own tensor and index: the flat state's index is one the caller never sees.
            for index, part in enumerate(y0):
                check_finite_state(f"y0[{index}]", part)
        self.shapes = [part.shape for part in y0]
        self.sizes = [math.prod(shape) for shape in self.shapes]

    @property
    def description(self) -> str:
        return "tuple state of shapes " + ", ".join(str(tuple(shape)) for shape in self.shapes)

    def flatten(self, parts: object, what: str = "y0") -> Tensor:
        """One flat tensor of ``parts``, each checked against ``y0``'s: ``torch.cat`` would silently
        promote a part of another dtype (or cast an integer one) to the state's."""
        if not isinstance(parts, tuple) or len(parts) != len(self.shapes):
            raise TypeError(f"{what} must be a tuple of {len(self.shapes)} tensors, like y0")
        for index, (part, shape) in enumerate(zip(parts, self.shapes, strict=True)):
            if not isinstance(part, Tensor):
                raise TypeError(f"{what}[{index}] must be a torch.Tensor, got {type(part).__name__}")
            if part.is_nested:  # before its shape, which a nested tensor does not have
                raise TypeError(f"{what}[{index}] is a nested tensor: give one padded tensor")
            if part.dtype != self.dtype:
                raise TypeError(
                    f"{what}[{index}] has dtype {part.dtype}, expected the dtype of y0 {self.dtype}"
                )
            if part.shape != shape:
                expected = tuple(shape)
                raise ValueError(
                    f"{what}[{index}] must have the shape of y0[{index}] {expected}, got {tuple(part.shape)}"
                )
            if part.device != self.device:
                raise ValueError(f"{what}[{index}] is on {part.device}, expected y0's device {self.device}")
            if part.layout != torch.strided:
                raise TypeError(f"{what}[{index}] is a {part.layout} tensor: give a dense one (.to_dense())")
        return torch.cat([part.reshape(-1) for part in parts])

    def tolerance(self, name: str, value: object) -> object:
        """``rtol`` or ``atol`` for the flat state: torchdiffeq reads any sequence, a 1-D tensor
        too, as one tolerance per tensor of ``y0``; a number as it is."""
        if isinstance(value, (tuple, list)) or (isinstance(value, Tensor) and value.dim() == 1):
            return self.flatten_tolerance(name, list(value))
        if isinstance(value, Tensor) and value.dim() > 1:
            # It would be broadcast to the flat state, a shape the caller never sees.
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} for a tuple y0: give one tolerance per tensor "
                "of y0 (a list or tuple of numbers or tensors, each broadcasting to its tensor), or "
                "one number"
            )
        return value

    def flatten_tolerance(self, name: str, tolerances: Sequence[object]) -> Tensor:
        """Per-component tolerances (one number, or a tensor broadcasting to its component's shape,
        per tensor of ``y0``; torchdiffeq's tuple ``rtol``/``atol``, a list or a 1-D tensor) as one
        per-element float64 tensor of the flat state (the solve casts it to the state's dtype after
        checking the values, as it does a tensor's)."""
        if len(tolerances) != len(self.shapes):
            raise ValueError(
                f"{name} as a sequence gives one tolerance per tensor of y0: it has {len(tolerances)} "
                f"entries, y0 has {len(self.shapes)} tensors"
            )
        pieces = []
        for index, (value, shape) in enumerate(zip(tolerances, self.shapes, strict=True)):
            if isinstance(value, Tensor) and value.dim() > 0:
                # Its dtype and values checked as a tensor state's (and returned a tensor), named
                # by its own index.
                value = cast(Tensor, tolerance(f"{name}[{index}]", value, relative=name == "rtol"))
            else:
                value = torch.tensor(real_number(f"{name}[{index}]", value, "a float"), dtype=torch.float64)
            what = f"y0[{index}]'s shape"
            pieces.append(
                per_element_tolerance(f"{name}[{index}]", value, shape, self.device, what=what).reshape(-1)
            )
        return torch.cat(pieces)

    def unflatten(self, flat: Tensor) -> tuple[Tensor, ...]:
        """The tuple of a flat state, or of a stack of them (leading dimensions kept)."""
        lead = flat.shape[:-1]
        # One slice per tensor, not torch.split: a view of a multi-output op cannot be changed in
        # place under autograd, and a caller may change an output in place (torchdiffeq's slice).
        ends = list(itertools.accumulate(self.sizes))
        return tuple(
            flat[..., end - size : end].reshape((*lead, *shape))
            for size, end, shape in zip(self.sizes, ends, self.shapes, strict=True)
        )


class StateField(nn.Module):
    """``func`` of a tuple or complex state as a field of the real state the solver steps. ``func``
    (or the module that owns a bound method) is a submodule, so the default ``adjoint_params`` are
    its parameters."""

    def __init__(self, func: Callable, state: Any) -> None:
        super().__init__()
        self.func = func
        # A module func is a submodule already; a bound method's module is registered here.
        self.owner = None if isinstance(func, nn.Module) else owning_module(func)
        self.state = state


class TupleField(StateField):
    """``func(t, tuple) -> tuple`` as a field of the flat state."""

    state: TupleState

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        output = self.func(t, self.state.unflatten(y))
        if not isinstance(output, Iterable) or (
            # A tensor splits along its first dimension (torchdiffeq's too): one stacked like y0's
            # tensors is taken, another would fail on its pieces' shapes with a puzzling message.
            isinstance(output, Tensor) and (output.dim() == 0 or len(output) != len(self.state.shapes))
        ):
            raise TypeError(
                f"func must return a tuple of {len(self.state.shapes)} tensors for a tuple y0, got "
                + (
                    f"a tensor of shape {tuple(output.shape)}"
                    if isinstance(output, Tensor)
                    else type(output).__name__
                )
            )
        # As for a tensor state (call_under_autocast, around this call, casts a flat output): a
        # piece in an autocast dtype goes back to the state's before the pieces are checked.
        output = tuple(cast_back_from_autocast(piece, y) for piece in output)
        return self.state.flatten(output, "func's output")


class ComplexState:
    """The layout of a complex tensor in its real view, ``(*shape, 2)``: real and imaginary parts
    are two components of the state, each scaled by its own ``atol + rtol * |part|`` in the error
    norm (torchdiffeq and diffrax scale a complex element by its modulus: a complex solve here takes
    somewhat more steps than theirs at the same tolerances, and is as accurate in each part)."""

    def __init__(self, y0: Tensor) -> None:
        check_strided("y0", y0)
        if y0.dtype not in (torch.complex64, torch.complex128):
            raise TypeError(
                f"y0 has dtype {y0.dtype}: a complex y0 must be complex64 or complex128 (solved as its "
                "float32 or float64 real view)"
            )
        # Named by y0's own indices, before the real view (whose indices have one more).
        check_finite_state("y0", y0)
        self.dtype = y0.dtype
        self.device = y0.device
        self.shape = y0.shape
        # What a value is checked against: y0's dtype, device and shape, without its memory.
        self.like = torch.empty((), dtype=y0.dtype, device=y0.device).expand(y0.shape)

    @property
    def description(self) -> str:
        return f"complex state of shape {tuple(self.shape)}"

    def flatten(self, value: object, what: str = "y0") -> Tensor:
        """The real view of ``value``, checked against ``y0``'s dtype, shape and device."""
        value = check_output(what, value, self.like, returned=what != "y0")
        # A lazily conjugated tensor (z.conj()) has no real view until its conjugate is resolved.
        return torch.view_as_real(value.resolve_conj())

    def tolerance(self, name: str, value: object) -> object:
        """A tensor tolerance of ``y0``'s shape (or broadcasting to it) for both parts of each
        element; a number as it is. A tensor is checked here, against ``y0``'s shape and indices:
        the real view's are ones the caller never sees."""
        if isinstance(value, Tensor) and value.dim() > 0:
            # A tensor of more than 0 dimensions is checked and stays one.
            checked = cast(Tensor, tolerance(name, value, relative=name == "rtol"))
            broadcast = per_element_tolerance(name, checked, self.shape, self.device, what="y0's shape")
            return broadcast.unsqueeze(-1)
        return value

    def unflatten(self, real: Tensor) -> Tensor:
        """The complex tensor of a real view, or of a stack of them (leading dimensions kept): a
        view of ``real`` where its strides allow one, so that a change in place is seen as one."""
        try:
            return torch.view_as_complex(real)
        except RuntimeError:  # a view whose strides or offset pair no real and imaginary parts
            return torch.complex(real[..., 0], real[..., 1])


class ComplexField(StateField):
    """``func(t, z) -> complex`` as a field of the real view."""

    state: ComplexState

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        # An output in an autocast dtype (complex32 for float16) goes back to the state's, as a real
        # state's does (the real view around this call is the state's dtype already).
        output = cast_back_from_autocast(self.func(t, self.state.unflatten(y)), self.state.like)
        return self.state.flatten(output, "func")


def layout_of(y0: object) -> TupleState | ComplexState | None:
    """How ``y0`` is solved as one real state: a tuple's or a complex tensor's layout, or ``None``
    for a real tensor (the solver's own state)."""
    if isinstance(y0, tuple):
        return TupleState(y0)
    if isinstance(y0, Tensor) and y0.is_complex():
        return ComplexState(y0)
    return None


def user_func(func: object) -> object:
    """The function the user gave: ``func`` itself, or what a :class:`StateField` wraps. Whether
    parameters can be found is a question about it (the wrapper is a module whatever it wraps)."""
    return func.func if isinstance(func, StateField) else func


def owning_module(func: object) -> nn.Module | None:
    """The module whose parameters ``func`` uses: ``func`` itself, or the module of a bound method
    (what a tuple state's wrapper wraps); ``None`` for a plain function."""
    func = user_func(func)
    owner = func if isinstance(func, nn.Module) else getattr(func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


SolveFunction = TypeVar("SolveFunction", bound=Callable[..., Any])


def accepts_structured_states(solve: SolveFunction) -> SolveFunction:
    """Let ``solve(func, y0, t, **options)`` take a tuple or a complex ``y0``; its solution's ``ys``
    and ``evaluate(t)`` are then tuples, or complex (the step record keeps the real states). The
    wrapper keeps ``solve``'s signature for type checkers (``solve`` itself declares ``y0``)."""

    @functools.wraps(solve)
    def wrapper(func, y0, t, **options):
        refuse_sde(func)  # before a tuple state's wrapper hides what func is
        state = layout_of(y0)
        if state is None:
            return solve(func, y0, t, **options)
        check_field_callable(func)
        for name in ("rtol", "atol"):
            if name in options:
                options[name] = state.tolerance(name, options[name])
        field = TupleField(func, state) if isinstance(state, TupleState) else ComplexField(func, state)
        solution = solve(field, state.flatten(y0), t, **options)
        return replace(solution, ys=state.unflatten(solution.ys), layout=state.unflatten)

    return cast(SolveFunction, wrapper)
