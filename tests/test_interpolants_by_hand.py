"""The dense-output interpolants' weights computed by hand from the documented formulas (the
coefficient convention, the cubic Hermite's basis); their orders are measured in test_dense.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from local_reg import TABLEAUS, Interpolant, get_interpolant

DTYPE = torch.float64


def test_ragged_coefficient_rows_are_padded_with_the_higher_powers() -> None:
    # coefficients[i][p] is the coefficient of theta^(p + 1): a short row has no higher powers, so
    # B_0 = theta and B_1 = 2 theta^2 - theta^3, by hand.
    interpolant = Interpolant("mine", ((1.0,), (0.0, 2.0, -1.0)), order=1)
    thetas = [0.5, 2.0]
    expected = [[theta, 2 * theta**2 - theta**3] for theta in thetas]
    np.testing.assert_allclose(interpolant.weight_matrix(thetas), expected, rtol=0, atol=1e-15)
    assert interpolant.weights(0.5) == pytest.approx(expected[0], abs=1e-15)


def _hermite_weights(b: list[float], theta: float) -> list[float]:
    # The docstring of interpolants.hermite: B_i = h01 b_i + h10 [i = 0] + h11 [i = last].
    h01 = 3 * theta**2 - 2 * theta**3
    h10 = theta - 2 * theta**2 + theta**3
    h11 = theta**3 - theta**2
    weights = [h01 * bi for bi in b]
    weights[0] += h10
    weights[-1] += h11
    return weights


@pytest.mark.parametrize(("builtin", "fields_of"), [("tsit5", "bosh3"), ("dopri5", "rk4")])
def test_a_custom_tableau_with_a_builtin_name_gets_the_cubic_hermite(builtin: str, fields_of: str) -> None:
    # Only the builtin tsit5 and dopri5 tableaus have their own dense output; a different tableau
    # that merely shares the name must get the cubic Hermite of its own stages.
    mine = dataclasses.replace(TABLEAUS[fields_of], name=builtin)
    assert mine != TABLEAUS[builtin]
    interpolant = get_interpolant(mine)
    b = list(mine.b) if mine.fsal else [*mine.b, 0.0]
    assert interpolant.n_stages == len(b)
    assert interpolant.extra_stage is (not mine.fsal)
    for theta in (0.3, 0.8):
        np.testing.assert_allclose(interpolant.weights(theta), _hermite_weights(b, theta), rtol=0, atol=1e-14)


@pytest.mark.parametrize("theta", [0.1, 0.37, 0.5, 0.82, 1.0])
def test_dopri8_dense_output_meets_every_condition_to_order_5_at_each_theta(theta: float) -> None:
    # Hairer, Norsett, Wanner I, II.6, Thm. 6.1: a continuous extension of order 5 meets
    # sum_i B_i(theta) Phi_i(tree) = theta^order(tree) / gamma(tree) for every tree to order 5: the
    # 17 conditions written out in test_controller_tableaus_by_hand.py, with B(theta) for b.
    from tests.test_controller_tableaus_by_hand import _exact_order_conditions

    tableau = TABLEAUS["dopri8"]
    weights = get_interpolant("dopri8").weights(theta)
    a = [list(row) for row in tableau.a]
    for order, value, expected in _exact_order_conditions(a, weights, list(tableau.c)):
        assert float(value) == pytest.approx(float(expected) * theta**order, abs=1e-13)


def test_dopri8_dense_output_has_the_step_ends_slopes() -> None:
    # B_i'(0) picks f(t, y) (the first stage) and B_i'(1) f(t + dt, y1) (the FSAL stage), so the
    # dense output is continuously differentiable across steps; B(1) = b is checked in test_dense.py.
    coefficients = get_interpolant("dopri8").coefficients
    slope_at_0 = [row[0] if row else 0.0 for row in coefficients]
    slope_at_1 = [sum((p + 1) * value for p, value in enumerate(row)) for row in coefficients]
    np.testing.assert_allclose(slope_at_0, np.eye(14)[0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(slope_at_1, np.eye(14)[13], rtol=0, atol=1e-12)
