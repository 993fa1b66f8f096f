"""The step-size controller's factors and the tableaus' data, checked against values worked out by
hand from :class:`local_reg.PIController`'s docstring and against independent computations (the
stability polynomial of a tableau), where the solver-level tests cannot tell the difference."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from local_reg import TABLEAUS, ButcherTableau, PIController, odeint

# --- PIController: the factors from its docstring, with numbers chosen to come out exact -----------


def test_accept_factor_is_the_documented_pi_formula():
    # safety * EEst_n ** -beta1 * EEst_{n-1} ** beta2 with beta1 = 1/2, beta2 = 1/4, safety = 0.8:
    # 0.8 * 0.25 ** -0.5 * 0.0625 ** 0.25 = 0.8 * 2 * 0.5 = 0.8; with EEst_{n-1} = 1: 0.8 * 4 = 3.2.
    controller = PIController(safety=0.8, beta1=0.5, beta2=0.25)
    assert controller.gains(5) == (0.5, 0.25)
    assert controller.accept_factor(0.25, 0.0625, 5, after_rejection=False) == pytest.approx(0.8, rel=1e-14)
    assert controller.accept_factor(1 / 16, 1.0, 5, after_rejection=False) == pytest.approx(3.2, rel=1e-14)


def test_default_gains_follow_the_order():
    # beta2 = 0.2 / order, beta1 = 1 / order - 0.75 * beta2: at order 4, (0.25 - 0.0375, 0.05).
    assert PIController().gains(4) == pytest.approx((0.2125, 0.05), rel=1e-14)
    # At order 2 with EEst_n = 2 ** -8 and EEst_{n-1} = 2 ** -4: beta1 = 0.425, beta2 = 0.1, so
    # 0.9 * 2 ** (8 * 0.425 - 4 * 0.1) = 0.9 * 2 ** 3 = 7.2.
    factor = PIController().accept_factor(2.0**-8, 2.0**-4, 2, after_rejection=False)
    assert factor == pytest.approx(7.2, rel=1e-14)


def test_accept_factor_is_clipped_to_min_and_max_factor():
    controller = PIController(safety=0.8, beta1=0.5, beta2=0.25)
    # 0.8 * 1 ** -0.5 * 1e-4 ** 0.25 = 0.08: below min_factor 0.2.
    assert controller.accept_factor(1.0, 1e-4, 5, after_rejection=False) == 0.2
    assert PIController(min_factor=0.5, beta1=0.5, beta2=0.25).accept_factor(1.0, 1e-4, 5, False) == 0.5
    # 0.8 * (1e-8) ** -0.5 = 8000: above max_factor 10.
    assert controller.accept_factor(1e-8, 1.0, 5, after_rejection=False) == 10.0


def test_after_a_rejection_the_step_may_not_grow_even_at_zero_error():
    controller = PIController()
    assert controller.accept_factor(0.0, 1.0, 5, after_rejection=False) == 10.0
    assert controller.accept_factor(0.0, 1.0, 5, after_rejection=True) == 1.0
    assert controller.accept_factor(1e-12, 1.0, 5, after_rejection=True) == 1.0


def test_reject_factor_is_the_integral_part_clipped_at_min_factor():
    controller = PIController()
    # 0.9 * 32 ** (-1 / 5) = 0.45; at order 3: 0.9 * 8 ** (-1 / 3) = 0.45.
    assert controller.reject_factor(32.0, 5) == pytest.approx(0.45, rel=1e-14)
    assert controller.reject_factor(8.0, 3) == pytest.approx(0.45, rel=1e-14)
    assert PIController(safety=0.5).reject_factor(32.0, 5) == pytest.approx(0.25, rel=1e-14)
    assert controller.reject_factor(1e10, 5) == 0.2
    assert controller.reject_factor(math.inf, 5) == controller.reject_factor(math.nan, 5) == 0.2


def test_the_closed_ends_of_the_documented_option_ranges_are_allowed():
    # safety in (0, 1]: 1 is allowed; beta2 = 0 is integral control.
    assert PIController(safety=1.0).accept_factor(1.0, 1.0, 5, after_rejection=False) == pytest.approx(1.0)
    integral = PIController(beta2=0.0)
    assert integral.gains(5) == (0.2, 0.0)
    # No memory of the previous error: 0.9 * 2 ** (-5 * -0.2) = 1.8 whatever EEst_{n-1} is.
    assert integral.accept_factor(2.0**-5, 1e-3, 5, after_rejection=False) == pytest.approx(1.8, rel=1e-14)


# --- Tableaus ----------------------------------------------------------------------------------------


def _stability_boundary(tableau: ButcherTableau) -> float:
    """Where the stability polynomial R(z) = 1 + sum_k z^k b A^(k-1) 1 first leaves |R| <= 1 along
    the negative real axis, from the coefficients alone."""
    n = tableau.n_stages
    a = np.zeros((n, n))
    for i, row in enumerate(tableau.a):
        a[i, :i] = row
    coefficients, power = [1.0], np.ones(n)
    for _ in range(n):
        coefficients.append(float(np.asarray(tableau.b) @ power))
        power = a @ power
    r_of_minus_s = np.polynomial.Polynomial(coefficients)(np.polynomial.Polynomial([0.0, -1.0]))
    roots = np.concatenate([(r_of_minus_s - 1).roots(), (r_of_minus_s + 1).roots()])
    real = roots[(np.abs(roots.imag) < 1e-9) & (roots.real > 1e-9)].real
    boundary = float(real.min())
    grid = np.linspace(0.0, boundary, 2001)
    assert np.all(np.abs(r_of_minus_s(grid)) <= 1.0 + 1e-9)
    return boundary


def test_the_stability_boundary_of_rk4_is_the_textbook_value():
    assert _stability_boundary(TABLEAUS["rk4"]) == pytest.approx(2.7853, abs=1e-4)


@pytest.mark.parametrize("name", [name for name, tableau in TABLEAUS.items() if tableau.stability_size])
def test_stability_sizes_are_the_real_stability_boundaries(name):
    # At or just below the boundary, so that a step at the stated size is stable: Tsit5's 3.5068 and
    # Dopri8's 5.1666 are their boundaries to five digits, Dopri5's 3.3 rounds 3.3066 down.
    boundary = _stability_boundary(TABLEAUS[name])
    assert boundary - 0.01 < TABLEAUS[name].stability_size <= boundary


def test_fsal_is_set_exactly_for_the_pairs_whose_last_stage_is_the_solution():
    fsal = {name for name, tableau in TABLEAUS.items() if tableau.fsal}
    assert fsal == {"tsit5", "dopri5", "dopri8", "bosh3"}


def test_a_last_stage_at_c_1_that_is_not_the_solution_is_not_fsal():
    # Heun's method with a third stage f(t + dt, y + dt * k2) and b_3 = 0: c[-1] == 1 and b[-1] == 0,
    # but the last row (0, 1) is not b[:-1] = (1/2, 1/2), so y1 is not the last stage's state.
    mine = ButcherTableau(
        name="heun3", c=(0.0, 1.0, 1.0), a=((), (1.0,), (0.0, 1.0)), b=(0.5, 0.5, 0.0), order=2
    )
    assert not mine.fsal
    y0 = torch.tensor([1.0], dtype=torch.float64)
    ours = odeint(lambda t, y: -y, y0, [0.0, 1.0], method=mine, step_size=0.01).ys
    # Heun on y' = -y multiplies by 1 - h + h^2 / 2 per step.
    assert float(ours[-1]) == pytest.approx((1 - 0.01 + 0.01**2 / 2) ** 100, rel=1e-12)


def _exact_order_conditions(a, b, c):
    """The 17 conditions up to order 5, written out (Hairer, Norsett, Wanner I, II.1), in exact
    arithmetic on Fractions: a list of (order, value, expected)."""
    n = len(b)

    def dot(u, v):
        return sum((x * y for x, y in zip(u, v, strict=True)), Fraction(0))

    def times(u, v):
        return [x * y for x, y in zip(u, v, strict=True)]

    def apply(u):
        return [dot(a[i], u[:i]) for i in range(n)]

    ac, c2 = apply(c), times(c, c)
    c3, ac2, aac = times(c2, c), apply(c2), apply(apply(c))
    return [
        (1, sum(b, Fraction(0)), Fraction(1)),
        (2, dot(b, c), Fraction(1, 2)),
        (3, dot(b, c2), Fraction(1, 3)),
        (3, dot(b, ac), Fraction(1, 6)),
        (4, dot(b, c3), Fraction(1, 4)),
        (4, dot(b, times(c, ac)), Fraction(1, 8)),
        (4, dot(b, ac2), Fraction(1, 12)),
        (4, dot(b, aac), Fraction(1, 24)),
        (5, dot(b, times(c3, c)), Fraction(1, 5)),
        (5, dot(b, times(c2, ac)), Fraction(1, 10)),
        (5, dot(b, times(c, ac2)), Fraction(1, 15)),
        (5, dot(b, times(c, aac)), Fraction(1, 30)),
        (5, dot(b, times(ac, ac)), Fraction(1, 20)),
        (5, dot(b, apply(c3)), Fraction(1, 20)),
        (5, dot(b, apply(times(c, ac))), Fraction(1, 40)),
        (5, dot(b, apply(ac2)), Fraction(1, 60)),
        (5, dot(b, apply(aac)), Fraction(1, 120)),
    ]


# The published rational coefficients, typed in from the papers: (c, a, b, b_hat, order).
_F = Fraction
_RATIONAL = {
    "dopri5": (
        [_F(0), _F(1, 5), _F(3, 10), _F(4, 5), _F(8, 9), _F(1), _F(1)],
        [
            [],
            [_F(1, 5)],
            [_F(3, 40), _F(9, 40)],
            [_F(44, 45), _F(-56, 15), _F(32, 9)],
            [_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)],
            [_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)],
            [_F(35, 384), _F(0), _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84)],
        ],
        [_F(35, 384), _F(0), _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84), _F(0)],
        [_F(5179, 57600), _F(0), _F(7571, 16695), _F(393, 640), _F(-92097, 339200), _F(187, 2100), _F(1, 40)],
        5,
    ),
    "bosh3": (
        [_F(0), _F(1, 2), _F(3, 4), _F(1)],
        [[], [_F(1, 2)], [_F(0), _F(3, 4)], [_F(2, 9), _F(1, 3), _F(4, 9)]],
        [_F(2, 9), _F(1, 3), _F(4, 9), _F(0)],
        [_F(7, 24), _F(1, 4), _F(1, 3), _F(1, 8)],
        3,
    ),
    "fehlberg2": (
        [_F(0), _F(1, 2), _F(1)],
        [[], [_F(1, 2)], [_F(1, 256), _F(255, 256)]],
        [_F(1, 512), _F(255, 256), _F(1, 512)],
        [_F(1, 256), _F(255, 256), _F(0)],
        2,
    ),
    "heun_euler": ([_F(0), _F(1)], [[], [_F(1)]], [_F(1, 2), _F(1, 2)], [_F(1), _F(0)], 2),
    "rk4": (
        [_F(0), _F(1, 2), _F(1, 2), _F(1)],
        [[], [_F(1, 2)], [_F(0), _F(1, 2)], [_F(0), _F(0), _F(1)]],
        [_F(1, 6), _F(1, 3), _F(1, 3), _F(1, 6)],
        None,
        4,
    ),
    "midpoint": ([_F(0), _F(1, 2)], [[], [_F(1, 2)]], [_F(0), _F(1)], None, 2),
    "euler": ([_F(0)], [[]], [_F(1)], None, 1),
}


@pytest.mark.parametrize("name", sorted(_RATIONAL))
def test_tableau_is_the_published_one_and_meets_its_order_exactly(name):
    """Each coefficient is the nearest float to the paper's fraction, the exact fractions meet
    every condition up to the stated order and not all of the next (up to 5 here), and the error
    weights are b - b_hat of the published embedded formula, which is exactly one order lower."""
    c, a, b, b_hat, order = _RATIONAL[name]
    tableau = TABLEAUS[name]
    assert tableau.order == order
    assert tableau.c == tuple(float(x) for x in c)
    assert tableau.b == tuple(float(x) for x in b)
    for row, exact in zip(tableau.a, a, strict=True):
        assert row == pytest.approx([float(x) for x in exact], rel=1e-15, abs=0)
    conditions = _exact_order_conditions(a, b, c)
    assert all(value == expected for k, value, expected in conditions if k <= order)
    if order < 5:
        assert any(value != expected for k, value, expected in conditions if k == order + 1)
    if b_hat is None:
        assert tableau.error_weights is None
        return
    weights = [float(x - y) for x, y in zip(b, b_hat, strict=True)]
    assert tableau.error_weights == pytest.approx(weights, rel=1e-14, abs=1e-17)
    embedded = _exact_order_conditions(a, b_hat, c)
    assert all(value == expected for k, value, expected in embedded if k < order)
    assert any(value != expected for k, value, expected in embedded if k == order)


@pytest.mark.parametrize(("name", "tolerance"), [("tsit5", 1e-13), ("dopri8", 1e-14)])
def test_float_tableaus_meet_the_written_out_conditions(name, tolerance):
    # The same 17 conditions on the stored floats (Tsit5's coefficients have no rational form, and
    # dopri8's published fractions are approximations): b to order 5 and b_hat = b - error_weights
    # to its order, tsit5's 4 and not 5 (dopri8's orders 6 to 8 are measured in test_solver.py:
    # global error like dt^8, its estimate like dt^8).
    tableau = TABLEAUS[name]
    c = [Fraction(x) for x in tableau.c]
    a = [[Fraction(x) for x in row] for row in tableau.a]
    b = [Fraction(x) for x in tableau.b]
    b_hat = [Fraction(x) - Fraction(e) for x, e in zip(tableau.b, tableau.error_weights, strict=True)]
    for _, value, expected in _exact_order_conditions(a, b, c):
        assert float(value) == pytest.approx(float(expected), abs=tolerance)
    embedded = _exact_order_conditions(a, b_hat, c)
    embedded_order = tableau.order - 1
    assert all(
        abs(float(value - expected)) < tolerance for k, value, expected in embedded if k <= embedded_order
    )
    if embedded_order < 5:
        assert max(abs(float(value - expected)) for k, value, expected in embedded if k == 5) > 1e-4


def test_dopri8_is_torchdiffeqs_transcription_of_the_published_tableau():
    """Prince and Dormand's RK8(7)13M as torchdiffeq transcribed it from the same paper (its
    coefficients as nearest floats of the published fractions; torchdiffeq appends f(t + dt, y1) as
    a 14th stage, as we do): every coefficient equal to the bit."""
    theirs = getattr(pytest.importorskip("torchdiffeq._impl.dopri8"), "_DOPRI8_TABLEAU", None)
    if theirs is None:
        pytest.skip("this torchdiffeq keeps its dopri8 tableau elsewhere")
    ours = TABLEAUS["dopri8"]
    assert ours.c == (0.0, *theirs.alpha.tolist())
    for row, their_row in zip(ours.a[1:], theirs.beta, strict=True):
        assert row == tuple(their_row.tolist())
    assert ours.b == tuple(theirs.c_sol.tolist())
    assert ours.error_weights == tuple(theirs.c_error.tolist())


def test_a_pair_that_propagates_its_lower_order_solution_is_refused():
    """Classic RKF45 steps with its fourth-order solution: the controller's exponents, 1 / (order),
    and its error estimate, of order 5, disagree, and it once passed every check as order=4."""
    c = (0.0, 1 / 4, 3 / 8, 12 / 13, 1.0, 1 / 2)
    a = (
        (),
        (1 / 4,),
        (3 / 32, 9 / 32),
        (1932 / 2197, -7200 / 2197, 7296 / 2197),
        (439 / 216, -8.0, 3680 / 513, -845 / 4104),
        (-8 / 27, 2.0, -3544 / 2565, 1859 / 4104, -11 / 40),
    )
    b4 = (25 / 216, 0.0, 1408 / 2565, 2197 / 4104, -1 / 5, 0.0)
    b5 = (16 / 135, 0.0, 6656 / 12825, 28561 / 56430, -9 / 50, 2 / 55)
    lower_minus_higher = tuple(x - y for x, y in zip(b4, b5, strict=True))
    with pytest.raises(ValueError, match=r"'rkf45'.*error_weights.*order 4.*higher-order solution"):
        ButcherTableau(name="rkf45", c=c, a=a, b=b4, order=4, error_weights=lower_minus_higher)
    higher_minus_lower = tuple(-x for x in lower_minus_higher)
    fehlberg45 = ButcherTableau(name="fehlberg45", c=c, a=a, b=b5, order=5, error_weights=higher_minus_lower)
    assert fehlberg45.adaptive
    # The same weights with an order that understates b: not a swapped pair, and said so.
    with pytest.raises(
        ValueError, match=r"'fehlberg45': order=4 understates b, which reaches order 5.*order=5"
    ):
        ButcherTableau(name="fehlberg45", c=c, a=a, b=b5, order=4, error_weights=higher_minus_lower)
