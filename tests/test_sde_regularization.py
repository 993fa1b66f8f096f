"""SDE regularizers: the penalty is the solver's own EEst * |dt| on the same Brownian path, its
gradient reaches drift and diffusion parameters and matches finite differences (as does the SDE
step's), every backend works, and minimizing it makes the SDE cheaper to solve."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchsde

import local_reg
from local_reg import RegularizationStats, global_regularization, local_regularization
from local_reg.sde import is_sde, sde_step, sdeint
from tests.problems import DecaySDE, live_objects

DT = torch.float64


class TinySDE(torch.nn.Module):
    """A small neural SDE with diagonal (or scalar) noise."""

    sde_type = "ito"

    def __init__(self, d: int = 2, hidden: int = 16, noise_type: str = "diagonal") -> None:
        super().__init__()
        self.noise_type = noise_type
        self.drift = torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d)
        )
        # One diffusion entry per state entry: diagonal noise, or scalar noise's (d, 1) column.
        self.diffusion = torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d)
        )
        with torch.no_grad():
            self.drift[2].weight.mul_(3.0)

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        g = 0.5 * torch.sigmoid(self.diffusion(y))
        return g.unsqueeze(-1) if self.noise_type == "scalar" else g


def grads(sde: TinySDE) -> tuple[float, float]:
    drift = sum(float(p.grad.abs().sum()) for p in sde.drift.parameters() if p.grad is not None)
    diffusion = sum(float(p.grad.abs().sum()) for p in sde.diffusion.parameters() if p.grad is not None)
    return drift, diffusion


def setup(batch: int = 16, noise_type: str = "diagonal"):
    sde = TinySDE(noise_type=noise_type).to(DT)
    y0 = torch.randn(batch, 2, dtype=DT)
    return sde, y0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampling="random"),
        dict(sampling="biased"),
        dict(sampling="random", step_size="solver"),
        dict(sampling="random", detach_state=False),
        dict(sampling="random", backend="torchsde"),
        dict(sampling="random", backend="torchsde", gradient="adjoint"),
        # srk reads Levy areas: the Brownian motion the model makes carries them for it.
        dict(sampling="random", backend="torchsde", method="srk"),
        dict(sampling="random", backend="torchsde", method="srk", gradient="adjoint"),
    ],
)
def test_local_gradients_reach_drift_and_diffusion(kwargs):
    sde, y0 = setup()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    ys, reg, stats = local_regularization(
        sde, y0, t, generator=torch.Generator().manual_seed(1), penalty="error-dt", **kwargs
    )
    assert ys.shape == (3, 16, 2)
    assert reg.dim() == 0 and float(reg.detach()) > 0
    assert isinstance(stats, RegularizationStats)
    assert stats.penalty == pytest.approx(stats.error_estimate * stats.dt_reg)
    assert 0.0 <= stats.t_reg < 1.0 and 0 < stats.dt_reg <= 1.0 - stats.t_reg + 1e-12
    assert stats.nfe_main == stats.nfe_main_drift + stats.nfe_main_diffusion > 0
    assert stats.nfe_reg == stats.nfe_reg_drift + stats.nfe_reg_diffusion
    # f, g at u(t_reg); the heuristic's probe (step_size="initial"); the step's f and g.
    assert stats.nfe_reg_drift == (3 if kwargs.get("step_size", "initial") == "initial" else 2)
    reg.backward()
    drift, diffusion = grads(sde)
    assert drift > 0 and diffusion > 0


def test_scalar_noise_gradients():
    sde, y0 = setup(noise_type="scalar")
    _, reg, _ = local_regularization(
        sde, y0, [0.0, 1.0], generator=torch.Generator().manual_seed(0), penalty="error-dt"
    )
    reg.backward()
    drift, diffusion = grads(sde)
    assert drift > 0 and diffusion > 0


def test_biased_solver_step_is_the_main_solve_step():
    """Biased sampling with the solver's step size re-takes an accepted step of the main solve on
    the same Brownian path: its EEst is the one the solver accepted the step with."""
    sde, y0 = setup()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 2), dtype=DT, entropy=4)
    _, _, stats = local_regularization(
        sde,
        y0,
        [0.0, 1.0],
        sampling="biased",
        step_size="solver",
        bm=bm,
        generator=torch.Generator().manual_seed(2),
    )
    # The same solve again on the same (already sampled) path: the same accepted steps.
    steps = sdeint(sde, y0, [0.0, 1.0], bm=bm).steps
    index = steps.t.tolist().index(stats.t_reg)
    assert stats.dt_reg == pytest.approx(float(steps.dt[index]), rel=1e-12)
    assert stats.error_estimate == pytest.approx(float(steps.error_estimate[index]), rel=1e-10)


def test_outputs_exclude_t_reg_and_follow_the_path():
    """ys at the requested times only, on the given Brownian path (close to the solve without t_reg)."""
    sde, y0 = setup()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 2), dtype=DT, entropy=9)
    ys, _, stats = local_regularization(
        sde, y0, [0.0, 0.5, 1.0], bm=bm, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(3)
    )
    plain = sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, rtol=1e-3, atol=1e-3).ys
    assert stats.t_reg not in (0.5,)
    torch.testing.assert_close(ys[0], y0)
    assert float((ys - plain).detach().abs().max()) < 0.1


def test_global_regularization():
    sde, y0 = setup()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 2), dtype=DT, entropy=5)
    ys, reg_mean, stats = global_regularization(sde, y0, [0.0, 1.0], bm=bm)
    _, reg_sum, _ = global_regularization(sde, y0, [0.0, 1.0], bm=bm, reduction="sum")
    assert reg_sum.item() == pytest.approx(reg_mean.item() * stats.n_accepted)
    assert stats.nfe_reg == 0 and stats.nfe_main == stats.main.nfe
    reg_mean.backward()
    drift, diffusion = grads(sde)
    assert drift > 0 and diffusion > 0


def test_global_regularization_takes_the_largest_step_penalty_as_an_ode_does():
    # It was refused for an SDE ("not available") while an ODE's error penalty took it.
    sde, y0 = setup()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 2), dtype=DT, entropy=5)
    _, reg_max, stats = global_regularization(sde, y0, [0.0, 1.0], bm=bm, reduction="max")
    steps = sdeint(sde, y0, [0.0, 1.0], bm=bm).steps  # the same path: the same accepted steps
    assert len(steps.dt) == stats.n_accepted
    assert reg_max.item() == pytest.approx(float((steps.error_estimate * steps.dt.abs()).max()), rel=1e-9)


@pytest.mark.parametrize("which", ["local", "global"])
def test_minimizing_the_penalty_makes_the_sde_cheaper(which):
    """A few steps on the penalty alone: the solve on a fixed path takes fewer evaluations."""
    torch.manual_seed(0)
    sde, y0 = setup(batch=32)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(32, 2), dtype=DT, entropy=6)
    rtol = atol = 1e-3

    def nfe() -> int:
        with torch.no_grad():
            return sdeint(sde, y0, [0.0, 1.0], bm=bm, rtol=rtol, atol=atol).stats.nfe

    before = nfe()
    optimizer = torch.optim.Adam(sde.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        optimizer.zero_grad()
        if which == "local":
            _, reg, _ = local_regularization(sde, y0, [0.0, 1.0], rtol=rtol, atol=atol, generator=generator)
        else:
            _, reg, _ = global_regularization(sde, y0, [0.0, 1.0], rtol=rtol, atol=atol, generator=generator)
        reg.backward()
        optimizer.step()
    assert nfe() < 0.8 * before


def test_bad_arguments_name_the_argument():
    sde, y0 = setup()
    with pytest.raises(ValueError, match="sampling"):
        local_regularization(sde, y0, [0.0, 1.0], sampling="uniform")
    with pytest.raises(ValueError, match="regularizer"):
        local_regularization(sde, y0, [0.0, 1.0], regularizer="stiffness")
    with pytest.raises(ValueError, match="gradient"):
        local_regularization(sde, y0, [0.0, 1.0], gradient="adjoint")
    with pytest.raises(ValueError, match="backend"):
        local_regularization(sde, y0, [0.0, 1.0], backend="torchdiffeq")
    with pytest.raises(ValueError, match="biased"):
        local_regularization(sde, y0, [0.0, 1.0], sampling="biased", backend="torchsde")
    with pytest.raises(ValueError, match="gradient"):
        global_regularization(sde, y0, [0.0, 1.0], gradient="adjoint")
    with pytest.raises(ValueError, match="bm"):
        local_regularization(sde, y0, [0.0, 2.0], bm=torchsde.BrownianInterval(0.0, 1.0, size=(16, 2)))
    assert is_sde(sde)


def test_front_door_accepts_an_sde_and_keeps_schedule_state():
    """LocallyRegularized(sde) solves with sdeint, regularizes in training only, and saves its state."""
    from local_reg import GloballyRegularized, LocallyRegularized
    from local_reg.regularization import ExponentialDecay

    sde, y0 = setup()
    model = LocallyRegularized(
        sde,
        weight=ExponentialDecay(2.0, 1.0, 10),
        penalty="error-dt",
        generator=torch.Generator().manual_seed(3),
    )
    assert (model.problem.rtol, model.problem.atol) == (
        1e-2,
        1e-2,
    )  # the SDE solver's defaults, not the ODE ones
    model.train()
    ys = model(y0, [0.0, 0.5, 1.0])
    assert ys.shape == (3, *y0.shape)
    assert model.stats.nfe_reg > 0 and model.stats.nfe_main_diffusion > 0
    assert float(model.reg_loss.detach()) == pytest.approx(2.0 * model.stats.penalty)
    model.reg_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sde.parameters())
    model.weight.step()
    other = LocallyRegularized(TinySDE().to(DT), weight=ExponentialDecay(2.0, 1.0, 10))
    other.load_state_dict(model.state_dict())
    assert other.weight() == pytest.approx(model.weight())
    model.eval()
    model(y0, [0.0, 1.0])
    assert float(model.reg_loss) == 0.0 and model.stats.nfe_reg == 0

    global_model = GloballyRegularized(sde)
    global_model.train()
    global_model(y0, [0.0, 1.0])
    assert global_model.stats.n_accepted > 0 and float(global_model.reg_loss) > 0
    with pytest.raises(ValueError, match="regularizer"):
        LocallyRegularized(sde, regularizer="stiffness")
    with pytest.raises(ValueError, match="gradient"):
        GloballyRegularized(sde, gradient="checkpoint")
    with pytest.raises(ValueError, match="backend"):
        LocallyRegularized(sde, backend="torchdiffeq")


class AdditiveSDE(torch.nn.Module):
    """Neural drift, additive noise g(t) of shape (batch, d, m): the error estimate is the drift part."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self) -> None:
        super().__init__()
        self.drift = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.scale = torch.nn.Parameter(torch.full((2, 3), 0.2))

    def f(self, t, y):
        return 3.0 * self.drift(y)

    def g(self, t, y):
        return self.scale.expand(y.shape[0], 2, 3)


def test_additive_noise_regularization():
    sde = AdditiveSDE().to(DT)
    y0 = torch.randn(8, 2, dtype=DT)
    ys, reg, stats = local_regularization(
        sde, y0, [0.0, 1.0], generator=torch.Generator().manual_seed(0), penalty="error-dt"
    )
    assert ys.shape == (2, 8, 2) and float(reg.detach()) > 0
    # g at u(t_reg); the step needs no shifted g. The g evaluation that sizes the Brownian motion
    # (m = 3) belongs to the main solve.
    assert stats.nfe_reg_diffusion == 1
    plain_ys = local_reg.Regularized(sde).eval()(y0, [0.0, 1.0])
    assert plain_ys.shape == ys.shape
    reg.backward()
    assert sum(float(p.grad.abs().sum()) for p in sde.drift.parameters()) > 0


class CallSDE(torch.nn.Module):
    """``sde.f`` or ``sde.g`` as ``forward``, so that ``torch.func.functional_call`` can evaluate an
    SDE module's own methods with parameters passed in as function inputs."""

    def __init__(self, sde: torch.nn.Module) -> None:
        super().__init__()
        self.sde = sde

    def forward(self, method: str, t, y):
        return getattr(self.sde, method)(t, y)


class ParametrizedSDE:
    """``sde`` evaluated at the parameter tensors ``weights`` (in ``named_parameters`` order)."""

    sde_type = "ito"

    def __init__(self, sde: torch.nn.Module, weights) -> None:
        self.call = CallSDE(sde)
        self.noise_type = sde.noise_type
        self.weights = {
            "sde." + name: w for (name, _), w in zip(sde.named_parameters(), weights, strict=True)
        }

    def f(self, t, y):
        return torch.func.functional_call(self.call, self.weights, ("f", t, y))

    def g(self, t, y):
        return torch.func.functional_call(self.call, self.weights, ("g", t, y))


@pytest.mark.parametrize("milstein", [False, True])
@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_sde_step_gradcheck_in_state_and_parameters(noise_type, milstein):
    """The step's y1 and EEst against finite differences in y and in every drift and diffusion
    parameter, at a fixed Brownian increment."""
    sde = TinySDE(hidden=4, noise_type=noise_type).to(DT)
    y = torch.randn(3, 2, dtype=DT)
    dt = 0.1
    m = 2 if noise_type == "diagonal" else 1
    dw = torch.tensor([[0.5, -0.1], [-0.45, 0.6], [0.05, -0.55]], dtype=DT)[:, :m]
    # EEst takes |.| of the Milstein term, a multiple of dW^2 - h: a zero there would be a kink
    # that finite differences straddle.
    assert float((dw * dw - dt).abs().min()) > 0.05

    def step(y, *weights):
        result = sde_step(
            ParametrizedSDE(sde, weights), noise_type, 0.3, y, dt, dw, rtol=1e-3, atol=1e-3, milstein=milstein
        )
        return result.y1, result.error_estimate

    inputs = (y, *(p.detach().clone() for p in sde.parameters()))
    for tensor in inputs:
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def central_differences(evaluate, parameters, eps: float = 1e-6) -> torch.Tensor:
    """d evaluate() / d parameters, one central difference per entry, flattened in order."""
    columns = []
    with torch.no_grad():
        for p in parameters:
            flat = p.view(-1)
            for j in range(flat.numel()):
                flat[j] += eps
                plus = float(evaluate())
                flat[j] -= 2 * eps
                minus = float(evaluate())
                flat[j] += eps
                columns.append((plus - minus) / (2 * eps))
    return torch.tensor(columns, dtype=DT)


def assert_matches_in_drift_and_diffusion(sde: TinySDE, autograd: torch.Tensor, finite: torch.Tensor) -> None:
    """Drift and diffusion parameters apart, each against the scale of its own gradient, so that a
    wrong diffusion gradient is not hidden under a larger drift one. Measured: autograd and central
    differences agree to 4e-8 of the largest entry, 4e-6 relative on entries above 1e-3 of it."""
    n_drift = sum(p.numel() for p in sde.drift.parameters())
    for part in (slice(0, n_drift), slice(n_drift, None)):
        scale = float(finite[part].abs().max())
        assert scale > 0
        torch.testing.assert_close(autograd[part], finite[part], rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
@pytest.mark.parametrize("penalty", ["kinetic", "error-dt"])
def test_local_penalty_gradient_matches_finite_differences(penalty, noise_type):
    """The local penalty's autograd gradient in every drift and diffusion parameter against central
    differences of the whole map parameters -> penalty.

    With the default detach_state=True, u(t_reg) and f, g there are constants by design, which a
    difference of the whole map would not hold, so the state stays on the graph here. The map is
    smooth only where nothing discrete moves with the parameters: t_reg and the path come from the
    same seed and bm every call, fixed steps keep the main solve's grid, and the probe's step is the
    cap t1 - t_reg, not the heuristic's parameter-dependent size."""
    sde = TinySDE(hidden=4, noise_type=noise_type).to(DT)
    y0 = torch.randn(3, 2, dtype=DT)
    t1 = 0.2
    bm = torchsde.BrownianInterval(
        0.0, t1, size=(3, 2 if noise_type == "diagonal" else 1), dtype=DT, entropy=7, dt=t1 / 100
    )

    def regularize():
        return local_regularization(
            sde,
            y0,
            [0.0, t1],
            bm=bm,
            generator=torch.Generator().manual_seed(3),
            penalty=penalty,
            detach_state=False,
            options={"step_size": t1 / 10},
        )

    _, reg, stats = regularize()
    if penalty == "error-dt":
        assert stats.dt_reg == pytest.approx(t1 - stats.t_reg, rel=1e-12)
    _, again, _ = regularize()
    assert float(again.detach()) == float(reg.detach())  # differences need a deterministic map
    reg.backward()
    parameters = list(sde.parameters())
    autograd = torch.cat([p.grad.reshape(-1) for p in parameters])
    finite = central_differences(lambda: regularize()[1], parameters)
    assert_matches_in_drift_and_diffusion(sde, autograd, finite)


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar"])
def test_detached_probe_gradient_matches_finite_differences_of_its_step(noise_type):
    """With the paper's detach_state=True the gradient of EEst * |dt| is that of the probe step
    with u(t_reg), f and g there and dt held at this call's values: central differences of that
    step, taken on the same Brownian increment, in every drift and diffusion parameter."""
    sde = TinySDE(hidden=4, noise_type=noise_type).to(DT)
    y0 = torch.randn(3, 2, dtype=DT)
    bm = torchsde.BrownianInterval(
        0.0, 1.0, size=(3, 2 if noise_type == "diagonal" else 1), dtype=DT, entropy=8, dt=0.01
    )
    rtol = atol = 1e-2
    _, reg, stats = local_regularization(
        sde,
        y0,
        [0.0, 1.0],
        bm=bm,
        rtol=rtol,
        atol=atol,
        generator=torch.Generator().manual_seed(5),
        penalty="error-dt",
    )
    reg.backward()
    t_reg, dt, state = stats.t_reg, stats.dt_reg, stats.state
    with torch.no_grad():
        t_now = torch.tensor(t_reg, dtype=DT)
        f0, g0 = sde.f(t_now, state), sde.g(t_now, state)
    dw = bm(t_reg, t_reg + dt)

    def pinned_penalty():
        result = sde_step(sde, noise_type, t_reg, state, dt, dw, rtol=rtol, atol=atol, f0=f0, g0=g0)
        return result.error_estimate * dt

    assert float(pinned_penalty().detach()) == pytest.approx(stats.penalty, rel=1e-12)
    parameters = list(sde.parameters())
    autograd = torch.cat([p.grad.reshape(-1) for p in parameters])
    finite = central_differences(pinned_penalty, parameters)
    assert_matches_in_drift_and_diffusion(sde, autograd, finite)


def test_an_sde_without_noise_type_is_named_when_the_model_is_made():
    """Without ``noise_type`` a module of ``f`` and ``g`` is not an SDE, and as an ODE it has no
    ``forward``: refused when the model is made, naming ``noise_type`` (it failed at the first call
    with torch's "missing the required forward")."""

    class NoNoiseType(DecaySDE):
        noise_type = None  # as a module that never set it

    for model in (local_reg.LocallyRegularized, local_reg.GloballyRegularized):
        with pytest.raises(TypeError, match="no string attribute noise_type"):
            model(NoNoiseType())

    class FieldWithHelpers(NoNoiseType):
        """An ODE field that happens to have methods f and g: still an ODE."""

        def forward(self, t, y):
            return self.f(t, y)

    model = local_reg.LocallyRegularized(FieldWithHelpers())
    torch.testing.assert_close(
        model(torch.ones(3, 2, dtype=torch.float64), [0.0, 1.0])[-1],
        torch.full((3, 2), torch.exp(torch.tensor(-1.0)).item(), dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )


@pytest.mark.parametrize("penalty", [None, "error-dt"])
def test_the_torchsde_backend_checks_a_given_brownian_motion_as_the_local_one_does(penalty):
    """torchsde casts nothing: a float32 Brownian motion under a float64 solve drove it with rounded
    increments (the local_reg backend refuses it); a callable that is not torchsde's failed inside it."""
    sde, y0 = setup()
    options = {"backend": "torchsde", "penalty": penalty} if penalty else {"backend": "torchsde"}
    single = torchsde.BrownianInterval(0.0, 1.0, size=y0.shape, dtype=torch.float32)
    with pytest.raises(
        TypeError, match=re.escape("bm has dtype torch.float32, expected the dtype of y0 torch.float64")
    ):
        local_regularization(sde, y0, [0.0, 1.0], bm=single, **options)

    def plain(ta, tb):
        return torch.zeros_like(y0)

    with pytest.raises(TypeError, match="bm must be a torchsde Brownian motion"):
        local_regularization(sde, y0, [0.0, 1.0], bm=plain, **options)
    # torchsde keeps the device as given: "cpu" is y0's device.
    good = torchsde.BrownianInterval(0.0, 1.0, size=y0.shape, dtype=torch.float64, device="cpu", entropy=3)
    ys, penalty_value, _ = local_regularization(sde, y0, [0.0, 1.0], bm=good, **options)
    assert torch.isfinite(ys).all() and torch.isfinite(penalty_value)


def test_the_torchsde_backends_default_is_torchsdes_adaptive_solve_from_a_twentieth_of_the_span():
    """Its documented defaults (``adaptive=True``, first ``dt`` a twentieth of the span): the outputs
    are torchsde's own solve on the same Brownian path (torchsde interpolates the added ``t_reg``
    between its steps, which it does not change)."""
    sde, y0 = setup()
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 2), dtype=DT, entropy=7)
    tolerances = dict(rtol=1e-3, atol=1e-3)
    generator = torch.Generator().manual_seed(0)
    ys, _, _ = local_regularization(
        sde, y0, [0.0, 1.0], backend="torchsde", bm=bm, generator=generator, **tolerances
    )
    ts = torch.tensor([0.0, 1.0], dtype=DT)
    theirs = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", adaptive=True, dt=0.05, **tolerances)
    torch.testing.assert_close(ys, theirs, rtol=1e-12, atol=1e-12)


class NaNOutsideTheGraph(torch.nn.Module):
    """``dy = dt + 0.3 dW``, its drift NaN when evaluated without autograd, as the probe's start is
    (a constant)."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return torch.full_like(y, 1.0 if torch.is_grad_enabled() else math.nan)

    def g(self, t, y):
        return torch.full_like(y, 0.3)


def test_an_sde_probe_from_a_non_finite_drift_reports_the_penalty_non_finite():
    # The heuristic's step size is NaN there; querying the Brownian motion at t_reg + NaN would not
    # return: the step goes to the end of the span instead and its estimate is reported non-finite.
    model = local_reg.LocallyRegularized(NaNOutsideTheGraph(), penalty="error-dt")
    ys = model(torch.zeros(2, 1, dtype=torch.float64), [0.0, 1.0])
    assert torch.isfinite(ys).all()
    assert not model.stats.penalty_finite


@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_a_torchsde_solves_own_brownian_cache_is_emptied_after_backpropagation(gradient, monkeypatch):
    # torchsde's interval lives in reference cycles until a full garbage collection, and its cache
    # of increments (batch-sized tensors) piled up over thousands of iterations: cleared once the
    # direct forward solve is done (the adjoint's backward solve still reads it); a kept stats
    # object holds a copy of u(t_reg), not a view into the whole solution.
    from local_reg.regularization import _problems

    made = []
    original = _problems.make_brownian
    monkeypatch.setattr(
        _problems, "make_brownian", lambda *args, **kwargs: made.append(original(*args, **kwargs)) or made[-1]
    )
    sde, y0 = setup()
    model = local_reg.LocallyRegularized(sde, backend="torchsde", gradient=gradient)
    ys = model(y0, [0.0, 0.5, 1.0])
    (ys.square().sum() + model.reg_loss).backward()
    (bm,) = made
    cached = len(bm._increment_and_space_time_levy_area_cache)
    assert (cached == 0) == (gradient == "direct")
    state = model.stats.state
    assert state is not None and state._base is None and state.untyped_storage().nbytes() == state.nbytes


def _live_tensors() -> int:
    return len(live_objects(torch.Tensor))


@pytest.mark.parametrize(
    ("backend", "gradient"), [("local_reg", "direct"), ("torchsde", "direct"), (None, "sdeint")]
)
def test_training_steps_free_their_brownian_increments_without_a_collection(backend, gradient):
    """A Brownian interval made per call sits in reference cycles (torchsde's tree links back to its
    parent and top), which held its cache of batch-sized increments until a full garbage
    collection: the live tensors grew with every training step between collections."""
    import gc

    sde, y0 = setup(batch=32)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    model = None if backend is None else local_reg.LocallyRegularized(sde, backend=backend, gradient=gradient)

    def training_step() -> None:
        if model is None:
            ys = sdeint(sde, y0, t, generator=torch.Generator().manual_seed(0)).ys
            ys[-1].pow(2).mean().backward()
        else:
            (model(y0, t)[-1].pow(2).mean() + model.reg_loss).backward()

    training_step()
    gc.collect()
    gc.disable()
    try:
        before = _live_tensors()
        for _ in range(5):
            training_step()
        after = _live_tensors()
    finally:
        gc.enable()
    assert after == before


@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_torchsde_adjoint_settings_are_refused_where_nothing_reads_them(gradient):
    """torchsde.sdeint (every gradient but 'adjoint') dropped them with its own warning on every
    call; options' adjoint_params silently lost to the keyword of that name."""
    from local_reg import LocallyRegularized

    sde, _ = setup()
    if gradient == "direct":
        with pytest.raises(ValueError, match=r"options \['adjoint_rtol'\] are torchsde.sdeint_adjoint's"):
            LocallyRegularized(sde, backend="torchsde", options={"adjoint_rtol": 1e-3})
    else:
        LocallyRegularized(sde, backend="torchsde", gradient="adjoint", options={"adjoint_rtol": 1e-3})
    with pytest.raises(ValueError, match=r"unknown keys \['adjoint_params'\]"):
        LocallyRegularized(sde, backend="torchsde", gradient=gradient, options={"adjoint_params": ()})
