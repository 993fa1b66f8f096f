"""Butcher tableaus as data.

Every explicit Runge--Kutta method in ``local_reg`` is one :class:`ButcherTableau`; a single generic
engine (:func:`local_reg.step`) runs them all. An embedded pair carries ``error_weights``
(``b - b_hat``), so the local error estimate of a step is ``dt * sum_i error_weights[i] * k_i``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ._checks import positive_int


def finite_floats(what: str, values: object) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats (a list or numpy array is taken, and is then
    hashable); ``what`` names them in the error."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list, np.ndarray)):
        raise TypeError(f"{what} must be a sequence of floats, got {type(values).__name__}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{what} must hold real numbers, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value}")
    return tuple(float(value) for value in values)


def check_order(what: str, order: object) -> int:
    """``order`` as an int if it is a positive integer (numpy's too, not a bool), else the
    ``TypeError`` or ``ValueError`` of :func:`positive_int`; ``what`` names its owner."""
    return positive_int(f"{what}: order", order)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge--Kutta method.

    Attributes:
        name: the method's name, as accepted by ``odeint(method=...)``.
        c: stage times as fractions of the step, ``c[0] == 0``.
        a: strictly lower-triangular stage coefficients; ``a[i]`` has ``i`` entries.
        b: weights of the propagated solution.
        order: order of the propagated solution.
        error_weights: ``b - b_hat`` of the embedded pair, or ``None`` for a fixed-step method. A
            pair propagates its higher-order solution (local extrapolation, as Dormand--Prince and
            Tsitouras): ``b`` has order ``order`` and ``b_hat`` a lower one, the order the
            controller's exponents assume (``1 / order``: the error estimate is
            ``O(dt^order)``). A pair written the other way round (classic RKF45's ``b`` are its
            fourth-order weights) is given with ``b`` and ``b_hat`` exchanged.
        stiffness_stages: indices ``(i, j)`` of two stages evaluated at ``c == 1`` whose difference
            gives Shampine's stiffness estimate (Hairer--Wanner II, IV.2), or ``None``.
        stability_size: the extent of the stability region along the negative real axis; ``dt * rho``
            beyond it means the step is limited by stability rather than accuracy.

    The coefficients may be given as lists or arrays (``a`` as its rows below the diagonal, or as the
    square matrix with zeros on and above it: nested lists, an array or a tensor); they are kept as
    tuples of floats. A tableau whose coefficients are not finite, whose ``c`` are not the row sums
    of ``a``, whose ``error_weights`` do not sum to 0 (or are all 0), whose ``b`` miss an order
    condition up to ``order``, or whose embedded solution ``b - error_weights`` meets every one of
    them too (``b`` is then not the pair's higher-order solution) is refused with a ``ValueError``
    naming the field.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    error_weights: tuple[float, ...] | None = None
    stiffness_stages: tuple[int, int] | None = None
    stability_size: float | None = None
    fsal: bool = field(init=False)

    if TYPE_CHECKING:
        # The constructor as a type checker should read it: the coefficients may be lists or arrays
        # (see above), which __post_init__ keeps as the tuples of floats the fields are annotated with.
        def __init__(
            self,
            name: str,
            c: Sequence[float] | np.ndarray,
            a: Sequence[Sequence[float] | np.ndarray] | np.ndarray,
            b: Sequence[float] | np.ndarray,
            order: int,
            error_weights: Sequence[float] | np.ndarray | None = None,
            stiffness_stages: tuple[int, int] | None = None,
            stability_size: float | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"tableau name must be a str, got {type(self.name).__name__}")
        for attribute in ("c", "b", "error_weights"):
            value = getattr(self, attribute)
            if value is not None:
                object.__setattr__(self, attribute, self._coefficients(attribute, value))
        square = _square_matrix(self.a)
        if square is not None:
            object.__setattr__(self, "a", square)
        if isinstance(self.a, np.ndarray) and self.a.ndim == 2 and self.a.shape[0] == self.a.shape[1]:
            # A square matrix, as it is printed: its entries on and above the diagonal must be 0.
            if np.any(np.triu(self.a) != 0):
                raise ValueError(
                    f"tableau {self.name!r}: a has entries on or above the diagonal (an implicit method); "
                    "an explicit method's a is strictly lower-triangular"
                )
            object.__setattr__(self, "a", [self.a[i, :i] for i in range(self.a.shape[0])])
        if isinstance(self.a, (str, bytes)) or not isinstance(self.a, (tuple, list)):
            raise TypeError(
                f"tableau {self.name!r}: a must be a sequence of rows, got {type(self.a).__name__}"
            )
        object.__setattr__(
            self, "a", tuple(self._coefficients(f"a[{i}]", row) for i, row in enumerate(self.a))
        )
        n_stages = len(self.c)
        if n_stages == 0:
            raise ValueError(f"tableau {self.name!r}: needs at least one stage")
        if len(self.b) != n_stages or len(self.a) != n_stages:
            raise ValueError(
                f"tableau {self.name!r}: c, a and b must have one entry per stage, got {len(self.c)}, "
                f"{len(self.a)} and {len(self.b)}"
            )
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(
                    f"tableau {self.name!r}: a[{i}] must have {i} entries (a is strictly lower-triangular, "
                    f"an explicit method: pass only the entries below the diagonal), got {len(row)}"
                )
        if self.error_weights is not None and len(self.error_weights) != n_stages:
            raise ValueError(f"tableau {self.name!r}: error_weights needs one entry per stage")
        object.__setattr__(self, "order", check_order(f"tableau {self.name!r}", self.order))
        self._check_conditions()
        pair = self.stiffness_stages
        if pair is not None and not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(i, int) and 0 <= i < n_stages for i in pair)
            and pair[0] != pair[1]
            and self.c[pair[0]] == self.c[pair[1]]
        ):
            raise ValueError(
                f"tableau {self.name!r}: stiffness_stages must be two different stage indices with the "
                f"same c, got {pair!r}"
            )
        if self.stability_size is not None and not (
            isinstance(self.stability_size, numbers.Real)
            and math.isfinite(self.stability_size)
            and self.stability_size > 0
        ):
            raise ValueError(
                f"tableau {self.name!r}: stability_size must be positive and finite, "
                f"got {self.stability_size!r}"
            )
        # First Same As Last: the last stage is evaluated at (t + dt, y1), so it is the next step's k1.
        last_row = self.a[-1]
        fsal = (
            n_stages > 1 and self.c[-1] == 1.0 and self.b[-1] == 0.0 and tuple(last_row) == tuple(self.b[:-1])
        )
        object.__setattr__(self, "fsal", fsal)

    def _coefficients(self, name: str, values: object) -> tuple[float, ...]:
        return finite_floats(f"tableau {self.name!r}: {name}", values)

    def _check_conditions(self) -> None:
        """The row sums (``c_i = sum_j a_ij``, so a stage is evaluated at the time it approximates),
        an error estimate that is one (weights summing to 0, not all 0), and every order condition
        up to ``order``, one per rooted tree (Hairer, Norsett, Wanner I, II.2, Thm. 2.13; 17 at
        order 5, 37 at order 6): a tableau that breaks one would integrate to a silently wrong or
        unestimated solution."""
        n = self.n_stages
        a = np.zeros((n, n))
        for i, row in enumerate(self.a):
            a[i, :i] = row
        c, b = np.array(self.c), np.array(self.b)
        tolerance = 1e-9 * (1.0 + np.abs(a).sum() + np.abs(b).sum())
        for i in range(n):
            if abs(a[i].sum() - c[i]) > tolerance:
                raise ValueError(
                    f"tableau {self.name!r}: c[{i}] = {c[i]} must be the sum of a[{i}] ({a[i].sum()})"
                )
        if self.error_weights is not None:
            weights = np.array(self.error_weights)
            if not weights.any() or abs(weights.sum()) > tolerance:
                raise ValueError(
                    f"tableau {self.name!r}: error_weights (b - b_hat) must sum to 0 and not all be 0, got "
                    f"{self.error_weights}; a method without an error estimate takes error_weights=None"
                )
        missed = _missed_condition(b, a, c, self.order, tolerance)
        if missed is not None:
            vertices, tree, value, expected = missed
            raise ValueError(
                f"tableau {self.name!r}: order={self.order} needs the order-{vertices} condition "
                f"{_condition_name(tree)} = {expected:.6g}, got {value:.6g}; its coefficients "
                f"reach order {vertices - 1}"
            )
        if self.error_weights is not None and (
            _missed_condition(b - np.array(self.error_weights), a, c, self.order, tolerance) is None
        ):
            if _missed_condition(b, a, c, self.order + 1, tolerance) is None:
                # Both solutions reach order: b reaches more, the order given understates it.
                raise ValueError(
                    f"tableau {self.name!r}: order={self.order} understates b, which reaches order "
                    f"{self.order + 1} (the embedded solution b - error_weights reaches {self.order}): "
                    f"order={self.order + 1}"
                )
            raise ValueError(
                f"tableau {self.name!r}: the embedded solution b - error_weights reaches order "
                f"{self.order} too, so b is not the higher-order solution of the pair: a pair "
                "propagates its higher-order solution, with order its order and error_weights = "
                "b - b_hat (for RKF45, b the fifth-order weights, order=5)"
            )

    @property
    def n_stages(self) -> int:
        """The number of stages ``s`` (the FSAL stage included)."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau has an embedded error estimate (``error_weights``), so that it can
        adapt its steps."""
        return self.error_weights is not None


def _square_matrix(a: object) -> np.ndarray | None:
    """``a`` as an array where it is a tensor, or a sequence of ``len(a)`` rows of ``len(a)`` numbers
    each: the square matrix as printed (the rows below the diagonal have ``0, 1, ...`` entries, so
    the two never agree); else ``None``, ``a`` then read as rows (a numpy array as it is)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    if not isinstance(a, (tuple, list)) or not a:
        return None
    if not all(isinstance(row, (tuple, list, np.ndarray, torch.Tensor)) and len(row) == len(a) for row in a):
        return None
    try:  # entries that are not numbers are named by the row check that follows
        return np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        return None


@functools.cache
def _rooted_trees(max_order: int) -> dict[int, tuple[tuple, ...]]:
    """Butcher's rooted trees by number of vertices, up to ``max_order``: a tree is the tuple of
    its root's subtrees, each unordered forest listed once (subtrees in a fixed order of all trees)."""
    every: list[tuple] = [()]
    size: dict[tuple, int] = {(): 1}
    by_size: dict[int, tuple[tuple, ...]] = {1: ((),)}

    def forests(total: int, start: int) -> Iterator[tuple]:
        if total == 0:
            yield ()
            return
        for index in range(start, len(every)):
            if size[every[index]] <= total:
                for rest in forests(total - size[every[index]], index):
                    yield (every[index], *rest)

    for order in range(2, max_order + 1):
        by_size[order] = tuple(forests(order - 1, 0))
        size.update(dict.fromkeys(by_size[order], order))
        every.extend(by_size[order])
    return by_size


def _missed_condition(
    b: np.ndarray, a: np.ndarray, c: np.ndarray, order: int, tolerance: float
) -> tuple[int, tuple, float, float] | None:
    """The first order condition up to ``order`` that weights ``b`` miss, as ``(its order, its
    tree, b . Phi(tree), 1 / gamma(tree))``; ``None`` if they meet every one."""
    for vertices in range(1, order + 1):
        for tree in _rooted_trees(vertices)[vertices]:
            value, expected = float(b @ _stage_weights(tree, a, c)), 1.0 / _density(tree)[1]
            if abs(value - expected) > tolerance:
                return vertices, tree, value, expected
    return None


def _stage_weights(tree: tuple, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The elementary weights ``Phi_i(tree)`` of the stages: the product over the root's subtrees
    of ``a @ Phi(subtree)`` (``c`` for a single vertex, since ``c = a @ 1``)."""
    phi = np.ones_like(c)
    for subtree in tree:
        phi = phi * (c if not subtree else a @ _stage_weights(subtree, a, c))
    return phi


def _density(tree: tuple) -> tuple[int, int]:
    """The tree's number of vertices and its density ``gamma``: the number of vertices times the
    densities of the root's subtrees."""
    vertices, product = 1, 1
    for subtree in tree:
        subtree_vertices, subtree_density = _density(subtree)
        vertices += subtree_vertices
        product *= subtree_density
    return vertices, vertices * product


def _condition_name(tree: tuple) -> str:
    """The condition ``b . Phi(tree)`` as a formula in ``b``, ``c`` and ``a`` (``b.(c^2*a(c))``)."""

    def stage(subtrees: tuple) -> str:
        factors = ["c" if not subtree else f"a({stage(subtree)})" for subtree in subtrees]
        return "*".join(
            factor if factors.count(factor) == 1 else f"{factor}^{factors.count(factor)}"
            for factor in dict.fromkeys(factors)
        )

    if not tree:
        return "sum(b)"
    return "b.c" if tree == ((),) else f"b.({stage(tree)})"


def _rk_pair(b: tuple[float, ...], b_hat: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(bi - bhi for bi, bhi in zip(b, b_hat, strict=True))


# Tsitouras, "Runge--Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62 (2011). The first column of a is c_i - sum of the others.
_TSIT5_A_REST = (
    (),
    (),
    (0.335480655492357,),
    (-6.359448489975075, 4.3622954328695815),
    (-11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (-12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
)
_TSIT5_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_TSIT5_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
TSIT5 = ButcherTableau(
    name="tsit5",
    c=_TSIT5_C,
    a=(
        (),
        *((ci - sum(rest),) + rest for ci, rest in zip(_TSIT5_C[1:6], _TSIT5_A_REST[1:], strict=True)),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    order=5,
    # b - b_hat, as every pair here (OrdinaryDiffEq's btilde is b_hat - b: a sign the norm drops).
    error_weights=(
        0.00178001105222577714,
        0.0008164344596567469,
        -0.007880878010261995,
        0.1447110071732629,
        -0.5823571654525552,
        0.45808210592918697,
        -1.0 / 66.0,
    ),
    stiffness_stages=(5, 6),
    stability_size=3.5068,
)

# Dormand & Prince, "A family of embedded Runge--Kutta formulae", J. Comput. Appl. Math. 6 (1980).
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    order=5,
    error_weights=_rk_pair(
        _DOPRI5_B,
        (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    ),
    stiffness_stages=(5, 6),
    stability_size=3.3,
)

# Prince & Dormand, "High order embedded Runge--Kutta formulae", J. Comput. Appl. Math. 7 (1981):
# RK8(7)13M, as torchdiffeq's "dopri8". Its 13 stages are followed here by f(t + dt, y1), the FSAL
# stage, which the next step reuses (13 evaluations a step either way) and the dense output reads. The
# published coefficients are rational approximations, so the order conditions hold to about 1e-16.
_DOPRI8_C = (
    0.0,
    1 / 18,
    1 / 12,
    1 / 8,
    5 / 16,
    3 / 8,
    59 / 400,
    93 / 200,
    5490023248 / 9719169821,
    13 / 20,
    1201146811 / 1299019798,
    1.0,
    1.0,
    1.0,
)
_DOPRI8_B = (
    14005451 / 335480064,
    0.0,
    0.0,
    0.0,
    0.0,
    -59238493 / 1068277825,
    181606767 / 758867731,
    561292985 / 797845732,
    -1041891430 / 1371343529,
    760417239 / 1151165299,
    118820643 / 751138087,
    -528747749 / 2220607170,
    1 / 4,
    0.0,
)
_DOPRI8_B_HAT = (
    13451932 / 455176623,
    0.0,
    0.0,
    0.0,
    0.0,
    -808719846 / 976000145,
    1757004468 / 5645159321,
    656045339 / 265891186,
    -3867574721 / 1518517206,
    465885868 / 322736535,
    53011238 / 667516719,
    2 / 45,
    0.0,
    0.0,
)
DOPRI8 = ButcherTableau(
    name="dopri8",
    c=_DOPRI8_C,
    a=(
        (),
        (1 / 18,),
        (1 / 48, 1 / 16),
        (1 / 32, 0.0, 3 / 32),
        (5 / 16, 0.0, -75 / 64, 75 / 64),
        (3 / 80, 0.0, 0.0, 3 / 16, 3 / 20),
        (
            29443841 / 614563906,
            0.0,
            0.0,
            77736538 / 692538347,
            -28693883 / 1125000000,
            23124283 / 1800000000,
        ),
        (
            16016141 / 946692911,
            0.0,
            0.0,
            61564180 / 158732637,
            22789713 / 633445777,
            545815736 / 2771057229,
            -180193667 / 1043307555,
        ),
        (
            39632708 / 573591083,
            0.0,
            0.0,
            -433636366 / 683701615,
            -421739975 / 2616292301,
            100302831 / 723423059,
            790204164 / 839813087,
            800635310 / 3783071287,
        ),
        (
            246121993 / 1340847787,
            0.0,
            0.0,
            -37695042795 / 15268766246,
            -309121744 / 1061227803,
            -12992083 / 490766935,
            6005943493 / 2108947869,
            393006217 / 1396673457,
            123872331 / 1001029789,
        ),
        (
            -1028468189 / 846180014,
            0.0,
            0.0,
            8478235783 / 508512852,
            1311729495 / 1432422823,
            -10304129995 / 1701304382,
            -48777925059 / 3047939560,
            15336726248 / 1032824649,
            -45442868181 / 3398467696,
            3065993473 / 597172653,
        ),
        (
            185892177 / 718116043,
            0.0,
            0.0,
            -3185094517 / 667107341,
            -477755414 / 1098053517,
            -703635378 / 230739211,
            5731566787 / 1027545527,
            5232866602 / 850066563,
            -4093664535 / 808688257,
            3962137247 / 1805957418,
            65686358 / 487910083,
        ),
        (
            403863854 / 491063109,
            0.0,
            0.0,
            -5068492393 / 434740067,
            -411421997 / 543043805,
            652783627 / 914296604,
            11173962825 / 925320556,
            -13158990841 / 6184727034,
            3936647629 / 1978049680,
            -160528059 / 685178525,
            248638103 / 1413531060,
            0.0,
        ),
        _DOPRI8_B[:13],
    ),
    b=_DOPRI8_B,
    order=8,
    error_weights=_rk_pair(_DOPRI8_B, _DOPRI8_B_HAT),
    stiffness_stages=(12, 13),
    stability_size=5.1666,
)

# Bogacki & Shampine, "A 3(2) pair of Runge--Kutta formulas", Appl. Math. Lett. 2 (1989).
_BOSH3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
BOSH3 = ButcherTableau(
    name="bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _BOSH3_B[:3]),
    b=_BOSH3_B,
    order=3,
    error_weights=_rk_pair(_BOSH3_B, (7 / 24, 1 / 4, 1 / 3, 1 / 8)),
)

# Fehlberg's RK1(2) pair, propagating the second-order solution (as torchdiffeq's "fehlberg2").
_FEHLBERG2_B = (1 / 512, 255 / 256, 1 / 512)
FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=_FEHLBERG2_B,
    order=2,
    error_weights=_rk_pair(_FEHLBERG2_B, (1 / 256, 255 / 256, 0.0)),
)

# Heun's method with Euler as the embedded first-order solution.
_HEUN_B = (1 / 2, 1 / 2)
HEUN_EULER = ButcherTableau(
    name="heun_euler",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=_HEUN_B,
    order=2,
    error_weights=_rk_pair(_HEUN_B, (1.0, 0.0)),
)

EULER = ButcherTableau(name="euler", c=(0.0,), a=((),), b=(1.0,), order=1)
MIDPOINT = ButcherTableau(name="midpoint", c=(0.0, 1 / 2), a=((), (1 / 2,)), b=(0.0, 1.0), order=2)
RK4 = ButcherTableau(
    name="rk4",
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
)

TABLEAUS: dict[str, ButcherTableau] = {
    tableau.name: tableau
    for tableau in (TSIT5, DOPRI5, DOPRI8, BOSH3, FEHLBERG2, HEUN_EULER, EULER, MIDPOINT, RK4)
}


SCIPY_STIFF_SOLVE = (
    "the methods here are explicit; for a stiff solve without gradients, local_reg.compat.odeint(func, y0, "
    "t, method='scipy_solver', options={{'solver': {solver!r}}})"
)
"""Where a stiff solve of scipy's goes (``.format(solver=...)``, one of scipy's method names): the
tableaus are explicit, and local_reg.compat runs scipy's own solvers as torchdiffeq does."""


def method_hint(method: str, names: Collection[str]) -> str:
    """What an unknown ``method`` is among ``names`` (the methods the caller takes), where it is
    torchdiffeq's, scipy's or diffrax's name for one (matched ignoring case; diffrax's solver classes
    are the names capitalised), as ``" (...)"``; else ``""``."""
    heun = "heun_euler" if "heun_euler" in names else "adaptive_heun"
    hints = {
        "adaptive_heun": f"torchdiffeq's name for {heun!r}",
        "heun": f"diffrax's Heun is {heun!r}",
        "heun_euler": "local_reg.odeint's name for 'adaptive_heun'",
        "rk45": "scipy's RK45 is 'dopri5'",
        "rk23": "scipy's RK23 is 'bosh3'",
        "dop853": "scipy's DOP853 is another eighth-order pair; 'dopri8' is Prince and Dormand's RK8(7)13M",
        **dict.fromkeys(
            ("heun2", "heun3"),
            "a fixed-step method of torchdiffeq's: local_reg.compat.METHODS holds its tableau, for method=",
        ),
        **{
            solver.lower(): f"scipy's stiff {solver}: {SCIPY_STIFF_SOLVE.format(solver=solver)}"
            for solver in ("Radau", "BDF", "LSODA")
        },
    }
    lower = method.lower()
    hint = f"did you mean {lower!r}?" if lower in names else hints.get(lower)
    return f" ({hint})" if hint else ""


def get_tableau(method: str | ButcherTableau) -> ButcherTableau:
    """Look a method up by name (or pass a :class:`ButcherTableau` through)."""
    if isinstance(method, ButcherTableau):
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a str or ButcherTableau, got {type(method).__name__}")
    try:
        return TABLEAUS[method]
    except KeyError:
        hint = method_hint(method, TABLEAUS)
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(TABLEAUS)}{hint}") from None
