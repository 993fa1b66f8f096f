"""Shared plumbing of the gradient methods that solve forward without a graph.

"checkpoint", "symplectic", "adjoint" and "interpolating_adjoint" all run the forward solve under
``torch.no_grad()`` inside one :class:`torch.autograd.Function` and differ only in how their
``backward`` turns the cotangents of the outputs into gradients for ``y0`` and the parameters. This
module holds that Function, the description of the forward solve a backward pass gets
(:class:`ForwardSolve`), the interface of a method (:class:`GradientMethod`) and the reverse sweep
over accepted steps that "checkpoint" and "symplectic" share (:class:`StepwiseGradient`; the states
it restarts from are kept by :class:`~._checkpoints.StepStates`).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import inspect
import numbers
import threading
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrizations, parametrize
from torch.nn.utils.spectral_norm import SpectralNorm

from .._autograd import untraced_hook
from .._checks import type_name
from .._dense import DenseOutput
from .._errors import warn
from .._integrate import SolveOptions, StepPenalty, integrate_ode
from .._step import VectorField
from .._validate import (
    batched_cotangent,
    gradient_hooks_held_back,
    host_list,
    refuse_captured_tangents,
    time_direction,
    unknown_keywords_error,
    without_autocast,
)
from ..solution import Stats, Steps
from ..tableaus import ButcherTableau
from ._checkpoints import StepStates
from ._finite import all_finite, in_float16_autocast, note_non_finite_cotangents, raise_non_finite_gradient

COMPAT_ADJOINTS = {"odeint": "adjoint", "sdeint": "checkpoint"}
"""The gradient method ``local_reg.compat``'s ``odeint_adjoint`` and ``sdeint_adjoint`` run."""


def direct(name: str = "func") -> str:
    """The method that differentiates what the graph-free ones cannot, as either API spells it for
    an ODE's ``func`` or an SDE (``name="sde"``)."""
    solver = "sdeint" if name == "sde" else "odeint"
    return f"gradient='direct' (in local_reg.compat: {solver}, not {solver}_adjoint)"


@dataclass
class ForwardSolve:
    """One forward solve as its backward pass sees it.

    Attributes:
        func: the vector field.
        times: output times.
        options: the forward solver's options.
        params: the tensors gradients are returned for besides ``y0`` (``adjoint_params``), each
            requiring grad, no duplicates.
        f0: ``func(times[0], y0)``, already evaluated (without a graph); dropped with the records.
        record_states: the user asked for ``steps.states``.
        step_penalty: the per-accepted-step penalty, or ``None``.
        stats, steps: filled in by the forward pass (``stats`` replaced by its own);
            ``stats.nfe_backward`` by the backward pass.
        step_states: the states at the start of accepted steps (all, or within the method's
            ``checkpoints`` budget) for the backward pass, when the method restarts from them.
        owner: the module ``func`` belongs to, if any, whose parameters the backward pass
            re-evaluates ``func`` with (see :meth:`check_owner_unchanged`).
        dense_output: the forward solve's dense record, for a backward pass that reads the
            forward solution between the steps (the interpolating adjoint).
    """

    func: VectorField
    times: list[float]
    options: SolveOptions
    params: tuple[Tensor, ...]
    f0: Tensor | None
    record_states: bool
    step_penalty: StepPenalty | None
    stats: Stats = field(default_factory=Stats)
    steps: Steps | None = None
    step_states: StepStates | None = None
    owner: torch.nn.Module | None = None
    dense_output: DenseOutput | None = None
    buffers_at_start: BufferMarks | None = None
    """``owner``'s :func:`buffer_marks` before the solve's first evaluation (by default when made)."""
    thread: object = field(default_factory=lambda: thread_token())
    """The thread the forward solve ran in (:func:`thread_token`), where what ``func`` captured
    was presumably made."""
    float16_autocast: bool = field(default_factory=in_float16_autocast)
    """Whether ``func`` runs under float16 autocast (by default, whether it is active where this is
    made): then a non-finite gradient is handed on, not raised (:func:`in_float16_autocast`)."""

    def __post_init__(self) -> None:
        self.owner_at_solve: ModuleAtSolve | None = None
        """What ``func``'s module held when the forward solve ended (:meth:`record_owner`)."""
        if self.buffers_at_start is None:
            self.buffers_at_start = buffer_marks(self.owner)
        self.frozen_at_solve = frozen_parameter_ids(self.owner)

    def record_owner(self) -> None:
        """Note what ``func``'s module holds at the end of the forward solve (inside a
        ``functional_call`` that swapped tensors in; the buffers the solve changed apart)."""
        self.owner_at_solve = ModuleAtSolve.of(self.owner, self.buffers_at_start)

    def check_owner_unchanged(self) -> None:
        """Raise if ``func``'s module holds other parameters or has a layer in another mode than at
        the solve's end (:meth:`ModuleAtSolve.check`; its buffers are put back for the backward
        pass instead, :func:`buffers_as_at_solve`)."""
        if self.owner_at_solve is not None:
            self.owner_at_solve.check(self.owner, buffers=False)

    def is_differentiated(self, y0: Tensor) -> bool:
        """Whether autograd records a solve from ``y0`` (:func:`records_graph`)."""
        return records_graph(y0, self.params)

    def release_records(self) -> None:
        """Drop what only a backward pass reads (``step_states``, ``dense_output``), and ``f0``,
        once the last one has run."""
        self.step_states = None
        self.dense_output = None
        self.f0 = None
        self.owner_at_solve = None  # its buffers, which a module may have replaced since

    def replay_records(self) -> tuple[Steps, StepStates]:
        """The forward solve's ``steps`` and ``step_states``, from which a backward pass replays its
        steps (a ``RuntimeError`` if it kept none)."""
        if self.steps is None or self.step_states is None:
            raise RuntimeError("the forward solve kept no step states to replay")
        return self.steps, self.step_states

    @property
    def solved_times(self) -> list[float]:
        """The times of the outputs once the forward has run: ``times``, with the last replaced
        by ``steps.stop_time`` when a stop condition ended the solve there."""
        if self.steps is None or self.steps.stop_time is None:
            return self.times
        return [*self.times[:-1], self.steps.stop_time]


def records_graph(y0: Tensor, params: Iterable[Tensor]) -> bool:
    """Whether autograd records a graph-free solve from ``y0`` with ``params`` (those it returns
    gradients for): gradients are enabled and ``y0`` or a parameter requires grad. Under
    ``no_grad`` (inference) there is no backward pass to keep records for."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in (y0, *params))


def first_evaluations(
    graph_free: str | None,
    evaluate: Callable[[], tuple[Tensor, ...]],
    state: Tensor,
    params: Iterable[Tensor],
    name: str = "func",
) -> tuple[Tensor, ...]:
    """``evaluate()``, a solve's first evaluations of ``name`` at ``state``: as they come for a
    method that differentiates the recorded steps (``graph_free`` ``None``); for the graph-free
    method named ``graph_free``, without a graph, refusing tensors ``name`` uses of its own that
    require grad (:func:`evaluate_refusing_captures`, where the solve records nothing) or carry a
    forward-mode tangent, which the method would drop."""
    if graph_free is None:
        return evaluate()
    # Gradients enabled but nothing recorded: the backward pass's check (CapturedTensorCheck) never
    # runs, so a tensor the field uses that requires grad would get no gradient, silently. The
    # first evaluation is made with a graph and checked instead; where the solve records, that
    # check does it.
    if torch.is_grad_enabled() and not records_graph(state, params):
        return evaluate_refusing_captures(graph_free, evaluate, [state], name)
    with torch.no_grad():
        outputs = evaluate()
    refuse_captured_tangents(graph_free, outputs, name)
    return outputs


def evaluate_refusing_captures(
    method: str,
    evaluate: Callable[[], tuple[Tensor, ...]],
    arguments: Sequence[Tensor],
    name: str = "func",
) -> tuple[Tensor, ...]:
    """``evaluate()``, the first evaluation of ``name`` (its outputs detached), made with a graph
    where neither its state nor any of the method's parameters requires grad
    (:func:`first_evaluations`); raise :func:`captured_tensors_error` if the outputs depend on tensors
    that require grad but are neither ``arguments`` nor made by the call itself.

    A field that differentiates itself (a Hamiltonian network's ``y.detach().requires_grad_()``
    or ``y.clone().requires_grad_()``, then ``autograd.grad(H, x, create_graph=True)``) makes leaves
    of its own, which die with the evaluation's graph; a tensor it captured lives on, held by the
    field. So the graph's leaves are kept by weak references only, the graph is dropped, and the
    leaves still alive are the captured ones (a leaf ``name`` keeps for itself would be named too)."""
    outputs = evaluate()
    refuse_captured_tangents(method, outputs, name)  # detached, they would carry none
    leaves = _leaves_of(outputs, {id(argument) for argument in arguments})
    detached = tuple(output.detach() for output in outputs)
    del outputs  # the graph, and the leaves only it held
    if not leaves:
        return detached
    captured = [leaf for leaf in (reference() for reference in leaves) if leaf is not None]
    if captured:
        gc.collect()  # a graph in a reference cycle is freed by the collector only
        captured = [leaf for leaf in (reference() for reference in leaves) if leaf is not None]
    if captured:
        raise captured_tensors_error(method, name, captured)
    return detached


def _leaves_of(outputs: Sequence[Tensor], skipped: set[int]) -> list[weakref.ref[Tensor]]:
    """Weak references to the leaves that require grad in ``outputs``' graph (the outputs
    themselves included), but for those whose ``id`` is in ``skipped``."""
    found: dict[int, weakref.ref[Tensor]] = {}
    for output in outputs:
        if output.requires_grad and output.is_leaf and id(output) not in skipped:
            found.setdefault(id(output), weakref.ref(output))
    for node in graph_nodes([output.grad_fn for output in outputs if output.grad_fn is not None]):
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
        if variable is not None and id(variable) not in skipped:
            found.setdefault(id(variable), weakref.ref(variable))
    return list(found.values())


def captured_tensors_error(method: str, name: str, captured: Sequence[Tensor]) -> ValueError:
    """The error for tensors ``name`` uses that require grad but that the graph-free ``method``
    returns no gradient for."""
    shapes = [tuple(tensor.shape) for tensor in captured]
    # The method local_reg.compat's adjoint functions run, named as their users call them.
    solver = "sdeint" if name == "sde" else "odeint"
    compat = f" (what local_reg.compat.{solver}_adjoint runs)" if method == COMPAT_ADJOINTS[solver] else ""
    return ValueError(
        f"gradient={method!r}{compat}: {name} uses {len(captured)} tensor(s) that require grad "
        f"but are not in adjoint_params (shapes {shapes}): a graph-free gradient method returns "
        "gradients for y0 and adjoint_params only, so theirs would silently be none. Make them "
        f"parameters of {name}'s module or list them in adjoint_params, or detach them "
        f"({direct(name)} differentiates everything {name} uses)"
    )


def frozen_parameter_ids(owner: torch.nn.Module | None) -> frozenset[int]:
    """The identities of ``owner``'s parameters that do not require grad now (at a solve): one
    that does at the backward pass was unfrozen in between (:class:`CapturedTensorCheck`)."""
    return (
        frozenset() if owner is None else frozenset(id(p) for p in owner.parameters() if not p.requires_grad)
    )


def reevaluation_effect(module: torch.nn.Module) -> str | None:
    """The kind of layer ``module`` is whose output depends on its training mode and changes from
    one evaluation to the next in training mode ("dropout", "RReLU", "batch norm", "instance norm",
    "spectral norm"), or ``None``: a graph-free method that evaluates it again in its backward pass
    does not evaluate the forward solve's function. Dropout inside ``nn.MultiheadAttention`` and
    between the layers of a stacked ``nn.RNN``/``LSTM``/``GRU`` is drawn by torch's own code, not by
    a dropout submodule."""
    if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
        return "dropout"
    if isinstance(module, torch.nn.MultiheadAttention) and module.dropout > 0:
        return "dropout"
    if isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return "dropout"
    if isinstance(module, torch.nn.RReLU) and module.lower != module.upper:
        return "RReLU"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
        return "batch norm"
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        return "instance norm"
    power_iterations = isinstance(module, parametrizations._SpectralNorm) or any(
        isinstance(hook, SpectralNorm) for hook in module._forward_pre_hooks.values()
    )
    return "spectral norm" if power_iterations else None


BufferMark = tuple[weakref.ref[Tensor] | None, int | None]
"""A weak reference to a buffer and its version counter (:func:`buffer_marks`)."""
BufferMarks = dict[str, BufferMark]


def buffer_marks(owner: torch.nn.Module | None) -> BufferMarks:
    """A weak reference to each of ``owner``'s buffers and its version counter, by name: a buffer
    replaced changes the first, one changed in place the second (``None`` for an inference tensor,
    which keeps no counter). Weak, not ``id``: a buffer replaced after the one marked was freed may
    be placed at its address, and take its ``id``."""
    if owner is None:
        return {}
    return {name: (_reference(buffer), _version(buffer)) for name, buffer in _all_buffers(owner)}


def _marked(mark: BufferMark | None, buffer: Tensor | None) -> bool:
    """Whether ``buffer`` is the tensor ``mark`` (of :func:`buffer_marks`) was taken of, unchanged."""
    return mark is not None and _is_referenced(mark[0], buffer) and mark[1] == _version(buffer)


def _reference(tensor: Tensor | None) -> weakref.ref[Tensor] | None:
    return None if tensor is None else weakref.ref(tensor)


def _is_referenced(reference: weakref.ref[Tensor] | None, tensor: Tensor | None) -> bool:
    return tensor is None if reference is None else reference() is tensor


def _version(buffer: Tensor | None) -> int | None:
    try:
        return None if buffer is None else buffer._version
    except RuntimeError:  # an inference tensor
        return None


def _all_buffers(
    owner: torch.nn.Module, of: Callable[[torch.nn.Module], bool] = lambda module: True
) -> Iterator[tuple[str, Tensor | None]]:
    """Every buffer slot of ``owner`` (of its submodules for which ``of`` holds) by every name it
    has: tied ones under each (``named_buffers`` gives one), a ``None`` one too (which it skips)."""
    for prefix, module in owner.named_modules(remove_duplicate=False):
        if of(module):
            for key, buffer in module._buffers.items():
                yield (f"{prefix}.{key}" if prefix else key), buffer


@dataclass(frozen=True)
class ModuleAtSolve:
    """What a graph-free backward pass must find of ``func``'s module as the solve left it, since it
    evaluates ``func`` again with what the module holds then: its parameter tensors (by identity),
    its buffers (``torch.func.functional_call`` swaps both in for the forward call only) and the
    training modes of its layers whose output depends on them (:func:`reevaluation_effect`).

    The buffers the solve's own evaluations changed (``updated``: running statistics, a counter,
    an average; replaced or in place) are the module's state, which any later evaluation changes
    again: they are not compared (a graph-free method re-evaluates ``func`` with their last values,
    which :func:`warn_of_updated_buffers` says)."""

    parameters: tuple[weakref.ref[Tensor], ...] = ()
    """Weak references (a parameter replaced after the solve may take a freed one's ``id``)."""
    buffers: tuple[tuple[str, Tensor | None], ...] = ()
    modes: tuple[tuple[str, bool], ...] = ()
    updated: frozenset[str] = frozenset()

    @classmethod
    def of(cls, owner: torch.nn.Module | None, before: BufferMarks | None = None) -> ModuleAtSolve:
        """``owner`` now; ``before``: its :func:`buffer_marks` when the solve began, against which the
        buffers it changed (``updated``) are found."""
        if owner is None:
            return cls()
        slots = list(_all_buffers(owner))
        updated = (
            {name for name, buffer in slots if not _marked(before.get(name), buffer)}
            if before is not None
            else set()
        )
        # A training-mode norm updates its running statistics inside its kernel, whose version
        # counter that leaves as it was: updated all the same (and written, not read, there).
        updated |= {name for name, _ in _all_buffers(owner, _running_statistics_in_training)}
        return cls(
            tuple(weakref.ref(p) for p in owner.parameters()),
            tuple((name, buffer) for name, buffer in slots if name not in updated),
            _modes(owner),
            frozenset(updated),
        )

    def check(self, owner: torch.nn.Module | None, name: str = "func", buffers: bool = True) -> None:
        """Raise a ``RuntimeError`` if ``owner`` (``name``'s module) holds other parameter tensors,
        has a layer in another training mode, or holds buffers of other values (but those the solve
        updated) than at the solve: the backward pass would differentiate another function than the
        forward solve's, and the forward's tensors would silently get no gradient."""
        if owner is None:
            return
        rerun = (
            f"the graph-free gradient methods re-evaluate {name} with what its module holds in the "
            f"backward pass; use {direct(name)}, which differentiates the forward's own graph"
        )
        parameters = list(owner.parameters())
        if len(parameters) != len(self.parameters) or not all(
            map(_is_referenced, self.parameters, parameters)
        ):
            raise RuntimeError(
                f"{name}'s module holds other parameter tensors in the backward pass than in the forward "
                "solve (torch.func.functional_call, a parameter replaced, or a load_state_dict(assign=True) "
                f"in between): {rerun}"
            )
        modes = _modes(owner)
        switched = sorted({kind for kind, mode in modes if (kind, not mode) in self.modes})
        if modes != self.modes:
            layers = " and ".join(switched) or "a layer whose output depends on it"
            raise RuntimeError(
                f"{name}'s module was switched between train() and eval() after the solve, and its "
                f"{layers} computes another function in the other mode: {rerun}, or call backward "
                "in the mode the solve ran in"
            )
        now = {key: buffer for key, buffer in _all_buffers(owner) if key not in self.updated}
        then = dict(self.buffers)
        # Added or deleted since: nothing to put back (and checked even where the others are put back).
        differ = sorted(set(now) ^ set(then))
        if buffers:
            differ += sorted(key for key in set(now) & set(then) if not _same_buffer(now[key], then[key]))
        if differ:
            raise RuntimeError(
                f"{name}'s module holds other buffers in the backward pass than in the forward solve "
                f"({', '.join(map(repr, differ))}: torch.func.functional_call swapped in for the forward "
                f"call only, or added, deleted or replaced since): {rerun}"
            )


def warn_of_updated_buffers(
    at_solve: ModuleAtSolve | None, owner: torch.nn.Module | None, method: str, name: str = "func"
) -> None:
    """Warn where the solve's own evaluations changed buffers of ``name``'s module (an average of
    the inputs, a counter) that no layer's warning names (a training-mode batch norm's running
    statistics, spectral norm's vectors: :func:`warn_if_reevaluation_differs`): the graph-free
    ``method`` re-evaluates ``name`` with their last values, so where its output reads them the
    gradient is not the solve's."""
    if at_solve is None or owner is None or not at_solve.updated:
        return
    warned = {name for name, _ in _all_buffers(owner, _warned_of_in_training)}
    unnamed = sorted(at_solve.updated - warned)
    if unnamed:
        warn(
            f"{name}'s module changed its buffer(s) {', '.join(map(repr, unnamed))} during the solve: "
            f"gradient={method!r} evaluates {name} again in its backward pass with their last values, so "
            f"where {name}'s output reads them the gradient is not the solve's; use {direct(name)}, or keep "
            "them fixed during a solve"
        )


@contextlib.contextmanager
def buffers_as_at_solve(at_solve: ModuleAtSolve | None, owner: torch.nn.Module | None) -> Iterator[None]:
    """``owner`` holding, for a backward pass's re-evaluations, the buffers it held when the solve
    ended (those the solve did not change itself; after :meth:`ModuleAtSolve.check`, which refuses
    a buffer added or deleted since): one ``torch.func.functional_call`` swapped in for the forward
    call only, or one the model replaced since (a step counter of its own, which ``func`` may not
    read), is put back until the pass ends, so that it differentiates the solve's ``func``. The
    module is changed in place meanwhile: another thread using it sees those buffers."""
    swapped: list[tuple[torch.nn.Module, str, Tensor | None]] = []
    if at_solve is not None and owner is not None:
        for name, then in at_solve.buffers:
            prefix, _, key = name.rpartition(".")
            module = owner.get_submodule(prefix)  # there: check refused a buffer slot gone since
            now = module._buffers[key]
            if now is not then:
                module._buffers[key] = then
                swapped.append((module, key, now))
    try:
        yield
    finally:
        for module, key, now in reversed(swapped):
            module._buffers[key] = now


def _modes(owner: torch.nn.Module) -> tuple[tuple[str, bool], ...]:
    """``(kind, training)`` of each layer of ``owner`` whose output depends on its training mode."""
    return tuple(
        (kind, module.training)
        for module in owner.modules()
        if (kind := reevaluation_effect(module)) is not None
    )


def _warned_of_in_training(module: torch.nn.Module) -> bool:
    """Whether :func:`warn_if_reevaluation_differs` names ``module``'s layer."""
    return module.training and reevaluation_effect(module) is not None


def _running_statistics_in_training(module: torch.nn.Module) -> bool:
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)
    return isinstance(module, norms) and module.track_running_stats and module.training


def _same_buffer(now: Tensor | None, then: Tensor | None) -> bool:
    if now is then:
        return True
    if now is None or then is None:
        return False
    if (now.shape, now.dtype, now.device) != (then.shape, then.dtype, then.device):
        return False
    return bool(torch.equal(now, then))


def outside_graph_error(method: str, name: str = "func") -> ValueError:
    """The error for a backward pass that met a graph already freed: ``name`` depends on
    ``adjoint_params`` through a tensor computed outside it, whose graph each differentiation of
    ``name`` needs (kept by each, ``retain_graph``), unless another backward pass freed it."""
    return ValueError(
        f"gradient={method!r}: {name} depends on adjoint_params through a tensor computed outside "
        f"{name} (e.g. w = 2 * raw, captured by {name}, with raw in adjoint_params) whose graph was "
        "freed, by an earlier backward pass (keep it there with retain_graph=True), by a compiled "
        "function's backward, which keeps none (torch._functorch.config.donated_buffer = False), or, "
        "for a tensor made in another thread than this backward pass, by this pass's own use of it "
        "(autograd orders a pass by per-thread numbers: make it in the thread that trains): compute "
        f"it inside {name}, or list the captured tensor itself (w) in adjoint_params"
    )


@contextlib.contextmanager
def naming_a_freed_graph(method: str, name: str = "func") -> Iterator[None]:
    """Torch's "backward through the graph a second time", met by a backward pass's re-evaluation
    of ``name``, as :func:`outside_graph_error`."""
    try:
        yield
    except RuntimeError as error:
        if "backward through the graph a second time" not in str(error):
            raise
        raise outside_graph_error(method, name) from error


def finish_backward(
    stats: Stats,
    cotangents: Sequence[Tensor | None],
    asked: Sequence[Tensor | None],
    calls: int,
    t0: float,
    func: str = "func",
    *,
    float16_autocast: bool,
) -> None:
    """The end of a graph-free backward pass: a :class:`~local_reg.SolverError` where a gradient
    ``asked`` for is not finite though the ``cotangents`` were (unless ``func`` ran under float16
    autocast, :func:`in_float16_autocast`), and the pass's ``calls`` added to ``stats.nfe_backward``
    (accumulated: a graph kept with ``retain_graph=True`` may be differentiated more than once)."""
    note_non_finite_cotangents(cotangents)
    if not float16_autocast and all_finite(cotangents) and not all_finite(asked):
        raise_non_finite_gradient(t0, stats.n_steps, func)
    stats.nfe_backward = (stats.nfe_backward or 0) + calls


def release_unless_graph_kept(release: Callable[[], None]) -> None:
    """``release()`` a solve's records as autograd frees the saved tensors, in a backward pass without
    ``retain_graph=True`` (torch's private query): the graph, and the autograd context holding the
    records, lives on as long as the outputs do (a training loop's kept loss) and would hold every
    step's state."""
    if not torch._C._autograd._get_current_graph_task_keep_graph():
        release()


def refuse_parametrize_cache(owner: torch.nn.Module | None, method: str, name: str, during: str) -> None:
    """A ``ValueError`` for a graph-free method's ``during`` (``"solve"``, ``"backward"``) inside
    ``torch.nn.utils.parametrize.cached()`` where ``name``'s module has a parametrization (or where
    there is no module to look into): the forward solve, without a graph, fills the cache with weights
    that have none, which the backward pass's evaluations then read, so the parametrization's
    parameters would get no gradient, silently; a backward pass inside the block reads weights cached
    with a graph that its first step frees."""
    if not parametrize._cache_enabled:
        return
    if owner is not None and not any(parametrize.is_parametrized(module) for module in owner.modules()):
        return
    if during == "solve":
        why = (
            f"its forward solve runs without a graph, so the cache would hold {name}'s parametrized "
            "weights without one and the parametrization's parameters would get no gradient (a plain "
            "function, which cannot be looked into, is taken to have some); solve outside cached() "
            "(or under torch.no_grad()), or use gradient='direct'"
        )
    else:
        why = (
            f"its backward pass evaluates {name} again, step by step, and would read weights cached with "
            "one graph that its first step frees: run the backward pass outside cached()"
        )
    what = "solve" if during == "solve" else "backward pass"
    raise ValueError(f"gradient={method!r}: a {what} inside torch.nn.utils.parametrize.cached(): {why}")


def graph_nodes(roots: Iterable[Any], stops: frozenset | set = frozenset()) -> Iterator[Any]:
    """Every autograd node reachable from ``roots``, once each, not walking past ``stops`` (not
    yielded) or past a leaf's ``AccumulateGrad`` node (yielded; its ``variable`` is the leaf)."""
    pending, seen = list(roots), set()
    while pending:
        node = pending.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        yield node
        pending.extend(next_node for next_node, _ in node.next_functions)


def _node_number() -> int:
    """The number this thread's autograd gives the next node it makes, less one (a marker's)."""
    return (torch.zeros((), requires_grad=True) * 1.0).grad_fn._sequence_nr()  # type: ignore[union-attr]


class CapturedTensorCheck:
    """``func`` for a backward pass, whose first evaluation with a graph is checked for tensors that
    require grad but are neither its arguments nor ``params`` (a module's plain tensor attribute, a
    context an encoder computed, a tensor a closure captured): a graph-free method returns gradients
    for ``y0`` and ``params`` only, so theirs would silently be none, where ``"direct"`` gives them
    one. Only ``func``'s own part of the graph is walked: it stops at its arguments' nodes (the
    method's own graph of the step) and at ``params``.

    The walk also finds whether ``func`` reaches ``params`` through a graph made before it was
    called (``w = raw / scale`` captured, ``raw`` listed): then every differentiation of ``func``
    must keep that graph for the next (:attr:`keeps_outside_graph`, ``retain_graph``), which is
    otherwise not asked for (a compiled ``func``'s backward with donated buffers refuses it).
    Autograd numbers the nodes each thread makes in order, so the nodes ``func``'s call made are
    numbered between two markers made just before and just after it, and any other node is from
    before (also one another thread made, a captured tensor built in the main thread and solved in
    a worker: numbered by that thread's counter, it falls outside the window but for a chance
    overlap, which frees the graph and fails loudly at the next differentiation, never silently);
    a backward pass in another thread than the forward's (autograd's device threads on a GPU) keeps
    the graph whatever the walk finds (:attr:`unsure`: :func:`differentiate` drops it where a
    compiled ``func`` refuses to keep it)."""

    def __init__(
        self,
        func: VectorField,
        params: tuple[Tensor, ...],
        method: str,
        forward_thread: object = None,
        name: str = "func",
        frozen_at_solve: frozenset[int] = frozenset(),
    ) -> None:
        """``name``: what the message calls ``func``; ``frozen_at_solve``: the identities of its
        module's parameters that did not require grad when the solve ran
        (:func:`frozen_parameter_ids`), which the message names as unfrozen since."""
        self.func = func
        self.frozen_at_solve = frozen_at_solve
        self.method = method
        self.name = name
        self.param_ids = {id(p) for p in params}
        self.param_nodes = {p.grad_fn for p in params if p.grad_fn is not None}
        self.forward_thread = thread_token() if forward_thread is None else forward_thread
        self.checked = False
        self.reaches_params: bool | None = None
        """Whether the checked evaluation reached any of ``params`` (``None`` before it ran)."""
        self.keeps_outside_graph = False
        self.unsure = False

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        # Marked for a model inside func that cannot draw again what it drew in the forward solve
        # (:func:`reevaluating_for`): it names this method rather than torch's checkpointing.
        # Inline rather than by reevaluating(): a generator's context manager costs about 1 us
        # per evaluation, a few percent of a small field's.
        outer = reevaluating_for()
        _THREAD.reevaluating_for = self.method
        try:
            return self._evaluate(t, y)
        finally:
            _THREAD.reevaluating_for = outer

    def _evaluate(self, t: Tensor, y: Tensor) -> Tensor:
        if self.checked or not torch.is_grad_enabled():
            return self.func(t, y)
        if thread_token() is not self.forward_thread:
            self.keeps_outside_graph = self.unsure = True
        before = _node_number()
        derivative = self.func(t, y)
        # A leaf returned as is (``lambda t, y: q``) has no graph to walk but is captured all the same.
        if isinstance(derivative, Tensor) and derivative.requires_grad:
            self.checked = True
            self._check(derivative, t, y, range(before, _node_number()))
        return derivative

    def _check(self, derivative: Tensor, t: Tensor, y: Tensor, made_by_the_call: range) -> None:
        arguments = [a for a in (t, y) if isinstance(a, Tensor)]
        allowed = self.param_ids | {id(a) for a in arguments}
        stops = self.param_nodes | {a.grad_fn for a in arguments if a.grad_fn is not None}
        captured: dict[int, Tensor] = {}
        if derivative.grad_fn is None and id(derivative) not in allowed:
            captured[id(derivative)] = derivative
        reaches_params = id(derivative) in self.param_ids or derivative.grad_fn in self.param_nodes
        for node in graph_nodes([derivative.grad_fn] if derivative.grad_fn is not None else [], stops):
            variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
            if variable is not None and id(variable) not in allowed:
                captured.setdefault(id(variable), variable)
            elif variable is None and node._sequence_nr() not in made_by_the_call:
                self.keeps_outside_graph = True
            reaches_params = reaches_params or id(variable) in self.param_ids
            reaches_params = reaches_params or any(n in self.param_nodes for n, _ in node.next_functions)
        self.reaches_params = reaches_params
        if captured and set(captured) <= self.frozen_at_solve:
            raise ValueError(
                f"gradient={self.method!r}: {len(captured)} parameter(s) of {self.name}'s module require "
                "grad now but did not when the solve ran (unfrozen between the forward and the backward "
                "pass?): the solve differentiates what required grad then; solve again after unfreezing"
            )
        if captured:
            raise captured_tensors_error(self.method, self.name, list(captured.values()))


def warn_if_params_unreached(
    checks: Sequence[CapturedTensorCheck],
    grads: Sequence[Tensor | None],
    method: str,
    name: str = "func",
) -> None:
    """Warn where ``params`` are given but none of ``checks`` (``func``'s, or an SDE's drift's and
    diffusion's, once their backward pass ran) reached any of them and the backward pass gave them
    no gradient (``grads``: ``None`` or zero; a field that uses them over part of the span only
    reaches none at the end, where the check looks, and gets its gradient). Where
    the solve ran with weights swapped in (``torch.func.functional_call``), a function closing over
    the module (with no module of its own whose tensors :class:`ModuleAtSolve` checks) is
    evaluated again with the module's own, which the listed tensors are not, and ``y0``'s gradient
    is another field's. A warning, not an error: one evaluation's graph is all it reads."""
    checked = [check for check in checks if check.reaches_params is not None]
    if not checked or not checked[0].param_ids or any(check.reaches_params for check in checked):
        return
    if any(grad is not None and bool(grad.any()) for grad in grads):
        return
    warn(
        f"gradient={method!r}: {name} uses none of the {len(checked[0].param_ids)} tensor(s) in "
        "adjoint_params in the backward pass, so they get no gradient. If the solve ran with weights "
        f"swapped in (torch.func.functional_call), the backward pass re-evaluates {name} with its "
        f"module's own and y0's gradient is not the solve's either: use {direct(name)}; if {name} "
        "does not use them, leave them out of adjoint_params"
    )


class BackwardStep(NamedTuple):
    """One accepted step as a stepwise backward pass sees it."""

    t: float
    """The step's start time."""
    dt: float
    """Its signed size."""
    y: Tensor
    """The state at its start (re-computed when a checkpoint budget dropped it)."""
    adjoint: Tensor
    """``lambda_{n+1}``, the cotangent of the state at its end."""
    grad_penalty: Tensor | None
    """The cotangent of its step penalty, or ``None``."""
    inside: OutputsInside | None
    """The outputs read from its dense output, or ``None`` where none carries a cotangent."""


class OutputsInside(NamedTuple):
    """Outputs read from one step's dense output, as its backward step gets them."""

    thetas: list[float]
    """Where each lies in the step: ``(t_i - t_n) / dt_n``."""
    cotangents: Tensor
    """Their cotangents ``dL/dy(t_n + theta dt_n)``, stacked: a view of the backward pass's own
    (one slice; a stacked copy would hold one more state per output while the step runs)."""


_KEYWORDS_TAKEN: weakref.WeakKeyDictionary[type, list[str] | None] = weakref.WeakKeyDictionary()


def _keywords_taken(cls: type) -> list[str] | None:
    """The keywords a gradient method's constructor takes (``None``: any, a ``**kwargs``), read
    once per class: a signature costs tens of microseconds, and compat builds a method per call."""
    if cls not in _KEYWORDS_TAKEN:
        parameters = cls.__signature__.parameters.values()  # type: ignore[attr-defined]
        _KEYWORDS_TAKEN[cls] = (
            None
            if any(p.kind is p.VAR_KEYWORD for p in parameters)
            else [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        )
    return _KEYWORDS_TAKEN[cls]


def _foreign_settings(keywords: list[str]) -> dict[str, str]:
    """What a gradient method taking ``keywords`` says of other libraries' settings of theirs."""
    checkpointed = (
        "checkpoints= here, the most step states kept"
        if "checkpoints" in keywords
        else "InterpolatingAdjoint(checkpoints=), Checkpoint(checkpoints=) or Symplectic(checkpoints=) here"
    )
    return {
        "checkpointing": f"SciMLSensitivity's checkpointing: {checkpointed}",
        **{
            name: f"SciMLSensitivity's {name}: {ours}= here"
            if ours in keywords
            else f"the solve's tolerance: odeint's {ours}="
            for name, ours in (("abstol", "atol"), ("reltol", "rtol"))
        },
        "autojacvec": "SciMLSensitivity's vector-Jacobian product: torch's autograd computes it here",
    }


class _Settled(ABCMeta):
    """Marks each instance settled once its whole construction has returned (mixins and a
    dataclass's ``__init__`` included): :meth:`GradientMethod.__setattr__` refuses changes from then
    on. ``__signature__`` keeps the constructor's signature for ``inspect``, ``help`` and
    docs/api.md, which would otherwise read this ``__call__``'s."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            # Python's own message names the base class whose __init__ took the keywords, and a
            # port's settings (SciMLSensitivity's, torchdiffeq's) are spelt otherwise here.
            keywords = _keywords_taken(cls)
            unknown = set() if keywords is None else set(kwargs).difference(keywords)
            if keywords is not None and unknown:
                raise unknown_keywords_error(cls.__name__, unknown, keywords, _foreign_settings(keywords))
        instance = super().__call__(*args, **kwargs)
        object.__setattr__(instance, "_settled", True)
        return instance

    @property
    def __signature__(cls) -> inspect.Signature:
        for kind in cls.__mro__:  # a signature a class states itself, as inspect takes it
            stated = vars(kind).get("__signature__")
            if isinstance(stated, inspect.Signature):
                return stated
        init: Any = cls.__init__  # type: ignore[misc]  # the class's own, as inspect reads it
        constructor = init if init is not object.__init__ else cls.__new__
        if constructor is object.__new__:  # a method without settings
            return inspect.Signature()
        signature = inspect.signature(constructor)
        return signature.replace(parameters=list(signature.parameters.values())[1:])


class GradientMethod(metaclass=_Settled):
    """How a solve's outputs are differentiated (``odeint(gradient=...)``).

    An object that checks its own settings once, when it is made, and is immutable afterwards (as
    :class:`~local_reg.PIController`): its settings are not checked again, and it compares and
    hashes by them. A subclass sets its settings in its ``__init__``; what a solve needs to keep
    belongs to the :class:`ForwardSolve` (one object may serve many solves at once). The strings
    ``"direct"``, ``"checkpoint"``, ``"symplectic"``, ``"adjoint"`` and ``"interpolating_adjoint"``
    are shorthands for the default objects.
    """

    name: ClassVar[str]
    supports_step_penalty: ClassVar[bool]
    """The backward pass has a graph of every step, so per-step penalties can be differentiated."""
    graph_free: ClassVar[bool] = True
    """The forward solve runs without a graph; gradients go to ``y0`` and ``adjoint_params``."""

    def check(
        self, options: SolveOptions, times: list[float] | None = None, y0: Tensor | None = None
    ) -> None:
        """Raise ``ValueError`` if this method cannot differentiate a solve with ``options``; given
        the solve's ``times`` and ``y0`` (``odeint`` gives them), also if it cannot over that span
        and state."""
        return None

    def controls_steps(self, step_size: float | None) -> bool:
        """Whether a step-size controller sets any step of a solve whose fixed step size is
        ``step_size`` (``None``: adaptive), forward or, for the backsolve adjoints, backward."""
        return step_size is None

    @abstractmethod
    def solve(self, y0: Tensor, solve: ForwardSolve) -> tuple[Tensor, Stats, Steps, Tensor | None]:
        """Solve ``solve`` from ``y0``; returns ``(ys, stats, steps, penalties)`` with ``ys``
        differentiable by this method."""

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse_change(name, "setting")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse_change(name, "deleting")
        object.__delattr__(self, name)

    def _refuse_change(self, name: str, change: str) -> None:
        if self.__dict__.get("_settled"):
            raise AttributeError(
                f"{type(self).__name__} is immutable (its settings were checked when it was made): "
                f"make a new one instead of {change} {name!r}"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled (or copied) settled, under the names of this version's settings.
        state = {self._RENAMED.get(key, key): value for key, value in state.items()}
        self.__dict__.update(state, _settled=True)

    _RENAMED: ClassVar[dict[str, str]] = {}
    """Settings an earlier version stored under another name (``{old: new}``), for its pickles."""

    def _settings(self) -> dict[str, Any]:
        """The constructor's keywords and their values."""
        return {key: value for key, value in vars(self).items() if key != "_settled"}

    def __repr__(self) -> str:
        # A tableau by its name: its repr is every coefficient.
        settings = ", ".join(
            f"{key}={value.name if isinstance(value, ButcherTableau) else value!r}"
            for key, value in self._settings().items()
            if value is not None
        )
        return f"{type(self).__name__}({settings})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._settings() == cast(GradientMethod, other)._settings()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted((k, repr(v)) for k, v in self._settings().items()))))


class GraphFreeGradient(GradientMethod):
    """A method that solves forward without a graph and differentiates in its own backward pass."""

    def new_step_states(self, record_states: bool) -> StepStates | None:
        """The record of step states the forward pass fills for this backward pass, or ``None`` if
        it restarts from none. ``record_states``: the user keeps every state anyway."""
        return None

    def solve(self, y0: Tensor, solve: ForwardSolve) -> tuple[Tensor, Stats, Steps, Tensor | None]:
        """Solve forward without a graph; ``ys`` (and the penalties) are differentiated by this
        method's :meth:`backward`. ``steps.states`` is present only with ``record_states=True`` (the
        method may keep states internally regardless)."""
        # The dense record (dense=True) keeps every state too: a budget would save no memory.
        solve.step_states = (
            self.new_step_states(solve.record_states or solve.options.dense)
            if solve.is_differentiated(y0)
            else None
        )
        ys, penalties = _SolveWithoutGraph.apply(self, solve, y0, *solve.params)
        if solve.is_differentiated(y0):
            warn_of_updated_buffers(solve.owner_at_solve, solve.owner, self.name)
        has_penalties = solve.step_penalty is not None and penalties.numel() > 0
        steps = cast(Steps, solve.steps)  # set by the forward pass just run
        return ys, solve.stats, steps, penalties if has_penalties else None

    @abstractmethod
    def backward(
        self, solve: ForwardSolve, ys: Tensor, grad_ys: Tensor, grad_penalties: Tensor | None
    ) -> tuple[Tensor, list[Tensor | None], int]:
        """Return ``(dL/dy0, [dL/dparam for solve.params], calls of func made)``.

        ``ys`` are the forward outputs (stacked over output times), ``grad_ys`` their cotangents
        and ``grad_penalties`` those of the per-step penalties (``None`` without ``step_penalty``).
        """


class CountingField:
    """Calls ``func`` and counts the calls, so that a backward pass can report its NFE."""

    def __init__(self, func: VectorField) -> None:
        self.func = func
        self.calls = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.func(t, y)


_THREAD = threading.local()


def thread_token() -> object:
    """An object of the calling thread's own, for as long as the thread lives (a thread's ident is
    reused by a later one)."""
    token = getattr(_THREAD, "token", None)
    if token is None:
        token = _THREAD.token = object()
    return token


def reevaluating_for() -> str | None:
    """The graph-free gradient method whose backward pass is evaluating a solve's function again in
    this thread now (:func:`reevaluating`), or ``None``."""
    return getattr(_THREAD, "reevaluating_for", None)


@contextlib.contextmanager
def reevaluating(method: str) -> Iterator[None]:
    """Marks this thread, for as long as it lasts, as evaluating a solve's function again for the
    backward pass of ``method`` (:func:`reevaluating_for`): through :class:`CapturedTensorCheck`, or
    a peer library's adjoint (:func:`in_peer_backward`)."""
    outer = reevaluating_for()
    _THREAD.reevaluating_for = method
    try:
        yield
    finally:
        _THREAD.reevaluating_for = outer


def in_peer_backward(method: str | None) -> contextlib.AbstractContextManager[None]:
    """:func:`reevaluating` ``method``, the adjoint of a peer library (torchdiffeq's, torchsde's)
    whose backward pass evaluates the field without a :class:`CapturedTensorCheck` of local_reg's;
    its wrapper of the field sets ``method`` once the forward solve has returned (``None`` before,
    and for a solve without an adjoint): nothing then."""
    return contextlib.nullcontext() if method is None else reevaluating(method)


def _captured_tensor_check(func: object) -> CapturedTensorCheck | None:
    """The :class:`CapturedTensorCheck` ``func`` is, or wraps (a backward pass's counting field)."""
    for _ in range(3):
        if isinstance(func, CapturedTensorCheck):
            return func
        func = getattr(func, "func", None)
    return None


def differentiate(
    func: VectorField, outputs: Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Sequence[Tensor]
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` of outputs of ``func``'s evaluations (unused inputs get ``None``),
    keeping the graph where a graph made outside ``func`` is in it (:class:`CapturedTensorCheck`).
    An output without a graph (a step penalty that is constant in the step, say) adds nothing."""
    differentiable = [
        (output, cotangent)
        for output, cotangent in zip(outputs, cotangents, strict=True)
        if output.requires_grad
    ]
    if not differentiable:
        return (None,) * len(inputs)
    outputs, cotangents = (
        [output for output, _ in differentiable],
        [cotangent for _, cotangent in differentiable],
    )
    check = _captured_tensor_check(func)
    retain = check is not None and check.keeps_outside_graph
    try:
        return torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True, retain_graph=retain)
    except RuntimeError as error:
        if check is None or not (retain and check.unsure) or "donated buffers" not in str(error):
            raise
        # A compiled func's backward with donated buffers refuses to keep its graph (nothing was
        # freed by the refusal), which was kept only for want of knowing: differentiate without.
        check.keeps_outside_graph = False
        return torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)


def vector_jacobian_product(
    func: VectorField, t: Tensor, y: Tensor, params: tuple[Tensor, ...], cotangent: Tensor
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """Evaluate ``f = func(t, y)`` with a fresh graph and return ``(f, v^T df/dy, [v^T df/dp])``.

    The graph lives only inside this call. A ``y`` that ``f`` does not depend on gets a zero
    gradient; parameters it does not depend on get ``None``.
    """
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        derivative = func(t, y)
        if not derivative.requires_grad:
            return derivative, torch.zeros_like(y), [None] * len(params)
        grads = differentiate(func, [derivative], [y, *params], [cotangent])
    grad_y = torch.zeros_like(y) if grads[0] is None else grads[0]
    return derivative.detach(), grad_y, list(grads[1:])


def steps_before_outputs(times: list[float], step_starts: list[float]) -> list[int]:
    """For every output time, the number of accepted steps that start strictly before it.

    When every output time is the end of an accepted step (and the next step starts exactly
    there), this is the number of steps that end at or before it; with dense output, an output
    time inside a step belongs to the last of these steps (:func:`locate_outputs`).
    """
    direction = time_direction(times)
    # Step starts are monotone in the direction of integration; search them as increasing keys.
    keys = [direction * t for t in step_starts]
    return [bisect.bisect_left(keys, direction * t) for t in times]


def locate_outputs(
    times: list[float], step_starts: list[float], step_sizes: list[float], t_end: float | None = None
) -> tuple[list[list[int]], list[list[tuple[int, float]]]]:
    """Where each output lies among the accepted steps, for a reverse sweep.

    Returns ``(at_boundary, inside)``: ``at_boundary[n]`` lists the outputs equal to the state
    before step ``n`` (``n = N``: after the last step), ``inside[n]`` the pairs
    ``(output, theta)`` of the outputs read from step ``n``'s dense output at the fraction
    ``theta = (t_i - t_n) / dt_n``, computed as the forward pass computed it. ``t_end`` is where
    the last step ends: by default the last output time (a solve stopped inside its last step
    passes the step's own end).
    """
    n_steps = len(step_starts)
    at_boundary: list[list[int]] = [[] for _ in range(n_steps + 1)]
    inside: list[list[tuple[int, float]]] = [[] for _ in range(n_steps)]
    if t_end is None:
        t_end = times[-1]
    for output, before in enumerate(steps_before_outputs(times, step_starts)):
        t_out = times[output]
        if before == 0:
            at_boundary[0].append(output)
            continue
        n = before - 1
        step_end = step_starts[n + 1] if n + 1 < n_steps else t_end
        if t_out == step_end:
            at_boundary[n + 1].append(output)
        else:
            inside[n].append((output, (t_out - step_starts[n]) / step_sizes[n]))
    return at_boundary, inside


def outputs_inside(
    located: list[tuple[int, float]], grad_ys: Tensor, nonzero: Sequence[bool]
) -> OutputsInside | None:
    """The outputs ``located`` inside one step (``(output, theta)`` of :func:`locate_outputs`, whose
    outputs are consecutive) with their cotangents, from the first to the last whose cotangent is
    ``nonzero``; ``None`` where none is. An output whose cotangent is exactly zero (a regularizer's
    detached ``u(t_reg)``) adds nothing: a step holding only such outputs keeps the cheaper backward
    step of a step without outputs, and one between others adds a zero row."""
    carrying = [index for index, (output, _) in enumerate(located) if nonzero[output]]
    if not carrying:
        return None
    span = located[carrying[0] : carrying[-1] + 1]
    first, last = span[0][0], span[-1][0]
    return OutputsInside([theta for _, theta in span], grad_ys[first : last + 1])


def still_trained(params: Sequence[Tensor]) -> tuple[list[int], tuple[Tensor, ...]]:
    """The indices of ``params`` that still require grad at a backward pass, and those tensors: one
    frozen since the solve (``requires_grad_(False)``, as plain torch allows) gets no gradient, so
    the backward pass differentiates the others only (torch refuses to differentiate a tensor that
    requires none)."""
    indices = [index for index, p in enumerate(params) if p.requires_grad]
    return indices, tuple(params[index] for index in indices)


def scattered(grads: Sequence[Tensor | None], indices: Sequence[int], size: int) -> list[Tensor | None]:
    """``grads`` of the parameters at ``indices`` (:func:`still_trained`) as a list of ``size``, the
    others ``None``."""
    full: list[Tensor | None] = [None] * size
    for index, grad in zip(indices, grads, strict=True):
        full[index] = grad
    return full


def add_gradients(
    totals: list[Tensor | None], increments: Iterable[Tensor | None], scale: float = 1.0
) -> None:
    """``totals[i] += scale * increments[i]`` in place, where an increment of ``None`` means zero."""
    for index, increment in enumerate(increments):
        if increment is None:
            continue
        total = totals[index]
        if total is None:
            totals[index] = increment * scale if scale != 1.0 else increment.clone()
        else:
            total.add_(increment, alpha=scale)


def checked_checkpoints(checkpoints: object) -> int | None:
    """A budget of kept step states: ``None`` (every state) or an int of at least 1."""
    if checkpoints is None:
        return None
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, numbers.Integral):
        raise TypeError(f"checkpoints must be an int or None, got {type_name(checkpoints)}")
    if checkpoints < 1:
        raise ValueError(f"checkpoints must be at least 1, got {checkpoints}")
    return int(checkpoints)  # numpy's integers too, as the other counts


class StepwiseGradient(GraphFreeGradient):
    """A backward pass that walks the accepted steps in reverse, one step at a time.

    Starting from ``lambda_N = dL/dy_N``, each step maps ``lambda_{n+1}`` to ``lambda_n`` (and adds
    its parameter gradient) by :meth:`step_backward`; at every output time ``t_i = t_n`` the
    output's cotangent ``dL/dy(t_i)`` is added to ``lambda_n``. An output read from a step's dense
    output is handed to that step's :meth:`step_backward` with its ``theta`` and cotangent.
    """

    def __init__(self, checkpoints: int | None = None) -> None:
        """``checkpoints``: keep at most this many step states in the forward pass and re-compute
        the others in the backward pass (see :mod:`._checkpoints`); ``None`` keeps every one. The
        gradient is the same either way."""
        self.checkpoints = checked_checkpoints(checkpoints)

    def new_step_states(self, record_states: bool) -> StepStates:
        # The user's record keeps every state anyway: a budget would only add re-computation.
        return StepStates(None if record_states else self.checkpoints)

    @abstractmethod
    def step_backward(
        self,
        func: CountingField,
        solve: ForwardSolve,
        current: BackwardStep,
        grad_params: list[Tensor | None],
    ) -> Tensor:
        """Map ``lambda_{n+1}`` (``current.adjoint``) to ``lambda_n`` across the step ``current``,
        adding its parameter gradient to ``grad_params`` in place."""

    def backward(
        self, solve: ForwardSolve, ys: Tensor, grad_ys: Tensor, grad_penalties: Tensor | None
    ) -> tuple[Tensor, list[Tensor | None], int]:
        steps, step_states = solve.replay_records()
        step_starts = steps.t.tolist()
        step_sizes = steps.dt.tolist()
        # A stopped solve heads for the end of time and so lands on no target: its last step ends at
        # t + dt exactly, as the forward computed it.
        t_end = None if steps.stop_time is None else step_starts[-1] + step_sizes[-1]
        at_boundary, inside = locate_outputs(solve.solved_times, step_starts, step_sizes, t_end)
        nonzero = host_list(grad_ys.reshape(len(grad_ys), -1).ne(0).any(1)) if any(inside) else []
        # A zero cotangent (a penalty the loss does not read) keeps the cheaper re-run: None.
        penalty_cotangents: list[Tensor | None] = [None] * len(step_starts)
        if grad_penalties is not None and grad_penalties.numel():
            read = host_list(grad_penalties.ne(0).reshape(len(step_starts), -1).any(1))
            penalty_cotangents = [g if r else None for g, r in zip(grad_penalties, read, strict=True)]
        func = CountingField(solve.func)
        grad_params: list[Tensor | None] = [None] * len(solve.params)
        adjoint = torch.zeros_like(ys[0])
        states = step_states.reversed_states(func, solve.options, step_starts, step_sizes)
        for n in range(len(step_starts), -1, -1):
            for output in reversed(at_boundary[n]):
                adjoint = adjoint + grad_ys[output]
            if n == 0:
                break
            current = BackwardStep(
                step_starts[n - 1],
                step_sizes[n - 1],
                next(states),
                adjoint,
                penalty_cotangents[n - 1],
                outputs_inside(inside[n - 1], grad_ys, nonzero),
            )
            adjoint = self.step_backward(func, solve, current, grad_params)
        return adjoint, grad_params, func.calls


def first_order_backward(backward: Callable) -> Callable:
    """``once_differentiable``, and a backward pass asked for a graph (``create_graph=True``: a
    Hessian, a gradient penalty) is an error: ``once_differentiable`` alone returns gradients
    detached from the inputs, which ``torch.autograd.functional.hessian`` reads as zeros.

    The backward pass runs outside ``torch.inference_mode``: it differentiates ``func`` afresh
    under ``enable_grad``, which inference mode would silently turn into no graph (zero
    vector-Jacobian products, no parameter gradients), where ``direct``'s recorded graph works.
    The message names the function differentiated by ``ctx.func_name`` (default ``"func"``)."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Tensor) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"gradient={ctx.method.name!r} gives first derivatives only (its backward pass is "
                "not differentiable): for second derivatives (create_graph=True, a Hessian) use "
                + direct(getattr(ctx, "func_name", "func"))
            )
        if any(batched_cotangent(grad) for grad in grads):
            raise RuntimeError(
                f"gradient={ctx.method.name!r} takes one cotangent per backward pass, not a batch of "
                "them (torch.autograd.grad(is_grads_batched=True), jacobian(vectorize=True)): "
                "leave the batching off, or use " + direct(getattr(ctx, "func_name", "func"))
            )
        with torch.inference_mode(False):
            # Eagerly, in a training step a user compiled whole: inductor compiled this backward
            # pass's re-evaluations wrongly (checkpoint's and symplectic's gradients 2-74% off,
            # silently) and the backsolve's recompiled past dynamo's limit.
            return untraced_hook(once)(ctx, *grads)

    return wrapper


class _SolveWithoutGraph(torch.autograd.Function):
    """Forward: the instrumented solve under ``no_grad``. Backward: the gradient method's."""

    @staticmethod
    def forward(ctx, method: GraphFreeGradient, solve: ForwardSolve, y0: Tensor, *params: Tensor):
        ys, stats, steps, penalties = integrate_ode(
            solve.func,
            y0,
            solve.times,
            solve.options,
            record_states=solve.record_states,
            f0=solve.f0,
            step_penalty=solve.step_penalty,
            keep_state=None if solve.step_states is None else solve.step_states.append,
        )
        solve.stats = stats
        solve.steps = steps
        solve.record_owner()
        has_penalties = solve.step_penalty is not None and penalties
        penalty_values = torch.stack(penalties) if has_penalties else ys.new_zeros(0)
        if solve.step_penalty is None:
            ctx.mark_non_differentiable(penalty_values)
        ctx.method = method
        ctx.solve = solve
        # y0 and the parameters too, for autograd's check that they are not changed in place before
        # the backward pass (an optimizer step, y0 *= 5): the backward pass restarts from y0 and
        # re-evaluates func with the parameters as they are then, which would silently give the
        # gradient of another solve ("direct" raises autograd's error, and so does this now).
        ctx.save_for_backward(ys, y0, *params)
        return ys, penalty_values

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_ys: Tensor, grad_penalties: Tensor):
        ys = ctx.saved_tensors[0]
        solve: ForwardSolve = ctx.solve
        solve.check_owner_unchanged()
        refuse_parametrize_cache(solve.owner, ctx.method.name, "func", "backward")
        func, params = solve.func, solve.params
        trained, solve.params = still_trained(params)
        check = CapturedTensorCheck(
            func, solve.params, ctx.method.name, solve.thread, frozen_at_solve=solve.frozen_at_solve
        )
        solve.func = check
        try:
            with (
                without_autocast(),
                naming_a_freed_graph(ctx.method.name),
                buffers_as_at_solve(solve.owner_at_solve, solve.owner),
                gradient_hooks_held_back(params),
            ):
                grad_y0, trained_grads, nfe = ctx.method.backward(
                    solve, ys, grad_ys, grad_penalties if solve.step_penalty is not None else None
                )
        finally:
            solve.func, solve.params = func, params
        warn_if_params_unreached([check], trained_grads, ctx.method.name)
        grad_params = scattered(trained_grads, trained, len(params))
        # Only the gradients asked for are judged: y0's may be non-finite where y0 needs none.
        asked = [
            g for g, needed in zip((grad_y0, *grad_params), ctx.needs_input_grad[2:], strict=True) if needed
        ]
        finish_backward(
            solve.stats,
            (grad_ys, grad_penalties),
            asked,
            nfe,
            solve.times[0],
            float16_autocast=solve.float16_autocast,
        )
        release_unless_graph_kept(solve.release_records)
        return (None, None, grad_y0, *grad_params)


def check_step_penalty_support(method: GradientMethod, step_penalty: StepPenalty | None) -> None:
    if step_penalty is not None and not method.supports_step_penalty:
        raise ValueError(
            f"step_penalty is not supported with gradient={method.name!r}: global regularization "
            "differentiates every step's penalty, which needs a per-step graph; use "
            "gradient='direct' or gradient='checkpoint'"
        )
