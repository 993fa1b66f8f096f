"""Dense output of the Runge--Kutta pairs, as data next to the tableaus.

Every interpolant here is a linear combination of one step's stage derivatives::

    y(t + theta dt) = y + dt * sum_i B_i(theta) k_i,      B_i(theta) = sum_p coefficients[i][p] theta^(p+1)

so ``y(t) = y`` at ``theta = 0`` and ``B_i(1) = b_i`` (the step's own ``y1``) at ``theta = 1``. Being
linear in the stages, its adjoint enters the stage recursion of the gradient methods directly (see
docs/gradients.md). The stages are those of the tableau, plus, where ``extra_stage`` is set, one
more: ``f(t + dt, y1)``, the derivative at the step's end. A pair that is not FSAL evaluates it only
when a step holds an output time, and hands it to the next step as its first stage, so it costs one
evaluation per solve (at the last step) at most.

- ``tsit5``: the free fourth-order interpolant of Tsitouras, "Runge--Kutta pairs of order 5(4)
  satisfying only the first column simplifying assumption", Comput. Math. Appl. 62 (2011), in the
  factored form of OrdinaryDiffEq, torchode and diffrax.
- ``dopri5``: the fourth-order dense output of Dormand and Prince as in Hairer's ``DOPRI5``
  (``CONTD5``; Hairer, Norsett, Wanner, Solving ODEs I, II.6).
- ``dopri8``: a fifth-order continuous extension of Prince and Dormand's RK8(7)13M from its own 14
  stages (the FSAL stage included, so no extra evaluation), derived here: each ``B_i`` a polynomial of
  degree 7 meeting every order condition up to order 5 at every ``theta`` (Hairer, Norsett, Wanner,
  Solving ODEs I, II.6, Thm. 6.1), with ``B(1) = b``, ``B'(0) = e_1`` and ``B'(1) = e_14`` (so the
  dense output matches ``f`` at both ends: continuously differentiable across steps), the remaining
  freedom spent on the order-6 conditions' residual over ``theta`` in ``[0, 1]`` (least squares, with
  a ridge of 1e-12 that keeps the coefficients below 60). ``python benchmarks/dopri8.py --derive``
  derives the coefficients again; ``benchmarks/dopri8.py`` measures them against torchdiffeq's
  ``dopri8``, whose quartic is fitted through a fifth-order midpoint, and scipy's DOP853.
- every other tableau: the cubic Hermite interpolant through ``y``, ``y1``, ``f(t, y)`` and
  ``f(t + dt, y1)`` (third order, or the tableau's order if lower).

A pair's own interpolant is registered in :data:`DENSE_OUTPUTS`, keyed by the tableau: keyed by
its coefficients rather than its name, so that a tableau of the same name with other coefficients
does not get it, and a user-made tableau, in no registry, can have one; not a field of
:class:`~local_reg.tableaus.ButcherTableau`, whose equality, hash and repr would then carry it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import polynomial as P

from ._checks import check_bool
from .tableaus import DOPRI5, DOPRI8, TSIT5, ButcherTableau, check_order, finite_floats, get_tableau


@dataclass(frozen=True)
class Interpolant:
    """The dense output of one tableau: ``y(t + theta dt) = y + dt sum_i B_i(theta) k_i``.

    Attributes:
        name: the tableau's name.
        coefficients: ``coefficients[i][p]`` is the coefficient of ``theta^(p+1)`` in ``B_i``; one row
            per stage, the extra stage last.
        order: the order of the interpolated solution (its local error is ``O(dt^(order+1))``).
        extra_stage: whether the last row belongs to ``f(t + dt, y1)``, evaluated besides the
            tableau's stages (for pairs that are not FSAL).
    """

    name: str
    coefficients: tuple[tuple[float, ...], ...]
    order: int
    extra_stage: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"interpolant name must be a str, got {type(self.name).__name__}")
        rows = self.coefficients
        if isinstance(rows, (str, bytes)) or not isinstance(rows, (tuple, list, np.ndarray)) or not len(rows):
            raise TypeError(f"interpolant {self.name!r}: coefficients must be a non-empty sequence of rows")
        rows = tuple(
            finite_floats(f"interpolant {self.name!r}: coefficients[{i}]", row) for i, row in enumerate(rows)
        )
        if not any(rows):
            raise ValueError(f"interpolant {self.name!r}: coefficients needs at least one power of theta")
        object.__setattr__(self, "coefficients", rows)  # a list is taken, and is then hashable
        object.__setattr__(self, "order", check_order(f"interpolant {self.name!r}", self.order))
        check_bool(f"interpolant {self.name!r}: extra_stage", self.extra_stage)

    @property
    def n_stages(self) -> int:
        """The number of stage derivatives the interpolant combines."""
        return len(self.coefficients)

    def weight_matrix(self, thetas: Sequence[float]) -> np.ndarray:
        """``W[m, i] = B_i(thetas[m])``, shape ``(len(thetas), n_stages)``, by Horner's rule (the
        same arithmetic for each entry, however many ``thetas``)."""
        theta = np.asarray(thetas, dtype=np.float64).reshape(-1, 1)
        return _horner(self._matrix, theta) * theta

    def derivative_matrix(self, thetas: Sequence[float]) -> np.ndarray:
        """``D[m, i] = B_i'(thetas[m])``, shape ``(len(thetas), n_stages)``: the interpolant's time
        derivative is ``dy/dt = sum_i B_i'(theta) k_i`` (``dt`` cancels against ``dtheta/dt``)."""
        return _horner(self._derivative_matrix, np.asarray(thetas, dtype=np.float64).reshape(-1, 1))

    def weights(self, theta: float) -> list[float]:
        """``[B_i(theta)]``, the weight of each stage at the fraction ``theta`` of the step."""
        return self.weight_matrix([theta])[0].tolist()

    @functools.cached_property
    def _matrix(self) -> np.ndarray:
        width = max(len(row) for row in self.coefficients)
        return np.array([[*row, *([0.0] * (width - len(row)))] for row in self.coefficients])

    @functools.cached_property
    def _derivative_matrix(self) -> np.ndarray:
        # theta^(p+1) becomes (p+1) theta^p.
        return self._matrix * np.arange(1, self._matrix.shape[1] + 1)


def _horner(coefficients: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``sum_p coefficients[i, p] theta[m]^p`` as ``(len(theta), rows)``, by Horner's rule: the same
    arithmetic for each entry, however many ``theta``."""
    values = np.zeros((len(theta), coefficients.shape[0]))
    for power in reversed(range(coefficients.shape[1])):
        values = values * theta + coefficients[:, power]
    return values


def _rows(polynomials: list[np.ndarray]) -> tuple[tuple[float, ...], ...]:
    """Coefficient rows from numpy polynomials (lowest power first) without a constant term."""
    width = max(len(p) for p in polynomials)
    rows = []
    for p in polynomials:
        full = np.zeros(width)
        full[: len(p)] = p
        if abs(full[0]) > 1e-14:
            raise ValueError("an interpolant weight must vanish at theta = 0")
        rows.append(tuple(float(v) for v in full[1:]))
    return tuple(rows)


def _tsit5() -> Interpolant:
    # B_i(theta) in the factored form of OrdinaryDiffEq's Tsit5 interpolation (Tsitouras 2011).
    theta = np.array([0.0, 1.0])
    square = P.polymul(theta, theta)
    polynomials = [
        -1.0530884977290216
        * P.polymul(
            P.polymul(theta, [-1.3299890189751412, 1.0]), [0.7139816917074209, -1.4364028541716351, 1.0]
        ),
        0.1017 * P.polymul(square, [1.2949852507374631, -2.1966568338249754, 1.0]),
        2.490627285651252793 * P.polymul(square, [1.57803468208092486, -2.38535645472061657, 1.0]),
        -16.54810288924490272
        * P.polymul(square, P.polymul([-1.21712927295533244, 1.0], [-0.61620406037800089, 1.0])),
        47.37952196281928122
        * P.polymul(square, P.polymul([-1.203071208372362603, 1.0], [-0.658047292653547382, 1.0])),
        -34.87065786149660974 * P.polymul(square, P.polymul([-1.2, 1.0], [-2.0 / 3.0, 1.0])),
        2.5 * P.polymul(square, P.polymul([-1.0, 1.0], [-0.6, 1.0])),
    ]
    return Interpolant("tsit5", _rows(polynomials), order=4)


def _dopri5(tableau: ButcherTableau) -> Interpolant:
    # Hairer's CONTD5: y + theta (D + (1 - theta) (S + theta (R + (1 - theta) Q))) with, per unit of
    # dt, D = sum b_i k_i = y1 - y, S = k1 - D, R = D - k7 - S and Q = sum d_i k_i.
    d = np.array(
        [
            -12715105075 / 11282082432,
            0.0,
            87487479700 / 32700410799,
            -10690763975 / 1880347072,
            701980252875 / 199316789632,
            -1453857185 / 822651844,
            69997945 / 29380423,
        ]
    )
    b = np.array(tableau.b)
    first = np.eye(7)[0]
    last = np.eye(7)[6]
    increment = b
    slope = first - increment
    curvature = increment - last - slope
    theta = [0.0, 1.0]
    one_minus = [1.0, -1.0]
    basis = [
        theta,
        P.polymul(theta, one_minus),
        P.polymul(P.polymul(theta, theta), one_minus),
        P.polymul(P.polymul(theta, theta), P.polymul(one_minus, one_minus)),
    ]
    polynomials = [
        P.polyadd(
            P.polyadd(increment[i] * np.array(basis[0]), slope[i] * basis[1]),
            P.polyadd(curvature[i] * basis[2], d[i] * basis[3]),
        )
        for i in range(7)
    ]
    return Interpolant("dopri5", _rows(polynomials), order=4)


# dopri8's B_i(theta): coefficients of theta^1 .. theta^7 per stage, derived as the module docstring says.
_DOPRI8_DENSE = (
    (
        1.0,
        -6.382642995140042,
        17.656209915907645,
        -23.170378204642127,
        12.406645375457629,
        0.2784516130714878,
        -1.7465382135130643,
    ),
    (),  # b_i = 0: a zero weight at every theta
    (),  # b_i = 0: a zero weight at every theta
    (),  # b_i = 0: a zero weight at every theta
    (),  # b_i = 0: a zero weight at every theta
    (
        0.0,
        -4.374151227384173,
        29.807994009170798,
        -59.92543917581205,
        34.88620607368768,
        12.254519180019779,
        -12.70458118829327,
    ),
    (
        0.0,
        9.614440140511153,
        -38.62125701266212,
        59.266659345489884,
        -33.90502048156143,
        -1.9019200748458265,
        5.786410890269519,
    ),
    (
        0.0,
        -1.22218418211538,
        10.444998655859328,
        -17.325377981199445,
        16.126492586663506,
        -11.021350256765004,
        3.7009318469604366,
    ),
    (
        0.0,
        1.2232007082229344,
        -14.036995677258012,
        29.598440525320406,
        -14.89552506184185,
        -14.29060958106136,
        11.641729472803423,
    ),
    (
        0.0,
        1.8863813419448916,
        -10.570174186805387,
        24.6768627181112,
        -27.33112116802257,
        18.104385435664643,
        -6.10577110997049,
    ),
    (
        0.0,
        -1.5720556950431774,
        11.386269051476976,
        -28.51170773627717,
        28.04855098726463,
        -7.139464118818916,
        -2.0534050060922198,
    ),
    (
        0.0,
        1.6936314012506695,
        -10.348800060926234,
        19.533966908538986,
        -6.599599790280974,
        -14.142424678873459,
        9.625116681538149,
    ),
    (
        0.0,
        -2.299105421261322,
        14.7679224232302,
        -25.566653132087804,
        -0.34944520488190656,
        31.572687219413034,
        -17.875405884412203,
    ),
    (
        0.0,
        1.4324859290144456,
        -10.486167117993196,
        21.423626732558123,
        -8.387183316484716,
        -13.714274737804377,
        9.73151251070972,
    ),
)


def hermite(tableau: ButcherTableau) -> Interpolant:
    """The cubic Hermite interpolant of ``tableau`` through ``y, y1, f(t, y), f(t + dt, y1)``.

    With ``h01 = 3 theta^2 - 2 theta^3``, ``h10 = theta - 2 theta^2 + theta^3`` and
    ``h11 = theta^3 - theta^2``: ``y(theta) = y + h01 (y1 - y) + dt (h10 f0 + h11 f1)`` and
    ``y1 - y = dt sum_i b_i k_i``, so ``B_i = h01 b_i + h10 [i = 0] + h11 [i = f1]``. ``f1`` is the
    FSAL stage of an FSAL tableau, else an extra stage.
    """
    h01 = np.array([0.0, 0.0, 3.0, -2.0])
    h10 = np.array([0.0, 1.0, -2.0, 1.0])
    h11 = np.array([0.0, 0.0, -1.0, 1.0])
    n = tableau.n_stages + (0 if tableau.fsal else 1)
    b = [*tableau.b, 0.0] if not tableau.fsal else list(tableau.b)
    polynomials = [b[i] * h01 for i in range(n)]
    polynomials[0] = polynomials[0] + h10
    polynomials[n - 1] = polynomials[n - 1] + h11
    return Interpolant(
        tableau.name, _rows(polynomials), order=min(3, tableau.order), extra_stage=not tableau.fsal
    )


DENSE_OUTPUTS: dict[ButcherTableau, Interpolant] = {
    TSIT5: _tsit5(),
    DOPRI5: _dopri5(DOPRI5),
    DOPRI8: Interpolant("dopri8", _DOPRI8_DENSE, order=5),
}
"""Each pair's own dense output, keyed by its tableau: where a pair's interpolant is registered
(``DENSE_OUTPUTS[tableau] = Interpolant(...)``, a user-made tableau's too). A tableau without an
entry, or of a registered pair's name with other fields, is interpolated by cubic :func:`hermite`
(third order: a higher-order pair's interpolated outputs, ``Solution.evaluate`` and event times
are then far less accurate than its steps)."""

_hermite_of = functools.cache(hermite)


def get_interpolant(method: str | ButcherTableau) -> Interpolant:
    """The dense output of a method (by name or tableau): the pair's own where :data:`DENSE_OUTPUTS`
    has one (``tsit5``, ``dopri5``, ``dopri8``), else cubic Hermite."""
    tableau = get_tableau(method)
    own = DENSE_OUTPUTS.get(tableau)
    if own is None:
        return _hermite_of(tableau)
    return _registered(tableau, own)


@functools.cache
def _registered(tableau: ButcherTableau, own: Interpolant) -> Interpolant:
    """``own``, the interpolant :data:`DENSE_OUTPUTS` holds for ``tableau``, if it fits it: a row per
    stage (and the extra one), ending the step on its solution (``B_i(1) = b_i``) and consistent
    (``sum_i B_i(theta) = theta``); else a ``ValueError`` (a typo there would silently change every
    output read between steps)."""
    where = f"DENSE_OUTPUTS: the interpolant of tableau {tableau.name!r}"
    if own.n_stages != tableau.n_stages + own.extra_stage:
        raise ValueError(
            f"{where} has {own.n_stages} rows, but the tableau has {tableau.n_stages} stages"
            + (" and the extra one" if own.extra_stage else "")
        )
    b = np.array([*tableau.b, *([0.0] * own.extra_stage)])
    at_end = np.array(own.weights(1.0))
    tolerance = 1e-10 * max(1.0, float(np.abs(b).max()))
    if np.abs(at_end - b).max() > tolerance:
        raise ValueError(
            f"{where} does not end the step on its solution: B_i(1) = {at_end.tolist()}, the tableau's "
            f"b = {b.tolist()}"
        )
    if abs(sum(own.weights(0.5)) - 0.5) > tolerance:
        raise ValueError(
            f"{where} is not consistent: its weights at theta = 0.5 sum to {sum(own.weights(0.5))}"
        )
    return own
