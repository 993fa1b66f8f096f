"""The Brownian path a solve is driven by.

Adaptive SDE solvers must not simply redraw the increment of a rejected step: the accepted path
would then be biased towards small increments (Rackauckas & Nie 2017, Sec. 2). Querying
torchsde's ``BrownianInterval`` (Kidger, Foster, Li, Lyons 2021, "Efficient and accurate gradients
for neural SDEs") instead samples the increment over a shorter interval from the Brownian bridge
conditioned on everything already drawn, and answers a repeated query with the same value. So a
rejected step's retry is a sub-interval of the *same* path, and a replay of the accepted grid
on the same object reproduces the solve exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torchsde

from .._validate import generator_device, rounded

# Step hint for a new BrownianInterval: the interval is cut into pieces of about
# 0.8 * cache_size * (t1 - t0) / _TREE_PIECES, i.e. a dependency tree of a few levels.
_TREE_PIECES = 100


def interval_of(bm: Any) -> tuple[float, float] | None:
    """``(t0, t1)`` that ``bm`` covers, when it says (torchsde's Brownian classes do), else None."""
    if isinstance(bm, torchsde.ReverseBrownian):
        # It answers bm(ta, tb) with its base's (-tb, -ta): it covers the base's interval mirrored.
        base = interval_of(bm.base_brownian)
        return None if base is None else (0.0 - base[1], 0.0 - base[0])  # 0.0 - 0.0 is 0.0, not -0.0
    for candidate in (bm, getattr(bm, "_interval", None)):
        start, end = getattr(candidate, "_start", None), getattr(candidate, "_end", None)
        if start is not None and end is not None:
            return float(start), float(end)
    return None


def rounds_to(end: float, time: float, times_dtype: torch.dtype | None) -> bool:
    """Whether ``time`` is a Brownian motion's ``end`` rounded to the dtype of the times it came in
    (``None``: float64 or plain floats, which round nothing): a motion made over ``[0, 0.3]`` (a
    Python float) covers the float32 times ``torch.linspace(0, 0.3, 4)``, whose end is
    ``0.30000001...``, since they cannot say 0.3 more exactly (torchsde queries it there with a
    warning; ``CheckedBrownian`` clamps the query onto the interval, a float32 ulp at most)."""
    return times_dtype is not None and rounded(end, times_dtype) == time


def step_hint(t0: float, t1: float, step: float | None, max_steps: int | None = None) -> float:
    """The step hint ``dt`` of a new ``BrownianInterval`` over ``[t0, t1]``: ``(t1 - t0) / 100``, or
    a fixed ``step`` where it is shorter, floored at ``(t1 - t0) / max_steps``. torchsde splits the
    piece a query falls in at the query's end, so consecutive steps within one piece make a chain
    one node deeper per step, and each new node costs time in proportion to its depth squared (the
    bits of its spawn key, hashed by numpy's SeedSequence): pieces of about 36 steps keep the chains
    short, where the hint of a hundredth of the span leaves 4 pieces, whose chains reach a quarter of
    all the steps (4,000 levels for 16,000 steps)."""
    hint = (t1 - t0) / _TREE_PIECES
    if step is not None:
        floor = 0.0 if max_steps is None else (t1 - t0) / max_steps
        hint = min(hint, max(step, floor))
    return hint


def check_brownian_span(bm: Any, t0: float, t1: float, times_dtype: torch.dtype | None = None) -> None:
    """Refuse a ``bm`` that is not callable (``TypeError``) or whose interval (where it states one)
    does not cover ``[t0, t1]`` (``ValueError``; its ends may round to the span's in ``times_dtype``,
    :func:`rounds_to`)."""
    if not callable(bm):
        raise TypeError(f"bm must be a Brownian motion callable as bm(ta, tb), got {type(bm).__name__}")
    interval = interval_of(bm)
    if interval is not None:
        start, end = interval
        tol = 1e-12 * max(1.0, abs(t0), abs(t1))
        if (start > t0 + tol and not rounds_to(start, t0, times_dtype)) or (
            end < t1 - tol and not rounds_to(end, t1, times_dtype)
        ):
            raise ValueError(
                f"bm covers [{start}, {end}] but the solve needs [{t0}, {t1}]: create the Brownian "
                "motion over that interval"
            )


def make_brownian(
    bm: Any | None,
    t0: float,
    t1: float,
    size: tuple[int, int],
    like: torch.Tensor,
    generator: torch.Generator | None = None,
    levy_area: str = "none",
    step: float | None = None,
    max_steps: int | None = None,
    times_dtype: torch.dtype | None = None,
) -> Any:
    """Validate ``bm`` or, if ``None``, create a ``BrownianInterval`` over ``[t0, t1]`` (with
    torchsde's ``levy_area_approximation=levy_area``, which its ``srk`` scheme needs).

    The new interval's seed is drawn from ``generator`` (or torch's global generator), so
    ``torch.manual_seed`` makes solves reproducible. It gets a fixed step hint ``dt``: without
    one, torchsde refines its dependency tree down to the *latest* step it is queried with, which
    for an adaptive solve approaching a singularity builds an exponentially large tree (a
    Brownian motion passed in by the caller should be given a ``dt`` hint for the same reason).
    ``times_dtype``: the narrowest float dtype the output times came in (``narrowest_float``); a
    given ``bm`` covers the span if its ends round to the span's in it (:func:`rounds_to`).
    """
    if bm is None:
        entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator_device(generator)))
        return torchsde.BrownianInterval(
            t0=t0,
            t1=t1,
            size=size,
            dtype=like.dtype,
            device=like.device,
            entropy=entropy,
            dt=step_hint(t0, t1, step, max_steps),
            levy_area_approximation=levy_area,
        )
    check_brownian_span(bm, t0, t1, times_dtype)
    shape = getattr(bm, "shape", None)
    if shape is not None and tuple(shape) != tuple(size):
        raise ValueError(
            f"bm has shape {tuple(shape)}, but y0 and the noise type need Brownian motion of shape {size}"
        )
    return bm


def release_brownian(bm: Any) -> None:
    """Free a ``BrownianInterval`` this library made, after its last query: its cache of increments
    (batch-sized tensors) and the links that hold its tree in reference cycles (each node's parent
    and top, the interval's last visited node), which only a full garbage collection would free,
    so that the increments piled up between collections. Anything else is left as it is."""
    if not isinstance(bm, torchsde.BrownianInterval):
        return
    cache = getattr(bm, "_increment_and_space_time_levy_area_cache", None)
    if isinstance(cache, dict):
        cache.clear()
        # torchsde's LRU cache keeps its keys in a list of its own, which dict.clear leaves.
        keys = getattr(cache, "_keys", None)
        if isinstance(keys, list):
            keys.clear()
    nodes = [bm]
    while nodes:
        node = nodes.pop()
        for child in (getattr(node, "_left_child", None), getattr(node, "_right_child", None)):
            if child is not None:
                nodes.append(child)
                child._parent = child._top = None
    bm._last_interval = bm._top = None
