"""The study options of local regularization (probe, penalty form, draws) and the self-tuning weight."""

from __future__ import annotations

import math
import re

import pytest
import torch

from local_reg import (
    AdaptiveWeight,
    GradientRatio,
    LocallyRegularized,
    initial_step_size,
    local_regularization,
)
from local_reg import step as rk_step
from local_reg.experiments.methods import weight_schedule, weight_text
from local_reg.experiments.runner import RunSpec
from local_reg.regularization import RegularizationStats
from local_reg.regularization._main_solve import MainSolve
from local_reg.regularization._probe import heuristic_order, penalty_form
from local_reg.sde import sdeint
from local_reg.solution import Stats
from local_reg.tableaus import get_tableau
from tests.problems import ConstantNoiseSDE

DTYPE = torch.float64
T = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)


def _field(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(DTYPE)


class _Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _field()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _y0() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3)


def _penalty_grad_norm(penalty: str, tol: float, dt: float) -> float:
    field = _Field()
    y = _y0()
    tableau = get_tableau("tsit5")
    k1 = field(0.0, y).detach()
    result = rk_step(field, 0.0, y, dt, tableau, rtol=tol, atol=tol, k1=k1)
    value = penalty_form(result.error_estimate, dt, tableau.order, penalty)
    grads = torch.autograd.grad(value, list(field.parameters()))
    return float(torch.cat([g.flatten() for g in grads]).norm())


def test_penalty_gradient_across_tolerances_at_a_fixed_step():
    # EEst = rms(err / (atol + rtol |y|)) with rtol = atol = tol is err-norm / tol: at a fixed field,
    # state and step the paper's EEst * |dt| has a gradient proportional to 1/tol (10^4 over four
    # decades), log EEst one independent of tol, and EEst^(1/p) one proportional to tol^(-1/p).
    dt = 0.2
    ratio = {
        p: _penalty_grad_norm(p, 1e-8, dt) / _penalty_grad_norm(p, 1e-4, dt)
        for p in ("error-dt", "log", "growth")
    }
    assert ratio["error-dt"] == pytest.approx(1e4, rel=0.05)
    assert ratio["log"] == pytest.approx(1.0, abs=0.05)
    assert ratio["growth"] == pytest.approx(10 ** (4 / 5), rel=0.05)
    assert ratio["growth"] < 10


def test_penalty_forms_against_their_formulas():
    error = torch.tensor(0.04, dtype=DTYPE)
    assert float(penalty_form(error, -0.5, 5, "error-dt")) == pytest.approx(0.02)
    assert float(penalty_form(error, 0.5, 5, "growth")) == pytest.approx(0.04**0.2)
    assert float(penalty_form(error, 0.5, 5, "log")) == pytest.approx(math.log(0.04))
    half = torch.tensor(0.5, dtype=DTYPE)
    assert float(penalty_form(half, 0.5, 5, "log-hinge")) == pytest.approx(math.log(0.5))
    small = torch.tensor(0.04, dtype=DTYPE, requires_grad=True)
    hinged = penalty_form(small, 0.5, 5, "log-hinge")
    (grad,) = torch.autograd.grad(hinged, small)
    assert float(hinged.detach()) == pytest.approx(math.log(0.1)) and float(grad) == 0.0
    zero = torch.zeros((), dtype=DTYPE, requires_grad=True)
    for form in ("growth", "log"):
        (grad,) = torch.autograd.grad(penalty_form(zero, 0.5, 5, form), zero)
        assert torch.isfinite(penalty_form(zero, 0.5, 5, form).detach()) and float(grad) == 0.0


def test_hairer_probe_exponent():
    # h1 = (0.01 / max(d1, d2)) ** (1 / order): asking for order p + 1 gives the 1/(p + 1) exponent.
    field = _Field()
    y = _y0()
    k1 = field(0.0, y).detach()
    short, _ = initial_step_size(field, 0.0, y, k1, heuristic_order(5, "initial"), 1e-6, 1e-6)
    long, _ = initial_step_size(field, 0.0, y, k1, heuristic_order(5, "initial-hairer"), 1e-6, 1e-6)
    # Both are the h1 branch here (a smooth field): h_long = h_short ** (5 / 6).
    assert long == pytest.approx(short ** (5 / 6), rel=1e-9)
    assert long > short


def test_the_probe_steps_default_is_hairers_heuristic_and_options_change_the_probe():
    func, y0 = _Field(), _y0()
    kwargs = dict(rtol=1e-6, atol=1e-6, penalty="error-dt")
    default = local_regularization(func, y0, T, generator=torch.Generator().manual_seed(3), **kwargs)
    hairer = local_regularization(
        func, y0, T, generator=torch.Generator().manual_seed(3), probe="initial-hairer", **kwargs
    )
    assert torch.equal(default[1], hairer[1]) and default[2].dt_reg == hairer[2].dt_reg
    base = local_regularization(
        func, y0, T, generator=torch.Generator().manual_seed(3), probe="initial", **kwargs
    )
    assert base[2].t_reg == default[2].t_reg and abs(base[2].dt_reg) < abs(default[2].dt_reg)
    scaled = local_regularization(
        func, y0, T, generator=torch.Generator().manual_seed(3), probe="initial", probe_scale=2.0, **kwargs
    )
    assert scaled[2].t_reg == base[2].t_reg
    assert abs(scaled[2].dt_reg) == pytest.approx(min(2 * abs(base[2].dt_reg), 1.0 - base[2].t_reg))
    log = local_regularization(
        func,
        y0,
        T,
        generator=torch.Generator().manual_seed(3),
        probe="initial",
        **{**kwargs, "penalty": "log"},
    )
    assert float(log[1].detach()) == pytest.approx(math.log(base[2].error_estimate), rel=1e-9)


def test_n_draws_averages_independent_draws():
    func, y0 = _Field(), _y0()
    ys, reg, stats = local_regularization(func, y0, T, n_draws=4, generator=torch.Generator().manual_seed(0))
    plain, _, _ = local_regularization(func, y0, T, generator=torch.Generator().manual_seed(0))
    assert ys.shape == plain.shape and torch.allclose(ys, plain, rtol=1e-5, atol=1e-7)
    # Four probes, each k1 + one heuristic evaluation + the step's stages.
    one = local_regularization(func, y0, T, generator=torch.Generator().manual_seed(0))[2].nfe_reg
    assert stats.nfe_reg == 4 * one
    (grad,) = torch.autograd.grad(reg, [next(func.parameters())])
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("penalty", ["kinetic", "error-dt"])
def test_n_draws_penalty_is_the_mean_of_the_single_draws_at_the_same_times(monkeypatch, penalty):
    """``n_draws`` averages its probes: a sum instead of the mean passed every test. ``stats``
    describe the last draw, except ``penalty``, the mean (as documented)."""
    from local_reg.regularization import _sampling

    func, y0 = _Field(), _y0()
    pinned = [0.13, 0.48, 0.91]

    def penalty_at(draws: list[float], n_draws: int) -> tuple[torch.Tensor, RegularizationStats]:
        queue = list(draws)
        monkeypatch.setattr(_sampling, "sample_uniform_time", lambda times, t_dtype, generator: queue.pop(0))
        _, reg, stats = local_regularization(func, y0, T, n_draws=n_draws, penalty=penalty)
        assert queue == []
        return reg, stats

    single_draws = [penalty_at([t_reg], 1) for t_reg in pinned]
    singles = torch.stack([reg for reg, _ in single_draws])
    assert len(set(singles.tolist())) == 3  # three different penalties
    mean, stats = penalty_at(pinned, 3)
    torch.testing.assert_close(mean, singles.mean(), rtol=1e-12, atol=0.0)
    last = single_draws[-1][1]
    assert stats.penalty == pytest.approx(float(mean), rel=1e-12)
    assert float(stats.t_reg) == float(last.t_reg) == pytest.approx(0.91)
    torch.testing.assert_close(stats.state, last.state, rtol=1e-12, atol=0.0)
    if penalty == "error-dt":
        assert stats.error_estimate == pytest.approx(last.error_estimate, rel=1e-12)
        assert stats.dt_reg == pytest.approx(last.dt_reg, rel=1e-12)


def test_probe_dtype_steps_in_float64_and_differentiates_into_the_float32_parameters():
    """A float32 model probed in float64: the penalty is the step of a float64 copy of the field at
    the same state and step size, and its gradient is that copy's, in the parameters' own dtype."""
    import copy

    narrow = _Field().float()
    wide = copy.deepcopy(narrow).double()
    y0 = _y0().float()
    t = T.float()
    model = LocallyRegularized(
        narrow, probe_dtype=torch.float64, weight=1.0, generator=torch.Generator().manual_seed(5)
    )
    assert model.penalty.probe_dtype == "float64"
    ys = model(y0, t)
    stats = model.stats
    assert ys.dtype == torch.float32 and model.reg_loss.dtype == torch.float32
    state = stats.state.double()
    with torch.no_grad():  # f at u(t_reg) is a constant of the penalty, as the paper's
        k1 = wide(torch.tensor(stats.t_reg, dtype=DTYPE), state)
    tableau = get_tableau("tsit5")
    reference = rk_step(wide, stats.t_reg, state, stats.dt_reg, tableau, rtol=1e-6, atol=1e-8, k1=k1)
    assert stats.error_estimate == pytest.approx(float(reference.error_estimate.detach()), rel=1e-12)
    penalty = reference.error_estimate * abs(stats.dt_reg)
    assert float(model.reg_loss.detach()) == pytest.approx(float(penalty.detach()), rel=1e-6)
    (grad,) = torch.autograd.grad(model.reg_loss, [narrow.net[0].weight])
    (grad_wide,) = torch.autograd.grad(penalty, [wide.net[0].weight])
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), grad_wide, rtol=1e-6, atol=1e-7 * float(grad_wide.abs().max()))
    # In the state's own dtype the same probe reports float32 rounding, not this estimate.
    plain = LocallyRegularized(narrow, weight=1.0, generator=torch.Generator().manual_seed(5))
    plain(y0, t)
    assert plain.stats.t_reg == stats.t_reg and plain.stats.error_estimate != stats.error_estimate


def test_probe_dtype_builds_the_probes_times_in_its_dtype_for_a_field_of_t():
    """A float32 model of ``t`` given float32 output times: the float64 probe's stage times were
    made in float32, so its estimate measured their rounding (the gradient off by 1.3x its size)."""
    import copy

    class TimeField(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _field()

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.net(y) * torch.cos(3.0 * t)

    narrow = TimeField().float()
    wide = copy.deepcopy(narrow).double()
    model = LocallyRegularized(
        narrow,
        penalty="error-dt",
        probe_dtype="float64",
        weight=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    model(_y0().float(), torch.linspace(0.0, 1.0, 5))
    stats = model.stats
    state = stats.state.double()
    with torch.no_grad():
        k1 = wide(torch.tensor(stats.t_reg, dtype=DTYPE), state)
    reference = rk_step(
        wide, stats.t_reg, state, stats.dt_reg, get_tableau("tsit5"), rtol=1e-6, atol=1e-8, k1=k1
    )
    assert stats.error_estimate == pytest.approx(float(reference.error_estimate.detach()), rel=1e-9)
    (grad,) = torch.autograd.grad(model.reg_loss, [narrow.net[0].weight])
    (grad_wide,) = torch.autograd.grad(reference.error_estimate * abs(stats.dt_reg), [wide.net[0].weight])
    torch.testing.assert_close(grad.double(), grad_wide, rtol=1e-5, atol=1e-6 * float(grad_wide.abs().max()))


@pytest.mark.parametrize(
    "gradient", ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
)
def test_kinetic_penalty_is_the_mean_square_rate_at_t_reg_without_a_probe_step(gradient):
    func, y0 = _Field(), _y0().requires_grad_()
    model = LocallyRegularized(
        func, penalty="kinetic", weight=1.0, gradient=gradient, generator=torch.Generator().manual_seed(2)
    )
    ys = model(y0, T)
    # u(t_reg) is a constant of the penalty, as the probe's state is.
    (to_y0,) = torch.autograd.grad(model.reg_loss, [y0], retain_graph=True, allow_unused=True)
    assert to_y0 is None or not to_y0.any()
    stats = model.stats
    assert stats.nfe_reg == 1 and stats.dt_reg is None and stats.error_estimate is None
    expected = func(torch.tensor(stats.t_reg, dtype=DTYPE), stats.state).pow(2).mean()
    assert float(model.reg_loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    params = list(func.parameters())
    grads = torch.autograd.grad(model.reg_loss, params, retain_graph=True)
    for got, want in zip(grads, torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    (ys.sum() + model.reg_loss).backward()


@pytest.mark.parametrize(
    "kwargs",
    [dict(probe_scale=2.0), dict(probe="solver"), dict(step_size="solver"), dict(regularizer="stiffness")],
)
def test_kinetic_penalty_refuses_probe_options(kwargs):
    with pytest.raises(ValueError, match=r"kinetic|penalty"):
        LocallyRegularized(_Field(), penalty="kinetic", **kwargs)


def test_probe_dtype_needs_an_ode_module_with_a_tensor_state():
    with pytest.raises(ValueError, match="probe_dtype casts"):
        LocallyRegularized(ConstantNoiseSDE(), probe_dtype="float64")
    with pytest.raises(ValueError, match="probe_dtype casts"):
        LocallyRegularized(lambda t, y: -y, probe_dtype="float64", weight=1.0)
    with pytest.raises(ValueError, match="probe_dtype"):
        LocallyRegularized(_Field(), probe_dtype="float16")

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor(1.0, dtype=DTYPE))

        def forward(self, t, y):
            return tuple(-self.rate * part for part in y)

    model = LocallyRegularized(Pair(), probe_dtype="float64", weight=1.0)
    with pytest.raises(ValueError, match="tuple states"):
        model((_y0(), _y0()), T)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(probe="nope"), "probe"),
        (dict(penalty="nope"), "penalty"),
        (dict(n_draws=0), "n_draws"),
        (dict(probe_scale=-1.0), "probe_scale"),
        (dict(probe="solver", probe_scale=2.0), "probe_scale"),
        (dict(regularizer="stiffness", penalty="log"), "penalty"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocallyRegularized(_Field(), **kwargs)


def _run(weight: AdaptiveWeight, losses, nfes) -> list[float]:
    values = []
    for loss, nfe in zip(losses, nfes, strict=True):
        weight.observe(loss, nfe)
        values.append(weight.step())
    return values


def test_adaptive_weight_rises_while_cost_is_above_target_and_falls_over_the_loss_allowance():
    weight = AdaptiveWeight(1.0, loss_rise=0.1, target_nfe=50, rate=0.1, beta=0.5, warmup=2)
    # A steady task loss and NFE 100 > target: the multiplier rises by exp(rate) per iteration.
    values = _run(weight, [1.0] * 12, [100] * 12)
    assert values[:2] == pytest.approx([1.0, 1.0])  # warming up: two observations, no update
    assert all(b > a for a, b in zip(values[1:], values[2:], strict=False))
    assert values[-1] == pytest.approx(math.exp(0.1 * 10), rel=1e-9)
    # The loss rises 50% above its best average (allowance 10%): the multiplier falls.
    high = _run(weight, [1.5] * 6, [100] * 6)
    assert high[-1] < high[0] < values[-1]
    # Below the NFE target with the loss back within its allowance: it falls, slower the closer.
    low = _run(AdaptiveWeight(1.0, target_nfe=50, rate=0.1, warmup=0), [1.0] * 5, [25] * 5)
    assert low[-1] == pytest.approx(math.exp(-0.1 * 0.5 * 5), rel=1e-9)


def test_adaptive_weight_without_a_target_buys_cost_until_the_loss_rises():
    weight = AdaptiveWeight(1.0, loss_rise=0.05, rate=0.2, beta=0.0, warmup=0)
    up = _run(weight, [1.0, 0.9, 0.8], [10, 10, 10])
    assert up == pytest.approx([math.exp(0.2), math.exp(0.4), math.exp(0.6)])
    down = _run(weight, [0.9], [10])  # 12.5% above the best (0.8): over the 5% allowance
    assert down[0] == pytest.approx(math.exp(0.4))


def test_adaptive_weight_is_bounded():
    weight = AdaptiveWeight(1.0, rate=1.0, warmup=0, w_min=0.1, w_max=10.0, beta=0.0)
    assert max(_run(weight, [1.0] * 20, [1] * 20)) == pytest.approx(10.0)
    assert min(_run(weight, [100.0] * 20, [1] * 20)) == pytest.approx(0.1)


def test_adaptive_weight_state_dict_resumes_exactly():
    losses = [1.0, 0.8, 0.9, 1.3, 1.2, 0.7, 0.75, 1.1]
    nfes = [80, 70, 60, 65, 50, 40, 45, 30]
    whole = AdaptiveWeight(2.0, target_nfe=55, rate=0.3, warmup=1)
    expected = _run(whole, losses, nfes)
    first = AdaptiveWeight(2.0, target_nfe=55, rate=0.3, warmup=1)
    _run(first, losses[:4], nfes[:4])
    model = LocallyRegularized(_Field(), weight=first)
    resumed_model = LocallyRegularized(
        _Field(), weight=AdaptiveWeight(2.0, target_nfe=55, rate=0.3, warmup=1)
    )
    resumed_model.load_state_dict(model.state_dict())
    assert _run(resumed_model.weight, losses[4:], nfes[4:]) == pytest.approx(expected[4:], rel=1e-12)
    assert resumed_model.weight.iteration == len(losses)


def test_adaptive_weight_bad_input():
    with pytest.raises(ValueError, match="initial"):
        AdaptiveWeight(1e4, w_max=10.0)
    with pytest.raises(ValueError, match="beta"):
        AdaptiveWeight(beta=1.0)
    with pytest.raises(ValueError, match="nfe"):
        AdaptiveWeight(target_nfe=10).observe(1.0)
    with pytest.raises(ValueError, match="task_loss"):
        AdaptiveWeight().observe(float("nan"), 3)


def test_adaptive_weight_allows_a_rise_relative_to_the_best_losss_size_also_below_zero():
    """A negative loss (a log-likelihood's) moves the weight as its positive twin does: a constant
    loss is no rise, and 12.5% of the best's size above it is over a 5% allowance."""
    for sign in (1.0, -1.0):
        weight = AdaptiveWeight(1.0, loss_rise=0.05, rate=0.2, beta=0.0, warmup=0)
        assert _run(weight, [sign * 0.8] * 3, [10] * 3) == pytest.approx(
            [math.exp(0.2 * k) for k in (1, 2, 3)]
        )
        assert _run(weight, [sign * 0.8 + 0.1], [10])[0] == pytest.approx(math.exp(0.4))


def test_adaptive_weight_refuses_counts_and_states_it_could_not_continue_from():
    weight = AdaptiveWeight(target_nfe=10)
    for bad in (float("nan"), float("inf"), -5.0):
        with pytest.raises(ValueError, match="nfe must be non-negative and finite"):
            weight.observe(1.0, bad)
    with pytest.raises(TypeError, match="task_loss"):
        weight.observe("0.5", 3)
    _run(weight, [1.0, 0.9], [12, 11])
    before = weight.state_dict()
    for key, value in [
        ("ema_loss", float("nan")),
        ("baseline", float("nan")),
        ("observed", -1),
        ("observed", "a"),
        ("log_weight", 1e6),
        ("pending", "junk"),
    ]:
        with pytest.raises(ValueError, match=key if key != "log_weight" else "lies outside"):
            weight.load_state_dict({**before, key: value})
        assert weight.state_dict() == before


def test_exponential_decay_ends_exactly_at_its_last_weight():
    from local_reg.regularization import ExponentialDecay

    decay = ExponentialDecay(2.5, 1.0, 7)
    assert decay.value(0) == 2.5 and decay.value(7) == 1.0 and decay.value(100) == 1.0


def test_cli_settings_for_the_study():
    spec = RunSpec(
        "digits", "local-random", 0, "tiny", overrides={"local.probe": "solver", "local.n_draws": 2}
    )
    plain = RunSpec("digits", "local-random", 0, "tiny")
    assert spec.settings()["local"] == {"probe": "solver", "n_draws": 2}
    # Same table (config), another row and run.
    assert spec.config_id == plain.config_id and spec.run_id != plain.run_id
    assert "probe=solver" in spec.label
    vanilla = RunSpec("digits", "vanilla", 0, "tiny", overrides={"local.probe": "solver"})
    assert vanilla.run_id == RunSpec("digits", "vanilla", 0, "tiny").run_id
    with pytest.raises(ValueError, match=re.escape("local.nope")):
        RunSpec("digits", "local-random", 0, "tiny", overrides={"local.nope": 1}).settings()
    wide = RunSpec("digits", "local-random", 0, "tiny", overrides={"local.probe_dtype": "float64"})
    assert wide.settings()["local"] == {"probe_dtype": "float64"} and "probe_dtype=float64" in wide.label
    with pytest.raises(ValueError, match="probe_dtype"):
        RunSpec("digits", "local-random", 0, "tiny", overrides={"local.probe_dtype": "half"}).settings()
    adaptive = weight_schedule({"adaptive": 2.0, "loss_rise": 0.1}, 10, "local-random")
    assert isinstance(adaptive, AdaptiveWeight) and adaptive() == 2.0 and adaptive.loss_rise == 0.1
    assert weight_text({"adaptive": 2.0, "loss_rise": 0.1}) == "adaptive 2 (loss_rise=0.1)"


def test_cli_runs_the_held_out_task_with_study_options_and_an_adaptive_weight(tmp_path):
    from local_reg.experiments.cli import main
    from local_reg.experiments.results import ResultsFile

    args = ["experiment", "tabular", "--size", "tiny", "--seeds", "1", "--no-progress"]
    args += ["--out", str(tmp_path)]
    assert main([*args, "--methods", "vanilla", "local-random"]) == 0
    adaptive = '{"adaptive": 1.0, "loss_rise": 0.1, "warmup": 0, "rate": 0.5}'
    options = ["--set", "local.probe=solver", "--set", "local.penalty=log", "--set", "local.n_draws=2"]
    options += ["--set", f"weights.local-random={adaptive}"]
    assert main([*args, "--methods", "local-random", *options]) == 0
    records = ResultsFile(tmp_path).load()
    assert [r["method"] for r in records] == ["vanilla", "local-random", "local-random"]
    last = records[-1]
    assert last["local"] == {"n_draws": 2, "penalty": "log", "probe": "solver"}
    assert len({r["config_id"] for r in records}) == 1
    assert last["iterations"] == 2 and all(math.isfinite(v) for v in last["history"]["reg_loss"])
    assert "adaptive 1" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_sde_refuses_the_ode_probe_options():
    LocallyRegularized(ConstantNoiseSDE())  # the defaults are fine
    with pytest.raises(ValueError, match="probe options"):
        LocallyRegularized(ConstantNoiseSDE(), penalty="log")


class _DriftSDE(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self):
        super().__init__()
        self.drift = _field(3)
        self.scale = torch.nn.Parameter(torch.tensor(0.1, dtype=DTYPE))

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        return self.scale * torch.ones_like(y)


@pytest.mark.parametrize("backend", ["local_reg", "torchsde"])
def test_sde_kinetic_penalty_is_the_mean_square_drift_at_t_reg(backend):
    sde = _DriftSDE()
    y0 = torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    model = LocallyRegularized(
        sde, penalty="kinetic", weight=1.0, backend=backend, generator=torch.Generator().manual_seed(2)
    )
    model(y0, T)
    stats = model.stats
    # One drift evaluation, no diffusion, no probe step.
    assert stats.nfe_reg == 1 and stats.probe.nfe_diffusion == 0 and stats.dt_reg is None
    expected = sde.drift(stats.state).pow(2).mean()
    assert float(model.reg_loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    grads = torch.autograd.grad(model.reg_loss, list(sde.drift.parameters()))
    for got, want in zip(grads, torch.autograd.grad(expected, list(sde.drift.parameters())), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_sde_kinetic_reads_u_t_reg_from_the_recorded_steps_at_no_extra_step():
    # The kinetic penalty's u(t_reg) is a constant, so an SDE solve does not land on t_reg: the main
    # solve is the plain sdeint solve (same steps, same outputs) and u(t_reg) is the linear
    # interpolant of the recorded states of the step that contains t_reg.
    torchsde = pytest.importorskip("torchsde")
    sde = _DriftSDE()
    y0 = torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(4, 3), dtype=DTYPE, entropy=5)
    ys, _, stats = local_regularization(sde, y0, T, bm=bm, generator=torch.Generator().manual_seed(2))
    plain = sdeint(sde, y0, T, bm=bm, record_states=True)
    torch.testing.assert_close(ys, plain.ys, rtol=0, atol=0)
    assert stats.main.nfe == plain.stats.nfe
    starts = plain.steps.t.tolist()
    index = max(i for i, start in enumerate(starts) if start <= stats.t_reg)
    assert starts[index] < stats.t_reg  # a draw between steps, which a landing solve would split
    ends = [*plain.steps.states[1:], plain.ys[-1]]
    fraction = (stats.t_reg - starts[index]) / float(plain.steps.dt[index])
    expected = plain.steps.states[index] + fraction * (ends[index] - plain.steps.states[index])
    torch.testing.assert_close(stats.state, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_main_solve_state_at_interpolates_the_recorded_steps(direction):
    first, second, last = (torch.full((2,), v, dtype=DTYPE) for v in (1.0, 3.0, 7.0))
    t0 = 0.0 if direction > 0 else 1.0
    main = MainSolve(
        ys=torch.stack([first, last]),
        stats=Stats(),
        step_t=[t0, t0 + direction * 0.5],
        step_dt=[direction * 0.5, direction * 0.5],
        step_states=torch.stack([first, second]),
    )
    for t_reg, want in ((0.25, 2.0), (0.5, 3.0), (0.75, 5.0)):
        t = t_reg if direction > 0 else 1.0 - t_reg
        torch.testing.assert_close(main.state_at(t, direction), torch.full((2,), want, dtype=DTYPE))


def test_gradient_ratio_against_separate_gradients():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    task = net(x).pow(2).mean()
    penalty = 0.3 * net.weight.abs().sum() + 0.1 * net(x).sum()
    params = list(net.parameters())
    task_grads = torch.autograd.grad(task, params, retain_graph=True)
    penalty_grads = torch.autograd.grad(penalty, params, retain_graph=True)
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in penalty_grads)) / math.sqrt(
        sum(float(g.pow(2).sum()) for g in task_grads)
    )
    ratio = GradientRatio(params)
    ratio.before_backward(penalty)
    (task + penalty).backward()
    assert ratio.after_backward() == pytest.approx(expected, rel=1e-10)
    # A penalty without a graph (eval mode, vanilla) measures nothing.
    ratio.before_backward(torch.zeros(()))
    assert math.isnan(ratio.after_backward())


def test_cli_records_the_gradient_ratio(tmp_path):
    from local_reg.experiments.cli import main
    from local_reg.experiments.results import ResultsFile

    args = ["experiment", "digits", "--size", "tiny", "--seeds", "1", "--no-progress", "--out", str(tmp_path)]
    assert main([*args, "--methods", "local-random"]) == 0
    (record,) = ResultsFile(tmp_path).load()
    ratios = record["history"]["grad_ratio"]
    assert ratios and ratios[0][0] == 0 and all(math.isfinite(r) and r >= 0 for _, r in ratios)
