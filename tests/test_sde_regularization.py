"""SDE regularizers: the penalty is the solver's own EEst * |dt| on the same Brownian path, its
gradient reaches drift and diffusion parameters, every backend works, and minimizing it makes the
SDE cheaper to solve."""

from __future__ import annotations

import pytest
import torch
import torchsde

import local_reg
from local_reg import RegularizationStats, global_regularization, local_regularization
from local_reg.sde import is_sde, sdeint

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
        out = d if noise_type == "diagonal" else d
        self.diffusion = torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out)
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
