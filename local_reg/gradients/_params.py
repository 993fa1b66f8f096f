"""Which tensors a graph-free gradient method differentiates, and what it refuses or warns about
in the field it evaluates again in its backward pass (docs/gradients.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .._autograd import untraced_hook
from .._errors import warn
from .._tuple import owning_module, user_func
from .._validate import check_params_not_dual
from ._function import (
    GradientMethod,
    ModuleAtSolve,
    buffer_marks,
    graph_nodes,
    reevaluation_effect,
    refuse_parametrize_cache,
    warn_of_updated_buffers,
)


def adjoint_params_tuple(adjoint_params: object) -> tuple[Tensor, ...]:
    """``adjoint_params`` as a tuple of tensors (read once: a generator such as
    ``module.parameters()`` is consumed here); anything else is a ``TypeError`` naming it."""
    if isinstance(adjoint_params, Tensor) or not isinstance(adjoint_params, Iterable):
        raise TypeError(
            "adjoint_params must be an iterable of tensors (e.g. a tuple or module.parameters()), "
            f"got {type(adjoint_params).__name__}"
        )
    candidates = tuple(adjoint_params)
    for p in candidates:
        if not isinstance(p, Tensor):
            raise TypeError(f"adjoint_params must hold tensors, got a {type(p).__name__}")
    return candidates


def resolve_adjoint_params(
    func: object, adjoint_params: Iterable[Tensor] | None, gradient: GradientMethod
) -> tuple[Tensor, ...]:
    """The tensors a graph-free gradient method returns gradients for, besides ``y0``.

    ``adjoint_params`` if given, else the parameters of ``func`` when it is a ``torch.nn.Module``
    (or a bound method of one). A plain function hides what it closes over, so it needs
    ``adjoint_params`` (an empty tuple if it has no parameters): otherwise its parameters would
    silently get no gradient. Tensors that do not require grad are dropped, duplicates kept once.
    """
    if adjoint_params is None:
        owner = owning_module(func)
        if owner is None:
            raise ValueError(
                f"gradient={gradient.name!r} needs the parameters of func, but func is a plain function "
                f"({type(user_func(func)).__name__}) and adjoint_params was not given: pass "
                "adjoint_params=(tensors func depends on), or adjoint_params=() if it has none"
            )
        candidates: tuple[Tensor, ...] = tuple(owner.parameters())
    else:
        candidates = adjoint_params_tuple(adjoint_params)
    if gradient.graph_free:
        check_params_not_dual(gradient.name, candidates)
    unique: dict[int, Tensor] = {}
    for p in candidates:
        if p.requires_grad:
            unique.setdefault(id(p), p)
    params = tuple(unique.values())
    # Named by their positions in the list as given (before frozen tensors and repeats are dropped).
    positions: dict[int, int] = {}
    for index, p in enumerate(candidates):
        positions.setdefault(id(p), index)
    _refuse_derived(params, [positions[id(p)] for p in params])
    return params


def known_params(
    func: object, adjoint_params: Iterable[Tensor] | None, gradient: GradientMethod
) -> tuple[Tensor, ...]:
    """The tensors besides ``y0`` that ``gradient`` returns gradients for (a graph-free method:
    :func:`resolve_adjoint_params`) or, differentiating directly, checks the gradients of:
    ``adjoint_params``, or ``func``'s module's parameters; none for a plain function, whose captured
    tensors autograd finds unchecked."""
    if gradient.graph_free or adjoint_params is not None or owning_module(func) is not None:
        return resolve_adjoint_params(func, adjoint_params, gradient)
    return ()


def warn_if_reevaluation_differs(func: object, gradient_method: GradientMethod, name: str = "func") -> None:
    """A graph-free method evaluates ``func`` again in its backward pass: dropout and RReLU draw new
    masks or slopes there (the gradient is then not the forward solve's), batch and instance norm
    update their running statistics again and spectral normalization takes further power
    iterations (its weight then is not the forward solve's). Warn when ``func`` has such a layer in
    training mode (a regularized SDE model that ``func`` calls warns of itself, when it is re-run
    there: :meth:`local_reg.Regularized.forward`). ``name``: what the message calls ``func``.

    Inside ``torch.nn.utils.parametrize.cached()`` a parametrized field is refused (``ValueError``):
    the forward solve, without a graph, fills the cache with weights that have none, which the
    backward pass's evaluations then read, so the parametrization's parameters would get no
    gradient, silently."""
    owner = owning_module(func)
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        return  # no backward pass will evaluate func again
    refuse_parametrize_cache(owner, gradient_method.name, name, "solve")
    if owner is None:
        return

    def differs(module: torch.nn.Module) -> str | None:
        return reevaluation_effect(module) if module.training else None

    found = sorted({kind for kind in map(differs, owner.modules()) if kind is not None})
    if found:
        effects = {
            "dropout": "dropout draws new masks (the gradient is not the forward solve's)",
            "RReLU": "RReLU draws new slopes (the gradient is not the forward solve's)",
            "batch norm": "batch norm updates its running statistics again",
            "instance norm": "instance norm updates its running statistics again",
            "spectral norm": "spectral norm iterates again (the weight is not the forward solve's)",
        }
        warn(
            f"{name}'s module has {' and '.join(found)} in training mode: gradient={gradient_method.name!r} "
            f"evaluates {name} again in its backward pass, where {' and '.join(effects[k] for k in found)}; "
            "use gradient='direct', or put those layers in eval mode"
        )


def peer_module_check(func: object, gradient: GradientMethod, name: str = "func") -> Callable[[Tensor], None]:
    """For a peer library's adjoint (torchdiffeq's, torchsde's), which evaluates ``func`` again in
    its backward pass with what its module holds then: the layers that differ when re-evaluated
    warned of (:func:`warn_if_reevaluation_differs`) and the buffers noted now, before the peer's
    solve; the returned ``attach(ys)``, called after it, warns of the buffers the solve changed
    (:func:`warn_of_updated_buffers`) and checks the module as local_reg's graph-free methods do
    (:class:`ModuleAtSolve`) by a hook on the outputs, which runs before the peer's backward."""
    warn_if_reevaluation_differs(func, gradient, name)
    owner = owning_module(func)
    before = buffer_marks(owner)

    def attach(ys: Tensor) -> None:
        if owner is None or not ys.requires_grad:
            return
        at_solve = ModuleAtSolve.of(owner, before)
        warn_of_updated_buffers(at_solve, owner, gradient.name, name)

        def check(grad: Tensor) -> Tensor:
            at_solve.check(owner, name)
            return grad

        ys.register_hook(untraced_hook(check))

    return attach


def _refuse_derived(params: tuple[Tensor, ...], positions: list[int]) -> None:
    """A listed tensor computed from another listed one (``w = raw + 1`` with both listed) would pass
    its gradient on to the other, which also gets its own: counted twice. ``positions``: each
    tensor's index in the list the user gave, for the message."""
    ids = {id(p): index for index, p in enumerate(params)}
    nodes = {p.grad_fn: index for index, p in enumerate(params) if p.grad_fn is not None}
    for index, p in enumerate(params):
        below = [] if p.grad_fn is None else [node for node, _ in p.grad_fn.next_functions]
        for node in graph_nodes(below):
            other = nodes.get(node, ids.get(id(getattr(node, "variable", None))))
            if other is not None:
                derived, source = positions[index], positions[other]
                raise ValueError(
                    f"adjoint_params[{derived}] is computed from adjoint_params[{source}]: list one of them "
                    "(the tensor func uses passes its gradient on to what it is computed from), or the "
                    "gradient is counted twice"
                )
