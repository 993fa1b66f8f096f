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
