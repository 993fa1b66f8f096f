"""The Brownian motion an SDE solve is driven by: its seed, and the checks a Brownian motion passed
in by the caller gets (the interval it covers up to rounding, its shape, that it is callable),
against the path's own increments."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
import torchsde

from local_reg import sdeint
from local_reg.sde.brownian import make_brownian, step_hint
from tests.problems import DecaySDE

DTYPE = torch.float64


def _final_state(generator: torch.Generator | None = None) -> torch.Tensor:
    y0 = torch.ones(4, 2, dtype=DTYPE)
    return sdeint(DecaySDE(), y0, [0.0, 1.0], step_size=0.25, generator=generator).ys[-1]


def test_the_generator_seeds_the_brownian_path() -> None:
    # The new BrownianInterval's seed is drawn from the generator (or torch's global one): the same
    # seed gives the same path and another seed another path.
    first = _final_state(torch.Generator().manual_seed(1))
    assert torch.equal(first, _final_state(torch.Generator().manual_seed(1)))
    assert not torch.allclose(first, _final_state(torch.Generator().manual_seed(2)))
    torch.manual_seed(5)
    global_first = _final_state()
    torch.manual_seed(5)
    assert torch.equal(global_first, _final_state())
    torch.manual_seed(6)
    assert not torch.allclose(global_first, _final_state())


class _UnitNoise(torch.nn.Module):
    """``dy = dW``: Euler--Maruyama gives ``y(t) = y0 + W(t) - W(t0)`` exactly."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(y)


@pytest.mark.parametrize(("end", "t1"), [(0.3, 0.1 + 0.2), (9e6, 3e7 * (0.1 + 0.2))])
def test_a_brownian_motion_covering_the_span_up_to_rounding_is_accepted(end: float, t1: float) -> None:
    # t1 is `end` computed in floating point, one rounding above it (relative 1e-16, but 2e-9
    # absolute at 9e6): the check must allow for that rounding at any magnitude.
    assert t1 > end
    bm = torchsde.BrownianInterval(0.0, end, size=(3, 1), dtype=DTYPE, entropy=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde notes the query one rounding past its end
        solution = sdeint(_UnitNoise(), torch.zeros(3, 1, dtype=DTYPE), [0.0, t1], step_size=end / 2, bm=bm)
        # W over the extra rounding is a few sqrt(2e-9) at most; compare with the path's own W(end).
        torch.testing.assert_close(solution.ys[-1], bm(0.0, end), rtol=0, atol=1e-3)


def test_a_brownian_motion_short_of_the_span_by_more_than_rounding_is_refused() -> None:
    bm = torchsde.BrownianInterval(0.0, 0.9995, size=(3, 1), dtype=DTYPE, entropy=3)
    with pytest.raises(ValueError, match=r"bm covers \[0.0, 0.9995\] but the solve needs \[0.0, 1.0\]"):
        sdeint(_UnitNoise(), torch.zeros(3, 1, dtype=DTYPE), [0.0, 1.0], step_size=0.25, bm=bm)


def test_a_non_callable_bm_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="bm must be a Brownian motion callable as bm"):
        sdeint(DecaySDE(), torch.ones(3, 1, dtype=DTYPE), [0.0, 1.0], bm=3.0)


def test_a_brownian_motion_of_the_wrong_shape_is_refused_up_front_naming_both_shapes() -> None:
    # A Brownian motion that says its shape is checked against the noise's when the solve is set
    # up, with a message naming both shapes (not only at its first increment).
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(3, 2), dtype=DTYPE, entropy=3)
    with pytest.raises(
        ValueError, match=r"bm has shape \(3, 2\), but y0 and the noise type need .* \(3, 1\)"
    ):
        sdeint(DecaySDE(), torch.ones(3, 1, dtype=DTYPE), [0.0, 1.0], step_size=0.25, bm=bm)


def test_a_reversed_brownian_motion_covers_its_base_interval_mirrored():
    # torchsde's ReverseBrownian answers bm(ta, tb) with base(-tb, -ta): over a base on [0, 1] it
    # covers [-1, 0]. A solve there is driven by the base's increment over [0, 1]; a solve over
    # [0, 1] would query the base outside its interval (torchsde then returns zero increments).
    base = torchsde.BrownianInterval(0.0, 1.0, size=(3, 1), dtype=DTYPE, entropy=1)
    reversed_bm = torchsde.ReverseBrownian(base)
    y0 = torch.zeros(3, 1, dtype=DTYPE)
    solution = sdeint(_UnitNoise(), y0, [-1.0, 0.0], step_size=0.25, bm=reversed_bm)
    torch.testing.assert_close(solution.ys[-1] - y0, base(0.0, 1.0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"bm covers \[-1.0, 0.0\] but the solve needs \[0.0, 1.0\]"):
        sdeint(_UnitNoise(), y0, [0.0, 1.0], step_size=0.25, bm=reversed_bm)


def _tree_nodes_and_depth(bm: torchsde.BrownianInterval) -> tuple[int, int]:
    """Nodes and depth of the interval's dependency tree, from its public printout (a line a
    node, indented by its depth)."""
    printout = io.StringIO()
    with contextlib.redirect_stdout(printout):
        bm.display_binary_tree()
    lines = printout.getvalue().splitlines()
    return len(lines), max(len(line) - len(line.lstrip(" ")) for line in lines)


def test_a_new_brownian_interval_gets_a_step_hint_of_a_hundredth_of_the_span() -> None:
    # Over [0.5, 2.5], not [0, 1]: a hint that ignored the span's length would show.
    bm = make_brownian(None, 0.5, 2.5, (3, 2), torch.zeros((), dtype=DTYPE))
    assert bm.dt == pytest.approx((2.5 - 0.5) / 100, rel=1e-12), (
        f"the new BrownianInterval's step hint is dt={bm.dt}, not (t1 - t0) / 100 = 0.02: without "
        "a hint torchsde refines its dependency tree down to the latest step it is queried with, "
        "and the hint sets the tree's depth (a finer one, more levels; a coarser one, a slower "
        "backward pass)"
    )


def test_tiny_steps_leave_a_new_brownian_intervals_tree_a_few_levels_deep() -> None:
    # An adaptive solve approaching a singularity queries ever shorter steps. With the hint the tree
    # is fixed when the interval is made (pieces of 0.8 * 45 * 0.02 = 0.72, i.e. 4 over [0.5, 2.5]),
    # and a query only splits the piece it falls in. Without it torchsde, after 100 queries of
    # warm-up, cuts the whole span into pieces of 36 times the average step: over 16,000 nodes
    # here (0.2 s), and exponentially many as the steps shrink towards a singularity (the solve
    # hangs); a hint 10 times too fine gives 63 nodes before any query.
    bm = make_brownian(None, 0.5, 2.5, (3, 2), torch.zeros((), dtype=DTYPE))
    for _ in range(150):
        bm(1.0, 1.0 + 1e-5)
    nodes, depth = _tree_nodes_and_depth(bm)
    assert nodes <= 16 and depth <= 4, (
        f"150 queries of a step of 1e-5 grew the Brownian tree to {nodes} nodes, {depth} levels "
        "deep: make_brownian's step hint dt = (t1 - t0) / 100 should keep it at the 7 nodes it is "
        "made with plus the few the query splits off"
    )


def test_a_fixed_step_shorter_than_a_hundredth_of_the_span_is_the_intervals_step_hint() -> None:
    # With the span's hundredth alone, 16,000 fixed steps made chains 4,000 splits deep in
    # torchsde's tree, each new split costing more (benchmarks/sde_long_solves.py).
    assert step_hint(0.0, 2.0, None) == 0.02
    assert step_hint(0.0, 2.0, 0.5) == 0.02  # a hundredth of the span at most
    assert step_hint(0.0, 2.0, 1e-3) == 1e-3
    assert step_hint(0.0, 2.0, 1e-9, max_steps=1000) == 2e-3  # at least span / max_steps
    # A step at or above the hundredth draws the path it drew before: the interval made with the
    # span's hundredth and the entropy the generator gives.
    y0 = torch.ones(4, 2, dtype=DTYPE)

    def solve(step_size: float, hundredth: bool) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        bm = None
        if hundredth:
            entropy = int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(3)))
            bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(4, 2), dtype=DTYPE, entropy=entropy, dt=0.01)
            generator = None
        return sdeint(DecaySDE(), y0, [0.0, 1.0], step_size=step_size, generator=generator, bm=bm).ys[-1]

    assert torch.equal(solve(0.02, hundredth=False), solve(0.02, hundredth=True))
    assert not torch.equal(solve(1e-3, hundredth=False), solve(1e-3, hundredth=True))


@pytest.mark.parametrize("step_size", [1e-3, 0.05])
def test_a_model_and_sdeint_with_one_seed_and_fixed_step_draw_one_path(step_size: float) -> None:
    # sdeint took the fixed step as its interval's step hint while the model's solve kept the
    # span's hundredth: the same seed drew two paths below a hundredth of the span.
    import local_reg

    y0 = torch.ones(3, 2, dtype=DTYPE)
    times = torch.tensor([0.0, 1.0], dtype=DTYPE)
    alone = sdeint(DecaySDE(), y0, times, step_size=step_size, generator=torch.Generator().manual_seed(0))
    model = local_reg.Regularized(
        DecaySDE(), None, options={"step_size": step_size}, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(model.eval()(y0, times), alone.ys)
