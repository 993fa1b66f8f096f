"""sdeint's gradient="checkpoint": the direct gradient without the solve's graph.

References: backpropagation through the same discrete solve (gradient="direct"), on the same
Brownian path, and finite differences (gradcheck in float64).
"""

import pytest
import torch
import torchsde

from local_reg import Checkpoint, GloballyRegularized, LocallyRegularized, PIController, SolverError
from local_reg.sde import sdeint

DTYPE = torch.float64


class NeuralSDE(torch.nn.Module):
    """A small SDE of every noise type, with parameters in the drift and the diffusion."""

    def __init__(self, noise_type="diagonal", d=3, m=2):
        super().__init__()
        self.noise_type, self.sde_type = noise_type, "ito"
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(0.5 * torch.randn(d, d, generator=generator, dtype=DTYPE))
        self.scale = torch.nn.Parameter(torch.tensor([0.3, 0.2, 0.4], dtype=DTYPE)[:d])
        self.mixing = torch.nn.Parameter(0.2 * torch.randn(d, m, generator=generator, dtype=DTYPE))
        self.grad_enabled_calls = {False: 0, True: 0}

    def f(self, t, y):
        self.grad_enabled_calls[torch.is_grad_enabled()] += 1
        return torch.tanh(y @ self.weight.T) - 0.1 * y * torch.cos(t)

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return self.scale * torch.sin(y) + 0.1
        if self.noise_type == "scalar":
            return (self.scale * torch.sin(y) + 0.1)[..., None]
        return self.mixing.expand(y.shape[0], -1, -1)  # additive


def brownian(noise_type, batch=4, d=3, m=2):
    width = {"diagonal": d, "scalar": 1, "additive": m}[noise_type]
    return torchsde.BrownianInterval(
        0.0, 1.0, size=(batch, width), dtype=DTYPE, levy_area_approximation="none", entropy=7
    )


def gradients(gradient, noise_type, loss_of=lambda ys: (ys**2).sum() + ys[2].sum(), **options):
    sde = NeuralSDE(noise_type)
    y0 = torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3).requires_grad_(True)
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=DTYPE)
    solution = sdeint(sde, y0, t, bm=brownian(noise_type), gradient=gradient, **options)
    grads = torch.autograd.grad(loss_of(solution.ys), (y0, *sde.parameters()), allow_unused=True)
    return solution, grads, sde


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive"])
@pytest.mark.parametrize("method", ["euler_maruyama", "milstein"])
@pytest.mark.parametrize(
    "steps",
    [
        {"rtol": 1e-4, "atol": 1e-4},  # adaptive, with rejections
        {"step_size": 0.05},
        # Jumps at t0 and inside the span: the drift and diffusion are evaluated beside them.
        {"rtol": 1e-3, "atol": 1e-3, "controller": PIController(jump_ts=[0.0, 0.42])},
    ],
    ids=["adaptive", "fixed", "jumps"],
)
def test_checkpoint_equals_direct(noise_type, method, steps):
    direct, expected, _ = gradients("direct", noise_type, method=method, **steps)
    checkpointed, got, sde = gradients(Checkpoint(), noise_type, method=method, **steps)
    assert torch.equal(direct.ys, checkpointed.ys.detach())  # the same forward solve
    for g_direct, g_checkpoint in zip(expected, got, strict=True):
        if g_direct is None:
            assert g_checkpoint is None or not g_checkpoint.any()
        else:
            torch.testing.assert_close(g_checkpoint, g_direct, rtol=1e-10, atol=1e-12)
    if "step_size" not in steps and noise_type == "diagonal" and method == "euler_maruyama":
        assert checkpointed.stats.n_rejected > 0
    # The forward solve kept no graph: every drift call before the backward pass ran without one.
    calls_with_grad = sde.grad_enabled_calls[True]
    assert calls_with_grad == checkpointed.stats.n_accepted  # the backward pass's re-run, one each
    # nfe_backward counts the re-run's drift and diffusion calls.
    per_step = (
        2
        + (method == "milstein" and noise_type != "additive")
        + (method == "milstein" and noise_type != "additive" and "step_size" not in steps)
    )
    assert checkpointed.stats.nfe_backward == per_step * checkpointed.stats.n_accepted


class ScaledDiffusion(NeuralSDE):
    """The diffusion's scale is the tensor ``scale`` set from outside (gradcheck's input)."""

    def g(self, t, y):
        return self.given_scale * torch.sin(y) + 0.1


def test_checkpoint_passes_gradcheck():
    """Finite differences of the fixed-step Milstein solve on one Brownian path, w.r.t. y0 and a
    diffusion parameter, against the checkpoint gradient."""
    bm = brownian("diagonal")
    sde = ScaledDiffusion("diagonal")

    def solve(y0, scale):
        sde.given_scale = scale
        return sdeint(
            sde,
            y0,
            [0.0, 0.5, 1.0],
            bm=bm,
            step_size=0.1,
            method="milstein",
            gradient="checkpoint",
            adjoint_params=(scale,),
        ).ys

    y0 = torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3).requires_grad_(True)
    scale = torch.tensor([0.3, 0.2, 0.4], dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (y0, scale), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_checkpoint_gradient_twice_with_retain_graph():
    sde = NeuralSDE("diagonal")
    y0 = torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    solution = sdeint(
        sde, y0, [0.0, 1.0], bm=brownian("diagonal"), gradient="checkpoint", rtol=1e-3, atol=1e-3
    )
    loss = solution.ys[-1].sum()
    first = torch.autograd.grad(loss, y0, retain_graph=True)[0]
    once = solution.stats.nfe_backward
    second = torch.autograd.grad(loss, y0)[0]
    assert torch.equal(first, second)
    assert solution.stats.nfe_backward == 2 * once


def test_checkpoint_of_a_plain_sde_object_needs_adjoint_params():
    class Plain:
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            self.rate = torch.tensor(0.7, dtype=DTYPE, requires_grad=True)

        def f(self, t, y):
            return -self.rate * y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    sde = Plain()
    y0 = torch.ones(2, 1, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"needs the parameters of sde.*adjoint_params"):
        sdeint(sde, y0, [0.0, 1.0], step_size=0.1, gradient="checkpoint")
    bm = torchsde.BrownianInterval(
        0.0, 1.0, size=(2, 1), dtype=DTYPE, levy_area_approximation="none", entropy=1
    )
    got = torch.autograd.grad(
        sdeint(
            sde, y0, [0.0, 1.0], bm=bm, step_size=0.1, gradient="checkpoint", adjoint_params=[sde.rate]
        ).ys.sum(),
        sde.rate,
    )[0]
    expected = torch.autograd.grad(sdeint(sde, y0, [0.0, 1.0], bm=bm, step_size=0.1).ys.sum(), sde.rate)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"gradient": "adjoint"}, "not available for sdeint: expected 'direct' or 'checkpoint'"),
        ({"gradient": "symplectic"}, "not available for sdeint"),
        ({"gradient": Checkpoint(checkpoints=4)}, r"Checkpoint\(checkpoints=4\) is ODE-only"),
        (
            {"gradient": "checkpoint", "step_penalty": lambda result, dt: result.error_estimate},
            "needs gradient='direct'",
        ),
        ({"adjoint_params": ()}, "adjoint_params is read by gradient='checkpoint' only"),
    ],
)
def test_sdeint_gradient_refusals(keywords, match):
    with pytest.raises(ValueError, match=match):
        sdeint(NeuralSDE(), torch.ones(4, 3, dtype=DTYPE), [0.0, 1.0], **keywords)


def test_checkpoint_non_finite_gradient_is_a_solver_error():
    class Kink(NeuralSDE):
        def f(self, t, y):
            # Zero, with the vector-Jacobian product of sqrt at 0: not finite.
            return self.weight.sum() * torch.sqrt(y - y)

    y0 = torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    solution = sdeint(Kink(), y0, [0.0, 1.0], bm=brownian("diagonal"), step_size=0.25, gradient="checkpoint")
    with pytest.raises(SolverError, match="vector-Jacobian product of the drift and diffusion"):
        solution.ys.sum().backward()


def test_checkpoint_warns_of_dropout_in_training_mode():
    class Dropping(NeuralSDE):
        def __init__(self):
            super().__init__()
            self.dropout = torch.nn.Dropout(0.1)

    with pytest.warns(UserWarning, match="sde's module has dropout"):
        sdeint(Dropping(), torch.ones(4, 3, dtype=DTYPE), [0.0, 1.0], step_size=0.5, gradient="checkpoint")


@pytest.mark.parametrize("sampling", ["random", "biased"])
def test_locally_regularized_sde_with_checkpoint_equals_direct(sampling):
    """The main solve of a regularized SDE may use the checkpoint gradient: the probe step is
    differentiated on its own."""
    results = []
    for gradient in ("direct", "checkpoint"):
        sde = NeuralSDE("diagonal")
        model = LocallyRegularized(sde, sampling=sampling, gradient=gradient)
        torch.manual_seed(3)
        y0 = torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3)
        ys = model(y0, torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE))
        loss = (ys**2).sum() + model.reg_loss
        results.append((ys.detach(), torch.autograd.grad(loss, list(sde.parameters()), allow_unused=True)))
    (ys_direct, direct), (ys_checkpoint, checkpoint) = results
    assert torch.equal(ys_direct, ys_checkpoint)
    for expected, got in zip(direct, checkpoint, strict=True):
        if expected is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_globally_regularized_sde_refuses_checkpoint():
    with pytest.raises(ValueError, match=r"gradient must be one of \['direct'\], got 'checkpoint'"):
        GloballyRegularized(NeuralSDE(), gradient="checkpoint")


def test_locally_regularized_sde_refuses_checkpoints_budget():
    with pytest.raises(ValueError, match=r"Checkpoint\(checkpoints=2\) is ODE-only"):
        LocallyRegularized(NeuralSDE(), gradient=Checkpoint(checkpoints=2))


def test_checkpoint_refuses_torch_func_transforms_and_forward_mode():
    """Its torch.autograd.Function runs under torch.autograd only: grad and forward-mode AD are
    refused by name (torch's own errors come from deep inside the solve)."""
    from torch.autograd import forward_ad
    from torch.func import grad

    def solve(y0):
        return sdeint(
            NeuralSDE(), y0, [0.0, 1.0], bm=brownian("diagonal"), step_size=0.5, gradient="checkpoint"
        )

    with pytest.raises(ValueError, match=r"sdeint with gradient='checkpoint' cannot run under torch.func"):
        grad(lambda y0: solve(y0).ys.sum())(torch.ones(4, 3, dtype=DTYPE))
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(torch.ones(4, 3, dtype=DTYPE), torch.ones(4, 3, dtype=DTYPE))
        with pytest.raises(ValueError, match="forward mode runs through gradient='direct' only"):
            solve(dual)
