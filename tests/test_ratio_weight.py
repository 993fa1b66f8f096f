"""The weight normalized by the measured gradient ratio (``RatioWeight``)."""

from __future__ import annotations

import math

import pytest
import torch

from local_reg import GradientRatio, LocallyRegularized, RatioWeight
from local_reg.experiments.methods import weight_schedule, weight_text
from local_reg.experiments.runner import RunSpec
from local_reg.experiments.settings import SettingsError
from tests.problems import failing_backward

DTYPE = torch.float64
T = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)


class _Field(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers = (torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        self.net = torch.nn.Sequential(*layers).to(DTYPE)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _model(weight: RatioWeight, seed: int = 0, gradient: str = "direct") -> LocallyRegularized:
    # A fixed generator: every forward pass draws the same t_reg sequence, so runs can be compared.
    return LocallyRegularized(
        _Field(seed),
        weight=weight,
        rtol=1e-6,
        atol=1e-6,
        gradient=gradient,
        probe="initial",
        generator=torch.Generator().manual_seed(seed),
    )


def _y0() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3)


def _task_loss(ys: torch.Tensor) -> torch.Tensor:
    return (ys[-1] - 0.5).pow(2).mean()


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def _spied(every: int, monkeypatch) -> tuple[LocallyRegularized, list[torch.Tensor], list]:
    """A model whose ``RatioWeight(1.0, every=every)`` measures over its parameters, the parameters,
    and the list of the gradient norms the weight observes."""
    model = _model(RatioWeight(1.0))
    parameters = list(model.parameters())
    model.weight = RatioWeight(1.0, every=every, parameters=parameters)
    observed: list = []
    monkeypatch.setattr(model.weight, "observe_gradients", lambda *norms: observed.append(norms))
    return model, parameters, observed


def _iteration(model: LocallyRegularized, optimizer: torch.optim.Optimizer | None = None) -> float:
    """One training iteration with the documented call pattern; the measured ratio."""
    loss = _task_loss(model(_y0(), T))
    model.zero_grad(set_to_none=True)
    ratio = model.weight.backward(loss, model.reg_loss, model.parameters())
    if optimizer is not None:
        optimizer.step()
    model.weight.step()
    return ratio


def test_ratio_and_weight_against_separately_computed_gradients():
    model = _model(RatioWeight(0.3, beta=0.0, initial=0.01))
    ys = model(_y0(), T)
    loss = _task_loss(ys)
    params = list(model.parameters())
    task_norm = _norm(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
    # The unweighted penalty's gradient: that of reg_loss / w.
    unweighted = model.reg_loss / 0.01
    penalty_norm = _norm(torch.autograd.grad(unweighted, params, retain_graph=True, allow_unused=True))
    ratio = model.weight.backward(loss, model.reg_loss, params)
    assert ratio == pytest.approx(0.01 * penalty_norm / task_norm, rel=1e-10)
    model.weight.step()
    assert model.weight.last_ratio == pytest.approx(ratio, rel=1e-12)
    # beta = 0: the new weight is exactly the one that makes the measured ratio the target.
    assert model.weight() == pytest.approx(0.3 * task_norm / penalty_norm, rel=1e-10)
    # The same parameters and the same draw of t_reg, at the new weight: the ratio is the target.
    model.generator.manual_seed(0)
    model.zero_grad(set_to_none=True)
    loss = _task_loss(model(_y0(), T))
    model.weight.iteration = 0  # due again
    assert model.weight.backward(loss, model.reg_loss, params) == pytest.approx(0.3, rel=1e-8)


def test_weight_backward_measures_its_own_pass_over_accumulated_gradients():
    """``weight.backward`` took ``.grad`` less the penalty's gradient as the task's: with an earlier
    micro-batch's gradients in ``.grad`` it measured 0.25 where the pass's ratio was 0.47."""
    model = _model(RatioWeight(0.3, beta=0.0, initial=0.01))
    params = list(model.parameters())
    model.zero_grad(set_to_none=True)
    _task_loss(model(_y0(), T)).backward()  # an earlier micro-batch, without the penalty
    model.generator.manual_seed(1)
    loss = _task_loss(model(_y0() * 0.5, T))
    penalty_norm = _norm(torch.autograd.grad(model.reg_loss, params, retain_graph=True, allow_unused=True))
    task_norm = _norm(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
    assert model.weight.backward(loss, model.reg_loss, params) == pytest.approx(
        penalty_norm / task_norm, rel=1e-10
    )
    # The micro-batch's gradients were still accumulated into .grad.
    assert all(p.grad is not None for p in params)


def test_weight_backward_names_a_task_loss_of_several_values():
    model = _model(RatioWeight(0.3))
    ys = model(_y0(), T)
    with pytest.raises(
        ValueError, match=r"^task_loss must be one value \(a 0-dim tensor\), got shape \(4, 3\)"
    ):
        model.weight.backward((ys[-1] - 0.5).pow(2), model.reg_loss, model.parameters())


@pytest.mark.parametrize("initial, direction", [(1e-5, 1), (10.0, -1)])
def test_weight_moves_the_ratio_toward_the_target_from_either_side(initial, direction):
    target = 0.2
    model = _model(RatioWeight(target, beta=0.5, initial=initial))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios, weights = [], [model.weight()]
    for _ in range(12):
        ratios.append(_iteration(model, optimizer))
        weights.append(model.weight())
    # Below the target the weight rises, above it falls; then the ratio stays near the target.
    assert (ratios[0] < target) == (direction > 0)
    assert direction * (weights[1] - weights[0]) > 0
    assert all(abs(math.log(r / target)) < 0.3 for r in ratios[1:])
    assert abs(math.log(ratios[-1] / target)) < abs(math.log(ratios[0] / target))


def test_weight_stays_within_its_bounds():
    high = _model(RatioWeight(1e3, beta=0.0, initial=0.1, w_max=0.5))
    low = _model(RatioWeight(1e-9, beta=0.0, initial=0.1, w_min=0.05))
    for _ in range(3):
        _iteration(high)
        _iteration(low)
        assert high.weight() == 0.5 and low.weight() == 0.05


def test_measures_only_every_few_iterations():
    model = _model(RatioWeight(0.2, every=3, beta=0.0))
    ratios = [_iteration(model) for _ in range(7)]
    assert [not math.isnan(r) for r in ratios] == [True, False, False, True, False, False, True]


def test_state_dict_resumes_exactly():
    def run(model: LocallyRegularized, n: int) -> list[float]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        out = []
        for _ in range(n):
            _iteration(model, optimizer)
            out.append(model.weight())
        return out

    whole = run(_model(RatioWeight(0.2, every=2, beta=0.7)), 6)
    first = _model(RatioWeight(0.2, every=2, beta=0.7))
    run(first, 3)
    resumed = _model(RatioWeight(0.2, every=2, beta=0.7), seed=1)  # other weights, other generator
    resumed.load_state_dict(first.state_dict())
    assert resumed.weight.state_dict() == first.weight.state_dict()
    assert run(resumed, 3) == pytest.approx(whole[3:], rel=1e-12)
    assert resumed.weight.iteration == 6
    bad = {**first.weight.state_dict(), "weight": 1e9}
    with pytest.raises(ValueError, match="weight"):
        RatioWeight(0.2).load_state_dict(bad)
    with pytest.raises(ValueError, match="missing"):
        RatioWeight(0.2).load_state_dict({"iteration": 0})


def test_stats_show_the_last_measured_ratio():
    model = _model(RatioWeight(0.2))
    model(_y0(), T)
    assert model.stats.grad_ratio is None  # nothing measured yet
    ratio = _iteration(model)
    model(_y0(), T)
    assert model.stats.grad_ratio == pytest.approx(ratio, rel=1e-12)
    # Other schedules measure nothing.
    plain = LocallyRegularized(_Field(), weight=0.5)
    plain(_y0(), T)
    assert plain.stats.grad_ratio is None


def test_uninformative_measurements_are_skipped():
    weight = RatioWeight(0.2, beta=0.0, initial=0.01)
    for penalty, task in [(0.0, 1.0), (math.nan, 1.0), (1.0, math.inf)]:
        weight.observe_gradients(penalty, task)
        weight.step()
    assert weight() == 0.01 and weight.last_ratio is None
    weight.observe_gradients(0.01, 0.5)  # the unweighted penalty's gradient: 1.0
    weight.step()
    assert weight() == pytest.approx(0.1) and weight.last_ratio == pytest.approx(0.02)


def measured_weights(penalty_norms, task_norms, floor=0.0, max_rise=None):
    """A ``RatioWeight(1.0, beta=0, initial=0.01)`` measured once per pair of unweighted penalty and
    task gradient norms (no averaging): the weight and its values after each measurement."""
    weight = RatioWeight(1.0, beta=0.0, initial=0.01, max_rise=max_rise, floor=floor)
    out = []
    for penalty, task in zip(penalty_norms, task_norms, strict=True):
        weight.observe_gradients(penalty * weight(), task)  # the unweighted penalty's: penalty
        weight.step()
        out.append(weight())
    return weight, out


def test_max_rise_limits_each_rise_of_the_weight_and_no_fall():
    """With ``max_rise = g`` a measurement raises the weight by at most ``g`` (from ``initial``
    before the first), so a single draw of a tiny penalty gradient cannot send it to ``w_max``;
    falls follow the measurements at once. Without it the weight is the free ratio at every step.
    The limit needs no state of its own: a resumed weight continues the climb from its saved value."""

    # The free weight is task / penalty: 1, then 1000 (one draw 1000x smaller), 1, 0.001, 4.
    penalty_norms, task_norms = [1.0, 1e-3, 1.0, 1.0, 0.25], [1.0, 1.0, 1.0, 1e-3, 1.0]
    _, free = measured_weights(penalty_norms, task_norms)
    assert free == pytest.approx([1.0, 1e3, 1.0, 1e-3, 4.0])
    limited, climbing = measured_weights(penalty_norms, task_norms, max_rise=2.0)
    assert climbing == pytest.approx([0.02, 0.04, 0.08, 1e-3, 2e-3])
    assert "max_rise=2.0" in repr(limited) and "max_rise" not in repr(RatioWeight(0.2))
    resumed = RatioWeight(1.0, beta=0.0, max_rise=2.0)
    resumed.load_state_dict(limited.state_dict())
    resumed.observe_gradients(resumed(), 1.0)
    resumed.step()
    assert resumed() == pytest.approx(4e-3)
    # With a floor the weight holds at the largest it has set, which is the limited one (the free
    # weight 1 was never reached), as the task's gradient falls 1000-fold.
    _, held = measured_weights([1.0] * 4, [1.0, 1.0, 1e-3, 1e-3], floor=1.0, max_rise=2.0)
    assert held == pytest.approx([0.02, 0.04, 0.04, 0.04])
    for bad in (1.0, 0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_rise must be a finite factor above 1"):
            RatioWeight(1.0, max_rise=bad)
    with pytest.raises(TypeError, match="max_rise"):
        RatioWeight(1.0, max_rise="2")


def test_a_floor_keeps_the_weight_from_fading_with_the_task_gradient():
    """As the task's gradient vanishes (a separable classifier at 100% training accuracy) the
    unfloored weight follows it down; ``floor`` holds it at that fraction of its largest value
    (``1``: it never decreases) as far as the penalty's pull stays within the floor's share of the
    task's largest gradient: a weight made large by a small penalty gradient (a field initialized
    near zero) still comes down as that gradient grows, and a task gradient falling along with the
    penalty's (the penalty slowing the field) does not raise the weight above its largest. Both
    largest values are in the saved state."""

    ones = [1.0] * 5
    task_norms = [1.0, 2.0, 0.5, 0.01, 0.001]
    _, free = measured_weights(ones, task_norms)
    assert free == pytest.approx(task_norms)
    _, half = measured_weights(ones, task_norms, floor=0.5)
    assert half == pytest.approx([1.0, 2.0, 1.0, 1.0, 1.0])
    held, never_down = measured_weights(ones, task_norms, floor=1.0)
    assert never_down == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0])
    growing = [1e-3, 1e-2, 0.1, 1.0, 1.0]
    _, recovering = measured_weights(growing, ones, floor=1.0)
    assert recovering == pytest.approx([1e3, 100.0, 10.0, 1.0, 1.0])
    falling = [1.0, 0.5, 0.25, 0.125, 0.125]
    _, level = measured_weights(falling, falling, floor=1.0)
    assert level == pytest.approx(ones)
    assert "floor=1.0" in repr(held) and "floor" not in repr(RatioWeight(0.2))
    resumed = RatioWeight(1.0, beta=0.0, floor=1.0)
    resumed.load_state_dict(held.state_dict())
    resumed.observe_gradients(resumed(), 0.1)
    resumed.step()
    assert resumed() == pytest.approx(2.0)
    # With averaging the task's largest average is bias-corrected: a steady gradient is not floored.
    averaged = RatioWeight(1.0, beta=0.9, floor=1.0)
    for _ in range(30):
        averaged.observe_gradients(averaged(), 0.3)
        averaged.step()
        assert averaged() == pytest.approx(0.3)
    # A state saved before the largest values were kept takes the current ones.
    old = {k: v for k, v in averaged.state_dict().items() if k not in ("task_peak", "peak")}
    resumed = RatioWeight(1.0, beta=0.9, floor=1.0)
    resumed.load_state_dict(old)
    assert resumed.state_dict()["peak"] == pytest.approx(0.3)
    assert resumed.state_dict()["task_peak"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"floor": 1.5}, "floor"),
        ({"floor": -0.1}, "floor"),
        ({"target_ratio": 0.0}, "target_ratio"),
        ({"target_ratio": -1.0}, "target_ratio"),
        ({"every": 0}, "every"),
        ({"beta": 1.0}, "beta"),
        ({"initial": 10.0, "w_max": 1.0}, "initial"),
        ({"w_min": 0.0}, "w_min"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RatioWeight(**kwargs)


def test_negative_norms_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        RatioWeight().observe_gradients(-1.0, 1.0)


def test_cli_weight_spec():
    schedule = weight_schedule({"ratio": 0.3, "every": 5, "w_max": 10.0}, 100, "local-random")
    assert isinstance(schedule, RatioWeight)
    assert (schedule.target_ratio, schedule.every, schedule.w_max) == (0.3, 5, 10.0)
    assert weight_text({"ratio": 0.3, "every": 5}) == "ratio 0.3 (every=5)"
    floored = {"ratio": 0.2, "floor": 0.5}
    settings = RunSpec(
        "digits", "local-random", 0, "tiny", overrides={"weights.local-random": floored}
    ).settings()
    schedule = weight_schedule(settings["weights"]["local-random"], 100, "local-random")
    assert schedule.floor == 0.5
    # The default's weight along the flow, spelled out.
    flow = weight_schedule({"ratio": 0.03, "every": 10, "max_rise": 2}, 100, "local-random")
    assert (flow.target_ratio, flow.every, flow.max_rise, flow.floor) == (0.03, 10, 2.0, 0.0)
    for bad in (
        {"ratio": 0.3, "every": 1.5},
        {"ratio": 0.3, "rate": 1.0},
        {"ratio": 0.0},
        {"ratio": 0.2, "floor": 2},
        {"ratio": 0.2, "task_floor": 1.0},
    ):
        spec = RunSpec("digits", "local-random", 0, "tiny", overrides={"weights.local-random": bad})
        with pytest.raises(SettingsError, match="ratio"):
            spec.settings()


def test_cli_trains_with_a_ratio_weight_and_records_it(tmp_path):
    from local_reg.experiments.cli import main
    from local_reg.experiments.results import ResultsFile

    args = ["experiment", "tabular", "--size", "tiny", "--seeds", "1", "--no-progress"]
    args += ["--out", str(tmp_path)]
    spec = '{"ratio": 0.5, "initial": 0.001}'
    assert main([*args, "--methods", "local-random", "--set", f"weights.local-random={spec}"]) == 0
    (record,) = ResultsFile(tmp_path).load()
    history = record["history"]
    assert history["weight"][0] == [0, 0.001]
    assert history["grad_ratio"][0][0] == 0 and math.isfinite(history["grad_ratio"][0][1])
    assert "ratio 0.5" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "gradient", ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
)
def test_with_parameters_the_model_measures_in_the_usual_backward_pass(gradient):
    """``RatioWeight(parameters=...)``: ``(loss + reg_loss).backward()`` alone, without
    ``weight.step()``, gives the weight the same measurements and values as the explicit
    ``weight.backward`` and ``weight.step()``, whatever the gradient method (their backward passes'
    own ``autograd.grad`` calls are not taken for the measurement)."""
    explicit = _model(RatioWeight(0.5, beta=0.5, initial=0.01), gradient=gradient)
    automatic = _model(RatioWeight(0.5, beta=0.5, initial=0.01), gradient=gradient)  # the same model
    automatic.weight = RatioWeight(0.5, beta=0.5, initial=0.01, parameters=automatic.parameters())
    for _ in range(3):
        for model in (explicit, automatic):
            model.generator.manual_seed(0)  # the same draw of t_reg in both
        explicit_ratio = _iteration(explicit)
        loss = _task_loss(automatic(_y0(), T))
        automatic.zero_grad(set_to_none=True)
        (loss + automatic.reg_loss).backward()
        assert automatic.weight.last_ratio == pytest.approx(explicit_ratio, rel=1e-9)
        assert automatic.weight() == pytest.approx(explicit.weight(), rel=1e-9)
    assert automatic.weight.iteration == 0  # never stepped


def test_gradients_accumulated_before_the_measured_pass_do_not_count():
    """Micro-batches: a backward pass before the measured one leaves gradients in ``.grad``; the
    measurement reads the measured pass's own (the same ratio as with cleared gradients)."""
    ratios = []
    for accumulate in (False, True):
        model = _model(RatioWeight(0.5))
        model.weight = RatioWeight(0.5, parameters=model.parameters())
        if accumulate:
            sum(p.sum() for p in model.parameters()).backward()  # .grad = 1 everywhere
        loss = _task_loss(model(_y0(), T))
        (loss + model.reg_loss).backward()
        ratios.append(model.weight.last_ratio)
    assert ratios[0] is not None and ratios[1] == pytest.approx(ratios[0], rel=1e-12)


@pytest.mark.parametrize("scale", [0.25, 65536.0, 2.0**70])
def test_a_scaled_backward_pass_measures_the_same_ratio(scale):
    """A loss divided over micro-batches, or scaled by AMP's GradScaler: the task's gradient and the
    penalty's are scaled alike, so the measured ratio (and the weight it sets) is the unscaled one.
    2**70: a GradScaler's scale where nothing overflows (a CPU, bfloat16) doubles every 2000
    iterations; the float32 squares of its gradients overflowed, and nothing was measured."""
    dtype = torch.float32 if scale > 2.0**64 else DTYPE
    ratios, weights = [], []
    for factor in (1.0, scale):
        model = _model(RatioWeight(0.5)).to(dtype)
        model.weight = RatioWeight(0.5, parameters=model.parameters())
        loss = _task_loss(model(_y0().to(dtype), T.to(dtype)))
        (factor * (loss + model.reg_loss)).backward()
        ratios.append(model.weight.last_ratio)
        weights.append(model.weight())
    assert ratios[0] is not None and ratios[1] == pytest.approx(ratios[0], rel=1e-9)
    assert weights[1] == pytest.approx(weights[0], rel=1e-9)


def test_a_sparse_gradient_is_measured():
    """An embedding with sparse gradients among the measured parameters: the float64 norm of the
    gradients (torch.linalg.vector_norm) has no sparse kernel, and measuring failed. Its gradient
    is the task's alone (the penalty reads u(t_reg) detached): the task's norm is the field's
    and the embedding's together."""
    embedding = torch.nn.Embedding(10, 3, sparse=True).to(DTYPE)
    model = _model(RatioWeight(0.5))
    with_embedding = GradientRatio([*model.parameters(), *embedding.parameters()])
    field_only = GradientRatio(list(model.parameters()))
    ys = model(embedding(torch.tensor([1, 3, 3, 7])), T)
    with_embedding.before_backward(model.reg_loss)
    field_only.before_backward(model.reg_loss)
    (_task_loss(ys) + model.reg_loss).backward()
    assert embedding.weight.grad.is_sparse
    embedding_norm = float(embedding.weight.grad.to_dense().norm())
    ratio = with_embedding.after_backward()
    field_only.after_backward()
    assert with_embedding.penalty_norm == pytest.approx(field_only.penalty_norm, rel=1e-12)
    assert with_embedding.task_norm == pytest.approx(
        math.hypot(field_only.task_norm, embedding_norm), rel=1e-12
    )
    assert ratio == pytest.approx(with_embedding.penalty_norm / with_embedding.task_norm, rel=1e-12)


def test_a_backward_pass_without_the_penalty_measures_nothing():
    """The task loss alone backpropagated: its gradient less the penalty's would be no gradient at
    all, so nothing is measured (and the weight stays)."""
    model = _model(RatioWeight(0.5))
    model.weight = RatioWeight(0.5, parameters=model.parameters())
    weight = model.weight()
    _task_loss(model(_y0(), T)).backward()
    assert model.weight.last_ratio is None and model.weight() == weight


def test_a_logged_gradient_of_reg_loss_leaves_no_factor_for_a_pass_without_it():
    """``torch.autograd.grad`` through ``reg_loss`` (a user's logging) runs its tensor hook but no
    accumulator: a later backward pass without ``reg_loss`` must still measure nothing."""
    model = _model(RatioWeight(0.5))
    model.weight = RatioWeight(0.5, parameters=model.parameters())
    weight = model.weight()
    loss = _task_loss(model(_y0(), T))
    torch.autograd.grad(model.reg_loss, list(model.parameters()), retain_graph=True, allow_unused=True)
    loss.backward()
    assert model.weight.last_ratio is None and model.weight() == weight


def test_a_pass_with_the_penalty_alone_is_no_measurement():
    """``reg_loss.backward()`` before ``loss.backward()``: the first pass's task gradient is zero,
    which would set the weight to ``w_min``; it is skipped."""
    model = _model(RatioWeight(0.5))
    model.weight = RatioWeight(0.5, parameters=model.parameters())
    weight = model.weight()
    loss = _task_loss(model(_y0(), T))
    model.reg_loss.backward(retain_graph=True)
    loss.backward()
    assert model.weight.last_ratio is None and model.weight() == weight


@pytest.mark.parametrize("factor", [1.0, 1 / 3, 0.1])
def test_a_zero_task_gradient_is_no_measurement_however_the_pass_is_scaled(factor):
    """A task loss whose gradient is exactly zero (a hinge with every margin met) in a pass scaled by
    a factor that is not a power of two: the pass's gradient less the penalty's leaves only the
    subtraction's rounding, which must not read as a tiny task gradient (the weight would fall to
    ``w_min``)."""
    model = _model(RatioWeight(0.5))
    model.weight = RatioWeight(0.5, parameters=model.parameters())
    weight = model.weight()
    ys = model(_y0(), T)
    loss = torch.relu(-100.0 - ys[-1]).mean()
    (factor * (loss + model.reg_loss)).backward()
    assert model.weight.last_ratio is None and model.weight() == weight


def test_a_call_under_no_grad_before_the_backward_pass_leaves_the_measurement():
    """A logging call of the model under ``torch.no_grad()`` (in training mode) between the training
    call and its backward pass: not a training pass, so the measurement stays and counts once."""
    ratios = []
    for interleave in (False, True):
        model = _model(RatioWeight(0.5))
        model.weight = RatioWeight(0.5, parameters=model.parameters())
        loss = _task_loss(model(_y0(), T))
        reg_loss = model.reg_loss
        if interleave:
            with torch.no_grad():
                model(_y0(), T)
        (loss + reg_loss).backward()
        ratios.append(model.weight.last_ratio)
        assert model.weight.state_dict()["watched"] == 1
    assert ratios[0] is not None and ratios[1] == ratios[0]


@pytest.mark.parametrize("outputs", [(2,), (1, 2)], ids=["once", "twice"])
def test_a_head_under_a_reentrant_checkpoint_is_measured(outputs):
    """``torch.utils.checkpoint(head, ..., use_reentrant=True)`` backpropagates the head in a nested
    pass that ends before the field's gradients arrive: the measurement waits for the pass that
    carries ``reg_loss`` and gives the separately computed ratio. A head applied twice gets its
    gradient in two nested passes, whose sum is the task's (the first alone was counted: a ratio of
    5.3e-4 for 3.0e-4)."""
    from torch.utils.checkpoint import checkpoint

    def build(reentrant: bool | None):
        model = _model(RatioWeight(0.5))
        torch.manual_seed(1)
        head = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(DTYPE)
        parameters = [*model.parameters(), *head.parameters()]
        model.weight = RatioWeight(0.5, parameters=parameters)
        ys = model(_y0(), T)
        heads = [
            head(ys[i]) if reentrant is None else checkpoint(head, ys[i], use_reentrant=reentrant)
            for i in outputs
        ]
        return model, parameters, sum(out.pow(2).mean() for out in heads)

    model, parameters, loss = build(None)
    penalty = _norm(torch.autograd.grad(model.reg_loss, parameters, retain_graph=True, allow_unused=True))
    task = _norm(torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True))
    for reentrant in (False, True):
        model, parameters, loss = build(reentrant)
        (loss + model.reg_loss).backward()
        assert model.weight.last_ratio == pytest.approx(penalty / task, rel=1e-9)


def test_a_refused_state_leaves_the_weight_as_it_was():
    weight = RatioWeight(0.2, w_max=10.0)
    before = weight.state_dict()
    with pytest.raises(ValueError, match="lies outside"):
        weight.load_state_dict({**RatioWeight(initial=500.0).state_dict(), "iteration": 7})
    with pytest.raises(ValueError, match="is missing"):
        weight.load_state_dict({"iteration": 7, "weight": 1.0})
    assert weight.state_dict() == before


def test_a_head_applied_after_the_model_is_measured_too():
    """The documented pattern ``params = model's + head's``, the head applied to the model's output,
    the training step inside a function: the head's parameters are in no graph when the penalty is
    made, so their gradient accumulators are made later (a hook on one made earlier and dropped
    never ran, and the head's share of the task gradient was missing)."""
    model = _model(RatioWeight(0.5))
    head = torch.nn.Linear(3, 3, dtype=DTYPE)
    params = [*model.parameters(), *head.parameters()]
    model.weight = RatioWeight(0.5, parameters=params, initial=0.01)

    def train_step() -> float:
        loss = _task_loss(head(model(_y0(), T)))
        task_norm = _norm(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        penalty_norm = _norm(
            torch.autograd.grad(model.reg_loss, params, retain_graph=True, allow_unused=True)
        )
        (loss + model.reg_loss).backward()
        return penalty_norm / task_norm

    expected = train_step()
    assert model.weight.last_ratio == pytest.approx(expected, rel=1e-10)


def test_a_parameter_listed_twice_counts_once():
    """Concatenated parameter lists that share a tensor (a model's and its head's, say) measure
    the same ratio as the list of distinct tensors."""
    ratios = []
    for repeat in (1, 2):
        model = _model(RatioWeight(0.5))
        model.weight = RatioWeight(0.5, parameters=list(model.parameters()) * repeat)
        assert len(model.weight.parameters) == len(list(model.parameters()))
        loss = _task_loss(model(_y0(), T))
        (loss + model.reg_loss).backward()
        ratios.append(model.weight.last_ratio)
    assert ratios[0] is not None and ratios[1] == pytest.approx(ratios[0], rel=1e-12)


def test_a_watched_penalty_is_measured_once_and_a_newer_one_replaces_it(monkeypatch):
    model = _model(RatioWeight(1.0))
    model.weight = RatioWeight(1.0, parameters=model.parameters())
    observed = []
    monkeypatch.setattr(model.weight, "observe_gradients", lambda *norms: observed.append(norms))
    model(_y0(), T)  # a penalty never backpropagated: replaced by the next one
    loss = _task_loss(model(_y0(), T))
    (loss + model.reg_loss).backward()
    assert len(observed) == 1
    model.eval()  # no penalty in eval mode: nothing new is watched, and the old hook is gone
    _task_loss(model(_y0(), T)).backward()
    assert len(observed) == 1
    penalty_norm, task_norm = observed[0]
    assert math.isfinite(penalty_norm) and penalty_norm > 0 and math.isfinite(task_norm) and task_norm > 0


@pytest.mark.parametrize("calls", [1, 3, 65, 130])
def test_calls_before_one_backward_pass_are_measured_together(calls, monkeypatch):
    """A model called several times before one backward pass (a recurrent encoder, two batches, a
    weight shared by two blocks): the calls after the measuring one join it, and the pass's
    penalties together are compared with the rest of its gradient, as computed by hand. (The last
    call's penalty alone was measured, the others' read as task gradient: 0.42 for 0.80.) Past 64
    calls the penalties' gradients are summed as they come: a series of more than 64 intervals,
    one call each, never measured (the 65th call restarted the measurement in mid-pass)."""
    model, parameters, observed = _spied(every=10, monkeypatch=monkeypatch)
    tasks, penalties = [], []
    for _ in range(calls):
        tasks.append(_task_loss(model(_y0(), T)))
        penalties.append(model.reg_loss)
    task_by_hand = _norm(torch.autograd.grad(sum(tasks), parameters, retain_graph=True))
    penalty_by_hand = _norm(torch.autograd.grad(sum(penalties), parameters, retain_graph=True))
    (sum(tasks) + sum(penalties)).backward()
    assert len(observed) == 1
    assert observed[0] == pytest.approx((penalty_by_hand, task_by_hand), rel=1e-10)


@pytest.mark.parametrize(("factors", "measured"), [((0.75, 0.25), True), ((0.75,) * 64 + (0.25,) * 2, False)])
def test_calls_the_pass_weighs_differently_are_measured_as_it_weighs_them(factors, measured, monkeypatch):
    """Two batches of different sizes averaged per sample, ``(24 * L_a + 8 * L_b) / 32``: the pass
    puts a different factor on each call's penalty, and the weight never measured (it stayed at its
    initial value, with a warning that named another cause). The penalties, as the pass weighs
    them, are compared with the rest of its gradient, both over the factors' mean, as computed by
    hand. Calls past the 64th, whose gradients are summed, cannot be told apart: different factors
    there measure nothing."""
    model, parameters, observed = _spied(every=10, monkeypatch=monkeypatch)
    tasks, penalties = [], []
    for factor in factors:
        tasks.append(factor * _task_loss(model(_y0(), T)))
        penalties.append(factor * model.reg_loss)
    reference = sum(factors) / len(factors)
    task_by_hand = _norm(torch.autograd.grad(sum(tasks), parameters, retain_graph=True)) / reference
    penalty_by_hand = _norm(torch.autograd.grad(sum(penalties), parameters, retain_graph=True)) / reference
    (sum(tasks) + sum(penalties)).backward()
    if measured:
        assert len(observed) == 1
        assert observed[0] == pytest.approx((penalty_by_hand, task_by_hand), rel=1e-10)
    else:
        assert observed == []
        # The warning of a weight that never measured (at its hundredth call) names this cause.
        with pytest.warns(UserWarning, match=r"past 64 training calls in one backward pass, every call's"):
            sum(factor * (_task_loss(model(_y0(), T)) + model.reg_loss) for factor in factors).backward()
    assert model.weight._measurement is None


def test_a_finished_measurement_frees_its_penalty_gradients_without_a_collection():
    """A measurement's closures refer to it: the copy of the penalty's gradient it holds waited for
    Python's cycle collector (13 of them alive at once in a long loop); it goes when the pass ends."""
    import gc
    import weakref

    model = _model(RatioWeight(1.0))
    model.weight = RatioWeight(1.0, every=1, parameters=model.parameters())
    gc.collect()
    gc.disable()
    try:
        loss = _task_loss(model(_y0(), T)) + model.reg_loss
        parts = [weakref.ref(part) for part in model.weight._measurement["penalties"][0]["parts"]]
        loss.backward()
        assert model.weight._state["measured"] == 1
        del loss
        assert all(part() is None for part in parts)
    finally:
        gc.enable()


def test_a_pass_that_carries_a_penalty_made_before_the_measurement_is_no_measurement(monkeypatch):
    """A measurement opened by a call after others of its pass: the pass carries penalties made
    before it, which would read as the task's gradient, so it measures nothing, and the next call
    (the first of the next pass) measures, as computed by hand."""
    model, parameters, observed = _spied(every=2, monkeypatch=monkeypatch)
    (_task_loss(model(_y0(), T)) + model.reg_loss).backward()  # the first call: measured
    assert len(observed) == 1
    first = _task_loss(model(_y0(), T)) + model.reg_loss
    (first + _task_loss(model(_y0(), T)) + model.reg_loss).backward()  # the second call is due
    assert len(observed) == 1
    assert model.weight._measurement is None
    task = _task_loss(model(_y0(), T))
    by_hand = (
        _norm(torch.autograd.grad(model.reg_loss, parameters, retain_graph=True)),
        _norm(torch.autograd.grad(task, parameters, retain_graph=True)),
    )
    (task + model.reg_loss).backward()
    assert len(observed) == 2
    assert observed[1] == pytest.approx(by_hand, rel=1e-10)


@pytest.mark.parametrize(("calls", "every", "measured"), [(12, 10, 2), (4, 3, 3), (2, 1, 4)])
def test_more_calls_per_pass_than_every_are_measured(calls, every, measured, monkeypatch):
    """A recurrent block called at twelve observations with the default's every=10: the due call in
    the middle of the pass restarted the measurement, which the pass then mixed with the calls
    before it, so the weight never measured (and warned); later, due calls in the middle of a pass
    measured nothing. Over four passes: the first, and each pass after one with a due call."""
    model = _model(RatioWeight(1.0))
    model.weight = RatioWeight(1.0, every=every, parameters=model.parameters())
    observed = []
    monkeypatch.setattr(model.weight, "observe_gradients", lambda *norms: observed.append(norms))
    for _ in range(4):
        sum(_task_loss(model(_y0(), T)) + model.reg_loss for _ in range(calls)).backward()
    assert len(observed) == measured


def test_a_ratio_weight_that_never_measures_warns():
    weight = RatioWeight(1.0, every=2)
    with pytest.warns(UserWarning, match="measured no gradients in 20 iterations"):
        for _ in range(20):
            weight.step()


@pytest.mark.parametrize(
    ("parameters", "error", "match"),
    [
        (torch.ones(2, requires_grad=True), TypeError, "got a tensor"),
        ([1.0], TypeError, "iterable of tensors"),
        ([torch.ones(2)], ValueError, "no tensor that requires grad"),
    ],
)
def test_bad_parameters_are_refused(parameters, error, match):
    with pytest.raises(error, match=match):
        RatioWeight(parameters=parameters)


def test_cli_scope_field_compares_the_gradients_on_the_vector_field_only(tmp_path):
    """Measured once, at the first iteration of two identical runs: the penalty pulls on the vector
    field's parameters only, so over the field the task's gradient is a part of the model's and
    the weight that holds the same ratio is smaller."""
    from local_reg.experiments.cli import main
    from local_reg.experiments.results import ResultsFile

    assert weight_text({"ratio": 1, "scope": "field"}) == "ratio 1 (scope=field)"
    weights = {}
    for scope in ("model", "field"):
        args = ["experiment", "tabular", "--size", "tiny", "--seeds", "1", "--no-progress"]
        args += ["--out", str(tmp_path / scope), "--methods", "local-random", "--set", "epochs=6"]
        spec = f'{{"ratio": 1, "every": 100000, "scope": "{scope}"}}'
        assert main([*args, "--set", f"weights.local-random={spec}"]) == 0
        (record,) = ResultsFile(tmp_path / scope).load()
        iteration, weights[scope] = record["history"]["weight"][1]
        assert iteration == 10
    assert 0 < weights["field"] < weights["model"]
    bad = RunSpec(
        "digits", "local-random", 0, "tiny", overrides={"weights.local-random": {"ratio": 1, "scope": "x"}}
    )
    with pytest.raises(SettingsError, match="scope"):
        bad.settings()


def test_the_floor_resumes_from_its_saved_largest_values_and_counts_only_while_on():
    """A weight below its largest (the cap bound it) resumes with that largest: the next fading
    task gradient is floored at it. Early measurements use the bias-corrected task average in the
    cap (a penalty gradient growing 4x at a steady task gradient brings the weight down with it).
    A phase without a floor does not set a later phase's floor."""

    def feed(weight, pairs):
        for penalty, task in pairs:
            weight.observe_gradients(penalty * weight(), task)
            weight.step()
        return weight()

    weight = RatioWeight(1.0, beta=0.0, initial=0.01, floor=1.0)
    assert feed(weight, [(1.0, 1.0), (1.0, 2.0), (4.0, 2.0)]) == pytest.approx(0.5)  # the cap binds
    resumed = RatioWeight(1.0, beta=0.0, floor=1.0)
    resumed.load_state_dict(weight.state_dict())
    assert feed(resumed, [(1.0, 0.1)]) == pytest.approx(2.0)  # floored at its largest, 2
    averaged = RatioWeight(1.0, beta=0.9, floor=1.0)
    # Averages after two measurements: task 0.19, penalty 0.09 + 0.4 = 0.49.
    assert feed(averaged, [(1.0, 1.0), (4.0, 1.0)]) == pytest.approx(0.19 / 0.49)
    phased = RatioWeight(1.0, beta=0.0, initial=0.01)
    feed(phased, [(1.0, 5.0)])  # a phase without a floor sets the weight 5
    phased.floor = 1.0
    assert feed(phased, [(1.0, 1.0), (1.0, 0.1)]) == pytest.approx(1.0)  # 5 if it counted


def test_a_measured_task_gradient_of_zero_is_an_infinite_ratio():
    """The penalty's gradient against a task gradient of exactly zero: ``inf`` (the weight then
    backs off), not ``nan``."""
    from local_reg import GradientRatio

    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    ratio = GradientRatio([p])
    reg = (p**2).sum()
    ratio.before_backward(reg)
    (0 * p.sum() + reg).backward()
    assert ratio.after_backward() == math.inf


def test_a_compiled_backward_that_refuses_the_retained_graph_names_the_remedy():
    # torch.compile(dynamic=True) builds a model's backward with donated buffers, which refuse the
    # retain_graph=True the measurement needs (it keeps the graph for the training pass): torch's
    # message named neither the weight nor a remedy. A Function raising torch's error stands for
    # that compiled backward (a real one takes half a minute to build).
    donated_buffers = failing_backward(
        "This backward function was compiled with non-empty donated buffers which requires "
        "create_graph=False and retain_graph=False."
    )

    parameter = torch.nn.Parameter(torch.ones(3))
    weight = RatioWeight(0.2, every=1, parameters=[parameter])
    with pytest.raises(RuntimeError, match=r"donated_buffer = False, compile without dynamic=True"):
        weight.watch(donated_buffers((parameter**2).sum()))


class _FailingField(_Field):
    """``_Field`` whose backward pass raises while ``fails`` is set (a failure inside ``func``'s
    vector-Jacobian product, after the head's parameters have reported)."""

    fails = False

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(t, failing_backward("func's backward failed")(y) if self.fails else y)


def test_a_backward_pass_that_raised_measures_nothing():
    """A batch whose backward pass raises, skipped by the loop: the head's parameters had reported
    to the open measurement, which the next forward pass folded as a whole one (its task norm the
    head's alone); a pass that never ended now measures nothing."""
    field = _FailingField()
    head = torch.nn.Linear(3, 1).to(DTYPE)
    weight = RatioWeight(0.2, every=1, parameters=[*field.parameters(), *head.parameters()])
    model = LocallyRegularized(field, weight=weight, generator=torch.Generator().manual_seed(0))

    def iteration() -> None:
        (head(model(_y0(), T)[-1]).pow(2).mean() + model.reg_loss).backward()

    iteration()
    measured = weight.state_dict()["measured"]
    field.fails = True
    with pytest.raises(RuntimeError, match="func's backward failed"):
        iteration()
    field.fails = False
    model(_y0(), T)  # its watch finishes whatever the last pass left open
    assert measured == 1 and weight.state_dict()["measured"] == measured


@pytest.mark.parametrize("every", [1, 10])
def test_after_a_backward_pass_that_raised_the_next_training_pass_measures(every):
    """The failed pass had queued the measurement's end, which autograd never ran: the next call
    joined the measurement, whose end was never queued again, so nothing was measured for 64
    calls (every=10: six measurements lost). Now the next call measures, as after any pass that
    measured nothing, and the loop measures as often as one without the failure."""
    field = _FailingField()
    head = torch.nn.Linear(3, 1).to(DTYPE)
    weight = RatioWeight(0.2, every=every, parameters=[*field.parameters(), *head.parameters()])
    model = LocallyRegularized(field, weight=weight, generator=torch.Generator().manual_seed(0))

    def iteration() -> None:
        (head(model(_y0(), T)[-1]).pow(2).mean() + model.reg_loss).backward()
        weight.step()

    iteration()
    assert weight.state_dict()["measured"] == 1
    for _ in range(every - 1):
        iteration()
    field.fails = True  # the next call is due
    with pytest.raises(RuntimeError, match="func's backward failed"):
        iteration()
    field.fails = False
    iteration()
    assert weight.state_dict()["measured"] == 2 and weight._measurement is None
    for _ in range(2 * every):
        iteration()
    assert weight.state_dict()["measured"] == 4


def test_a_backward_pass_that_raised_before_the_penalty_leaves_nothing_in_the_next_measurement():
    """A pass that fails after reaching the head, before reg_loss's hook (a failure between the
    model and the head): the head's gradient of the failed pass stayed in the open measurement,
    which the next call joined, and its pass measured a ratio 14% off. Now the next pass measures
    its own gradients alone: the ratio computed by hand."""
    field = _Field()
    head = torch.nn.Linear(3, 1).to(DTYPE)
    parameters = [*field.parameters(), *head.parameters()]
    weight = RatioWeight(0.2, every=1, parameters=parameters)
    model = LocallyRegularized(field, weight=weight, generator=torch.Generator().manual_seed(0))
    ys = model(_y0(), T)
    with pytest.raises(RuntimeError, match="the loss's backward failed"):
        (
            head(failing_backward("the loss's backward failed")(ys[-1])).pow(2).mean() + model.reg_loss
        ).backward()
    ys = model(_y0(), T)
    task = head(ys[-1]).pow(2).mean()
    by_hand = _norm(torch.autograd.grad(model.reg_loss, parameters, retain_graph=True, allow_unused=True)) / (
        _norm(torch.autograd.grad(task, parameters, retain_graph=True, allow_unused=True))
    )
    (task + model.reg_loss).backward()
    assert weight.state_dict()["measured"] == 1
    assert weight.last_ratio == pytest.approx(by_hand, rel=1e-10)


def test_a_call_inside_a_nested_backward_pass_leaves_the_running_measurement():
    """The model called (with grad) inside a nested pass that runs in the middle of the training
    pass, after the head's parameters have reported: that pass has not ended, it has not failed,
    and the measurement goes on (a rule for failed passes dropped it there)."""
    field = _Field()
    head = torch.nn.Linear(3, 1).to(DTYPE)
    parameters = [*field.parameters(), *head.parameters()]
    weight = RatioWeight(0.2, every=1, parameters=parameters)
    # No generator of its own: a call inside a backward pass draws from the global stream.
    model = LocallyRegularized(field, weight=weight)
    calls = {"inner": False}

    class CallsTheModel(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            if calls["inner"]:
                with torch.enable_grad():
                    model(_y0() * 0.5, T)  # a training call, its output and penalty unused
            return grad

    class RunsANestedPass(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            with torch.enable_grad():
                z = torch.zeros(1, dtype=DTYPE, requires_grad=True)
                torch.autograd.grad(CallsTheModel.apply(z).sum(), z)
            return grad

    ys = model(_y0(), T)
    task = head(RunsANestedPass.apply(ys[-1])).pow(2).mean()
    by_hand = _norm(torch.autograd.grad(model.reg_loss, parameters, retain_graph=True, allow_unused=True)) / (
        _norm(torch.autograd.grad(task, parameters, retain_graph=True, allow_unused=True))
    )
    calls["inner"] = True
    (task + model.reg_loss).backward()
    assert weight.state_dict()["measured"] == 1
    assert weight.last_ratio == pytest.approx(by_hand, rel=1e-10)


def test_a_due_call_in_the_middle_of_a_pass_measures_at_the_next_pass(monkeypatch):
    """Three calls per backward pass with every=10: a due call that is not the first of its pass
    (the calls before it are in the pass too) measures nothing, and the first call of the next pass
    measures, with the calls after it, the gradients computed by hand (the weight measured a third
    of the time)."""
    model, parameters, observed = _spied(every=10, monkeypatch=monkeypatch)
    by_hand = []
    for _ in range(10):
        tasks, penalties = [], []
        for _ in range(3):
            tasks.append(_task_loss(model(_y0(), T)))
            penalties.append(model.reg_loss)
        task = _norm(torch.autograd.grad(sum(tasks), parameters, retain_graph=True))
        penalty = _norm(torch.autograd.grad(sum(penalties), parameters, retain_graph=True))
        before = len(observed)
        (sum(tasks) + sum(penalties)).backward()
        if len(observed) > before:
            by_hand.append((penalty, task))
    # Calls 1, 11 and 21 are due; 11 and 21 are a pass's second and third: measured at 13 and 22.
    assert len(observed) == 3
    for measured, expected in zip(observed, by_hand, strict=True):
        assert measured == pytest.approx(expected, rel=1e-10)


def test_a_call_whose_penalty_is_never_backpropagated_does_not_stop_the_measurements(monkeypatch):
    """Two calls per pass, the second's penalty left out of the loss: every iteration is measured,
    the first call's penalty against the rest of the gradient, as computed by hand."""
    model, parameters, observed = _spied(every=1, monkeypatch=monkeypatch)
    by_hand = []
    for _ in range(4):
        first = _task_loss(model(_y0(), T))
        penalty = model.reg_loss
        task = first + _task_loss(model(_y0(), T))
        by_hand.append(
            (
                _norm(torch.autograd.grad(penalty, parameters, retain_graph=True)),
                _norm(torch.autograd.grad(task, parameters, retain_graph=True)),
            )
        )
        (task + penalty).backward()
    assert len(observed) == 4
    for measured, expected in zip(observed, by_hand, strict=True):
        assert measured == pytest.approx(expected, rel=1e-10)


def test_a_measurement_waiting_for_the_next_pass_survives_a_resume():
    """Saved between a pass that measured nothing (its measuring call not the first of the pass)
    and the next, the weight resumes to the same measurements and value as the run that went on."""

    def run(resume_after: int | None = None) -> dict:
        model = _model(RatioWeight(1.0))
        parameters = list(model.parameters())
        model.weight = RatioWeight(1.0, every=10, parameters=parameters)
        for index in range(8):
            if index == resume_after:
                state = model.weight.state_dict()
                assert state["overdue"]
                model.weight = RatioWeight(1.0, every=10, parameters=parameters)
                model.weight.load_state_dict(state)
            sum(_task_loss(model(_y0(), T)) + model.reg_loss for _ in range(3)).backward()
        return model.weight.state_dict()

    went_on = run()
    assert went_on["measured"] == 3
    assert run(resume_after=4) == went_on


@pytest.mark.parametrize("copied_by", ["deepcopy", "pickle", "state_dict"])
def test_a_copy_taken_while_a_measurement_is_open_measures_at_its_first_training_call(copied_by):
    """A copy taken between a measuring training call and its backward pass (``AveragedModel(model)``
    or ``torch.save(model)`` there) left the open measurement out, whose hooks stay with the
    original, but kept the call counted: the copy waited a whole ``every`` calls at its initial
    weight. In the copy that measurement is a pass that measured nothing, so its first training
    call measures, as after a pass that raised; the original measures as without the copy."""
    import copy
    import pickle

    def made() -> LocallyRegularized:
        model = _model(RatioWeight(1.0))
        model.weight = RatioWeight(1.0, every=10, parameters=list(model.parameters()))
        return model

    model = made()
    ys = model(_y0(), T)  # the first training call: due, it opens a measurement
    if copied_by == "deepcopy":
        twin = copy.deepcopy(model)
    elif copied_by == "pickle":
        twin = pickle.loads(pickle.dumps(model))
    else:
        twin = made()
        twin.load_state_dict(model.state_dict())
    (_task_loss(ys) + model.reg_loss).backward()
    assert model.weight.state_dict()["measured"] == 1
    (_task_loss(twin(_y0(), T)) + twin.reg_loss).backward()
    assert twin.weight.state_dict()["measured"] == 1
    assert twin.weight() != 1.0


def test_a_pass_whose_gradients_are_not_finite_is_followed_by_a_measurement():
    """A measuring pass whose gradients overflowed (float16 under a GradScaler, which skips that
    step; here a loss made infinite) measured nothing, but the weight waited a whole ``every``
    calls at its initial value before measuring again: the first measurement of the fp16 recipe
    at the default scale was lost so. The next call measures, as after a pass that raised."""
    model = _model(RatioWeight(1.0))
    model.weight = RatioWeight(1.0, every=10, parameters=list(model.parameters()))
    ys = model(_y0(), T)
    ((_task_loss(ys) + model.reg_loss) * math.inf).backward()
    assert model.weight.state_dict()["measured"] == 0
    model.zero_grad()
    (_task_loss(model(_y0(), T)) + model.reg_loss).backward()
    assert model.weight.state_dict()["measured"] == 1
    assert model.weight() != model.weight.initial


@pytest.mark.parametrize("penalized", [0, 3], ids=["first", "last"])
def test_gradient_accumulation_with_the_penalty_on_one_micro_batch_is_measured(penalized, monkeypatch):
    """Four micro-batches per optimizer step, the penalty added to one of them, every=4: the due
    call is a step's first micro-batch; with the penalty on the last, the passes before it carry no
    penalty, measure nothing (a measurement left open to the end, as before, measured nothing
    at all), and the next call measures again, up to the one whose pass carries its penalty. Each
    step is measured, as computed by hand."""
    model, parameters, observed = _spied(every=4, monkeypatch=monkeypatch)
    by_hand = []
    for _ in range(5):
        for micro_batch in range(4):
            task = _task_loss(model(_y0(), T)) / 4
            if micro_batch == penalized:
                penalty = model.reg_loss / 4
                by_hand.append(
                    (
                        4 * _norm(torch.autograd.grad(penalty, parameters, retain_graph=True)),
                        4 * _norm(torch.autograd.grad(task, parameters, retain_graph=True)),
                    )
                )
                task = task + penalty
            task.backward()
    assert len(observed) == len(by_hand) == 5
    for measured, expected in zip(observed, by_hand, strict=True):
        assert measured == pytest.approx(expected, rel=1e-10)


def test_passes_that_never_carry_the_penalty_retry_only_every_times(monkeypatch):
    """The task's and the penalty's gradients in two separate backward passes: no pass measures.
    The calls after a pass that measured nothing measure again, ``every`` of them at most, so the
    penalty's extra vector-Jacobian products stay about one per ``every`` calls."""
    model, _, observed = _spied(every=3, monkeypatch=monkeypatch)
    opened = []
    add_penalty = model.weight._add_penalty
    monkeypatch.setattr(model.weight, "_add_penalty", lambda *args: (opened.append(1), add_penalty(*args)))
    for _ in range(30):
        task = _task_loss(model(_y0(), T))
        task.backward(retain_graph=True)
        model.reg_loss.backward()
    assert observed == []
    assert 30 // 3 <= len(opened) <= 30 // 3 + 3


def test_a_task_far_smaller_than_the_initial_penalty_is_named_by_the_warning():
    """The default weight's measurements read a task gradient below 4096 float32 epsilons of the
    penalty's as zero (the rounding of a zero one): a loss scaled by 1e-7 never measured, and the
    warning sent the user to look for a backward pass without reg_loss. It names this cause now."""

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

        def forward(self, t, y):
            return self.net(y)

    torch.manual_seed(0)
    y0, target, t = torch.randn(32, 2), torch.randn(32, 2), torch.tensor([0.0, 1.0])
    model = LocallyRegularized(Field(), generator=torch.Generator().manual_seed(1))
    with pytest.warns(
        UserWarning, match=r"the task's gradient read as zero beside the penalty's .*lower initial="
    ):
        for _ in range(100):
            ys = model(y0, t)
            (1e-7 * (ys[-1] - target).pow(2).mean() + model.reg_loss).backward()
            model.zero_grad()
    assert model.weight.state_dict()["measured"] == 0


def test_a_scaling_gradient_hook_leaves_the_measured_ratio_as_it_was():
    """The training pass's gradient reaches the weight's accumulator hooks and ``.grad`` after a
    parameter's gradient hooks: the penalty's part must be measured with them too, or the task's
    part (their difference) is wrong (a doubling hook halved the ratio, and the weight settled
    there, silently)."""

    def ratios(hooked):
        model = _model(RatioWeight(1.0))
        model.weight = RatioWeight(1.0, every=1, parameters=model.parameters())
        if hooked:
            for parameter in model.parameters():
                parameter.register_hook(lambda grad: 2 * grad)
        (_task_loss(model(_y0(), T)) + model.reg_loss).backward()
        meter = GradientRatio(model.parameters())
        ys = model(_y0(), T)
        meter.before_backward(model.reg_loss)
        (_task_loss(ys) + model.reg_loss).backward()
        return model.weight.last_ratio, meter.after_backward()

    expected = ratios(hooked=False)
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in expected)
    assert ratios(hooked=True) == pytest.approx(expected, rel=1e-9)


def test_the_default_weight_measures_the_gradients_before_a_users_hooks():
    """The default weight read the training pass's gradient after a parameter's own hooks, and took
    the penalty's part with them on an extra call: a clip moved the ratio (and the weight, orders of
    magnitude), the hook ran twice per pass, and a multi-gradient hook failed inside torch in the
    model's call. It measures the gradients as they come, and the hooks run once per pass."""

    def measured(hook):
        model = _model(RatioWeight(1.0))
        model.weight = RatioWeight(1.0, every=1, parameters=model.parameters())
        calls = []
        if hook == "multi":
            torch.autograd.graph.register_multi_grad_hook(list(model.parameters()), calls.append)
        elif hook == "clamp":
            for parameter in model.parameters():
                parameter.register_hook(lambda grad: (calls.append(1), grad.clamp(-1e-3, 1e-3))[1])
        elif hook == "in place":  # torch asks hooks not to; a clip is often written so
            for parameter in model.parameters():
                parameter.register_hook(lambda grad: (calls.append(1), grad.mul_(7.0))[1])
        ratios = []
        for _ in range(3):
            (_task_loss(model(_y0(), T)) + model.reg_loss).backward()
            ratios.append(model.weight.last_ratio)
            model.zero_grad()
        return ratios, len(calls)

    expected, _ = measured(None)
    clamped, calls = measured("clamp")
    assert clamped == pytest.approx(expected, rel=1e-9)
    assert calls == 3 * len(list(_Field().parameters()))
    multi, calls = measured("multi")
    assert multi == pytest.approx(expected, rel=1e-9) and calls == 3
    assert measured("in place")[0] == pytest.approx(expected, rel=1e-9)


class _Units(torch.Tensor):
    """A ``__torch_function__`` subclass that changes nothing (as one carrying units would wrap)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_parameter_of_a_torch_function_subclass_is_measured():
    """The accumulator node of a ``__torch_function__`` subclass's parameter was read through the
    subclass, which gave a fresh view's node instead: the weight's hook never ran, it measured
    nothing and stayed at its initial value (a warning after 100 calls blamed the training loop)."""
    model = _model(RatioWeight(1.0))
    for layer in (model.func.net[0], model.func.net[2]):
        for name, parameter in list(layer.named_parameters()):
            setattr(layer, name, torch.nn.Parameter(parameter.detach().as_subclass(_Units)))
    model.weight = RatioWeight(1.0, every=1, parameters=model.parameters())
    for _ in range(2):
        (_task_loss(model(_y0(), T)) + model.reg_loss).backward()
    assert model.weight.state_dict()["measured"] == 2


def test_parameters_are_measured_under_a_torch_function_mode_that_wraps_results():
    """A ``TorchFunctionMode`` that wraps what torch returns in a subclass gave the parameter's
    accumulator node a view's in between, as a subclass did: nothing was measured."""
    from torch.overrides import TorchFunctionMode

    class Wrapping(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            return result.as_subclass(_Units) if type(result) is torch.Tensor else result

    model = _model(RatioWeight(1.0))
    model.weight = RatioWeight(1.0, every=1, parameters=model.parameters())
    with Wrapping():
        for _ in range(2):
            (_task_loss(model(_y0(), T)) + model.reg_loss).backward()
    assert model.weight.state_dict()["measured"] == 2
