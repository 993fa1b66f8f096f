"""sdeint's gradient="checkpoint": the direct gradient without the solve's graph.

References: backpropagation through the same discrete solve (gradient="direct"), on the same
Brownian path, and finite differences (gradcheck in float64).
"""

import warnings

import pytest
import torch
import torchsde

from local_reg import Checkpoint, GloballyRegularized, LocallyRegularized, PIController, SolverError, compat
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
    # Backpropagation makes no calls of its own: 0 once run, as odeint's "direct" (it stayed None,
    # which means "not known").
    assert direct.stats.nfe_backward == 0


def test_checkpoint_runs_a_parameters_gradient_hook_once_on_the_whole_gradient():
    """The re-run steps were differentiated with respect to the parameters, which ran a hook
    registered on one on each step's part of its gradient (a doubling hook gave 4x)."""
    _, expected, _ = gradients("direct", "diagonal", step_size=0.1)
    calls = []

    def doubled(grad):
        calls.append(1)
        return 2 * grad

    sde = NeuralSDE("diagonal")
    sde.weight.register_hook(doubled)
    y0 = torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3)
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=DTYPE)
    ys = sdeint(sde, y0, t, bm=brownian("diagonal"), gradient=Checkpoint(), step_size=0.1).ys
    ((ys**2).sum() + ys[2].sum()).backward()
    assert len(calls) == 1
    torch.testing.assert_close(sde.weight.grad, 2 * expected[1], rtol=1e-10, atol=1e-12)


class ScaledDiffusion(NeuralSDE):
    """The diffusion's scale is the tensor ``scale`` set from outside (gradcheck's input)."""

    def g(self, t, y):
        return self.given_scale * torch.sin(y) + 0.1


def test_checkpoint_passes_gradcheck():
    """Finite differences of the fixed-step Milstein solve on one Brownian path, w.r.t. y0 and a
    diffusion parameter, against the checkpoint gradient."""
    bm = brownian("diagonal")
    sde = ScaledDiffusion("diagonal").requires_grad_(False)  # y0 and scale are gradcheck's inputs

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
    ],
)
def test_sdeint_gradient_refusals(keywords, match):
    with pytest.raises(ValueError, match=match):
        sdeint(NeuralSDE(), torch.ones(4, 3, dtype=DTYPE), [0.0, 1.0], **keywords)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_a_non_finite_gradient_is_a_solver_error(gradient):
    """``direct`` returned the NaN gradient silently, where ``checkpoint`` and every odeint method
    raise."""

    class Kink(NeuralSDE):
        def f(self, t, y):
            # Zero, with the vector-Jacobian product of sqrt at 0: not finite.
            return self.weight.sum() * torch.sqrt(y - y)

    y0 = torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    solution = sdeint(Kink(), y0, [0.0, 1.0], bm=brownian("diagonal"), step_size=0.25, gradient=gradient)
    with pytest.raises(SolverError, match="vector-Jacobian product of the drift and diffusion"):
        solution.ys.sum().backward()


def test_a_parameter_frozen_between_the_passes_gets_no_gradient():
    """As under ``direct`` and in plain torch (the checkpoint's re-run differentiated it, which torch
    refuses: "One of the differentiated Tensors does not require grad")."""
    sde, y0 = NeuralSDE(), torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    solve = dict(bm=brownian("diagonal"), step_size=0.25)
    sde.scale.requires_grad_(False)
    expected = torch.autograd.grad(sdeint(sde, y0, [0.0, 1.0], **solve).ys.sum(), sde.weight)[0]
    sde.scale.requires_grad_(True)
    ys = sdeint(sde, y0, [0.0, 1.0], gradient="checkpoint", **solve).ys
    sde.scale.requires_grad_(False)
    ys.sum().backward()
    assert sde.scale.grad is None
    torch.testing.assert_close(sde.weight.grad, expected)


def test_anomaly_mode_names_the_failing_operation_of_a_checkpoint_backward_pass():
    """The backward node's name() was hidden by a context attribute, so anomaly mode, which reads
    it when a nested backward fails, raised "attribute of type 'str' is not callable"."""

    class Kink(NeuralSDE):
        def f(self, t, y):
            return self.weight.sum() * torch.sqrt(y - y)

    y0 = torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    solve = dict(bm=brownian("diagonal"), step_size=0.25, gradient="checkpoint")
    assert sdeint(NeuralSDE(), y0, [0.0, 1.0], **solve).ys.grad_fn.name() == "_SolveWithoutGraphBackward"
    with (
        torch.autograd.set_detect_anomaly(True),
        pytest.warns(UserWarning, match="Error detected in"),
        pytest.raises(RuntimeError, match=r"Function '[A-Za-z]+Backward0' returned nan values"),
    ):
        sdeint(Kink(), y0, [0.0, 1.0], **solve).ys.sum().backward()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_a_generator_re_run_by_torch_utils_checkpoint_is_refused(use_reentrant):
    """The recomputation replays torch's global stream, not the generator: the gradient was that of
    another Brownian path, silently (as the SDE models refuse it)."""
    sde = NeuralSDE()
    y0 = torch.ones(4, 3, dtype=DTYPE, requires_grad=True)
    generator = torch.Generator().manual_seed(3)

    def end(y):
        return sdeint(sde, y, [0.0, 1.0], step_size=0.1, generator=generator).ys[-1]

    ys = torch.utils.checkpoint.checkpoint(end, y0, use_reentrant=use_reentrant)
    with pytest.raises(RuntimeError, match="sdeint is re-run inside a backward pass"):
        ys.sum().backward()

    # A generator seeded inside the checkpointed function replays its path: the plain gradient.
    def seeded(y):
        return sdeint(sde, y, [0.0, 1.0], step_size=0.1, generator=torch.Generator().manual_seed(3)).ys[-1]

    y0.grad = None
    torch.utils.checkpoint.checkpoint(seeded, y0, use_reentrant=use_reentrant).sum().backward()
    torch.testing.assert_close(y0.grad, torch.autograd.grad(seeded(y0).sum(), y0)[0])
    # A solve under no_grad inside a backward hook is no re-run.
    drawn = torch.Generator().manual_seed(4)
    torch.randn(1, generator=drawn)  # it has drawn before

    def hook(grad):
        with torch.no_grad():
            sdeint(sde, y0.detach(), [0.0, 1.0], step_size=0.1, generator=drawn)
        return grad

    y = y0 * 1.0
    y.register_hook(hook)
    y.sum().backward()
    # Without a generator of its own, the re-run reads torch's replayed stream: the same gradient.
    torch.manual_seed(5)
    expected = torch.autograd.grad(sdeint(sde, y0, [0.0, 1.0], step_size=0.1).ys[-1].sum(), y0)[0]
    torch.manual_seed(5)
    y0.grad = None
    torch.utils.checkpoint.checkpoint(
        lambda y: sdeint(sde, y, [0.0, 1.0], step_size=0.1).ys[-1], y0, use_reentrant=use_reentrant
    ).sum().backward()
    torch.testing.assert_close(y0.grad, expected)


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


def _scalar_rate_sde():
    class Rate(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor(-0.7, dtype=DTYPE))

        def f(self, t, y):
            return self.rate * y

        def g(self, t, y):
            return 0.2 * y

    return Rate()


def _solve_rate(sde, y0, gradient, bm=None, **keywords):
    bm = brownian("diagonal", batch=2, d=1) if bm is None else bm
    return sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, step_size=0.1, gradient=gradient, **keywords).ys


@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_a_second_backward_pass_without_retain_graph_is_autograds_error(gradient):
    """The checkpoint's records are dropped after its backward pass: a second pass through the same
    graph gave y0 the output's cotangent as its gradient, silently."""
    y0 = torch.ones(2, 1, dtype=DTYPE, requires_grad=True)
    ys = _solve_rate(_scalar_rate_sde(), y0, gradient)
    ys[1].sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        ys[2].sum().backward()


@pytest.mark.parametrize("change", ["in place", "replaced"])
def test_parameters_changed_before_the_backward_pass_are_refused(change):
    """The re-run would differentiate another solve (an optimizer step between the two passes)."""
    sde = _scalar_rate_sde()
    y0 = torch.ones(2, 1, dtype=DTYPE, requires_grad=True)
    ys = _solve_rate(sde, y0, "checkpoint")
    if change == "in place":
        with torch.no_grad():
            sde.rate.mul_(3.0)
        match = "modified by an inplace operation"
    else:
        sde.rate = torch.nn.Parameter(torch.tensor(-2.0, dtype=DTYPE))
        match = "sde's module holds other parameter tensors"
    with pytest.raises(RuntimeError, match=match):
        ys.sum().backward()


def test_a_buffer_swapped_in_for_the_forward_call_only_is_put_back_for_the_backward_pass():
    """``torch.func.functional_call`` swaps buffers too: the re-run read the module's own and the
    gradient was 2x off, silently; the solve's are put back, and it is direct's."""
    from torch.func import functional_call

    sde = _scalar_rate_sde()
    sde.register_buffer("gain", torch.tensor(1.0, dtype=DTYPE))
    sde.f = lambda t, y: sde.gain * sde.rate * y
    y0 = torch.ones(2, 1, dtype=DTYPE)
    bm = brownian("diagonal", batch=2, d=1)

    class Holder(torch.nn.Module):
        def __init__(self, gradient):
            super().__init__()
            self.sde, self.gradient = sde, gradient

        def forward(self):
            return _solve_rate(sde, y0, self.gradient, bm=bm)

    grads = []
    for gradient in ("direct", "checkpoint"):
        sde.rate.grad = None
        functional_call(Holder(gradient), {"sde.gain": torch.tensor(0.5, dtype=DTYPE)}, ()).sum().backward()
        grads.append(sde.rate.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    assert float(sde.gain) == 1.0
    # A buffer the drift itself replaces on each call (a counter) is the module's own: it passes, and
    # the gradient is direct's.
    counted = _scalar_rate_sde()
    counted.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def drift(t, y):
        counted.calls = counted.calls + 1
        return counted.rate * y

    counted.f = drift
    grads = []
    for gradient in ("direct", "checkpoint"):
        counted.rate.grad = None
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _solve_rate(counted, y0, gradient, bm=bm).sum().backward()
        grads.append(counted.rate.grad.clone())
        # The graph-free re-run reads the counter's last value: said (the drift here does not read it).
        named = [w for w in seen if "sde's module changed its buffer(s) 'calls'" in str(w.message)]
        assert bool(named) == (gradient == "checkpoint")
    torch.testing.assert_close(grads[1], grads[0])


def test_second_derivatives_are_refused_not_zero():
    y0 = torch.ones(2, 1, dtype=DTYPE)
    with pytest.raises(RuntimeError, match="gives first derivatives only"):
        torch.autograd.functional.hessian(
            lambda y: _solve_rate(_scalar_rate_sde(), y, "checkpoint").pow(2).sum(), y0
        )


def test_a_captured_tensor_that_requires_grad_is_refused():
    """A latent SDE's context kept on the module gets no gradient from a graph-free method."""
    sde = _scalar_rate_sde()
    context = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)
    sde.f = lambda t, y: sde.rate * y + context
    ys = _solve_rate(sde, torch.ones(2, 1, dtype=DTYPE), "checkpoint")
    with pytest.raises(
        ValueError, match=r"sde uses 1 tensor\(s\) that require grad but are not in adjoint_params"
    ):
        ys.sum().backward()


def test_a_captured_leaf_returned_as_is_is_refused():
    # A diffusion returning a captured leaf itself (no graph to walk) got no gradient, silently.
    sde = _scalar_rate_sde()
    scale = torch.tensor([[0.3], [0.4]], dtype=DTYPE, requires_grad=True)
    sde.g = lambda t, y: scale
    ys = _solve_rate(sde, torch.ones(2, 1, dtype=DTYPE, requires_grad=True), "checkpoint")
    with pytest.raises(
        ValueError, match=r"sde uses 1 tensor\(s\) that require grad but are not in adjoint_params"
    ):
        ys.sum().backward()


@pytest.mark.parametrize("part", ["f", "g"])
def test_a_captured_tensor_is_named_when_nothing_else_requires_grad(part):
    """A frozen SDE and a y0 without grad record nothing: the backward pass's check never ran, and
    a context the drift or diffusion read got no gradient, silently. The first evaluation tells."""
    sde = _scalar_rate_sde().requires_grad_(False)
    context = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)
    if part == "f":
        sde.f = lambda t, y: sde.rate * y + context
    else:
        sde.g = lambda t, y: context * y
    y0 = torch.ones(2, 1, dtype=DTYPE)
    with pytest.raises(
        ValueError,
        match=r"gradient='checkpoint' \(what local_reg\.compat\.sdeint_adjoint runs\): sde uses 1 "
        r"tensor\(s\) that require grad but are not in adjoint_params .* \(gradient='direct' \(in "
        r"local_reg\.compat: sdeint, not sdeint_adjoint\)",
    ):
        _solve_rate(sde, y0, "checkpoint")
    with pytest.raises(
        ValueError, match=r"gradient='checkpoint' \(what local_reg\.compat\.sdeint_adjoint runs\)"
    ):
        compat.sdeint_adjoint(sde, y0, torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE), dt=0.1)
    with torch.no_grad():
        inferred = _solve_rate(sde, y0, "checkpoint")
    direct = _solve_rate(sde, y0, "direct")  # differentiates the context: nothing to refuse
    assert direct.requires_grad
    torch.testing.assert_close(direct.detach(), inferred, rtol=0, atol=0)


def test_a_drift_that_differentiates_itself_makes_leaves_of_its_own_not_captures():
    """A Langevin drift -grad U(y) by autograd inside f, from a leaf of its own: a frozen SDE solves
    under the checkpoint gradient as under no_grad (its leaf died with the first evaluation's
    graph); the same drift reading a captured tensor that requires grad is refused."""
    sde = _scalar_rate_sde().requires_grad_(False)
    scale = torch.tensor(0.8, dtype=DTYPE)

    def drift(t, y):
        with torch.enable_grad():
            x = y.detach().requires_grad_()
            (gradient,) = torch.autograd.grad((scale * x.pow(4)).sum(), x, create_graph=True)
        return -gradient

    sde.f = drift
    y0 = torch.full((2, 1), 0.5, dtype=DTYPE)
    with torch.no_grad():
        reference = _solve_rate(sde, y0, "checkpoint")
    torch.testing.assert_close(_solve_rate(sde, y0, "checkpoint"), reference, rtol=0, atol=0)
    scale = torch.tensor(0.8, dtype=DTYPE, requires_grad=True)
    with pytest.raises(ValueError, match=r"sde uses 1 tensor\(s\) that require grad"):
        _solve_rate(sde, y0, "checkpoint")


def test_a_parameter_derived_outside_the_sde_keeps_its_graph():
    """w = raw.exp() captured, raw listed: every re-run step differentiates through w's graph."""
    raw = torch.tensor(-0.3, dtype=DTYPE, requires_grad=True)

    def gradient_of(gradient):
        sde = _scalar_rate_sde().requires_grad_(False)
        weight = raw.exp()
        sde.f = lambda t, y: -weight * y
        keywords = {"adjoint_params": [raw]} if gradient == "checkpoint" else {}
        ys = _solve_rate(sde, torch.ones(2, 1, dtype=DTYPE), gradient, **keywords)
        return torch.autograd.grad(ys.sum(), raw)[0]

    torch.testing.assert_close(gradient_of("checkpoint"), gradient_of("direct"), rtol=1e-12, atol=0)


def test_a_brownian_motion_that_refills_one_buffer():
    """Each kept increment is a copy: a bm answering into one buffer left every kept increment the
    last one, a wrong gradient."""
    inner = brownian("diagonal", batch=2, d=1)
    buffer = torch.empty(2, 1, dtype=DTYPE)

    def refilling(ta, tb):
        return buffer.copy_(inner(ta, tb))

    sde = _scalar_rate_sde()
    y0 = torch.ones(2, 1, dtype=DTYPE)
    got = torch.autograd.grad(_solve_rate(sde, y0, "checkpoint", bm=refilling).sum(), sde.rate)[0]
    expected = torch.autograd.grad(_solve_rate(sde, y0, "direct", bm=inner).sum(), sde.rate)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_no_records_where_nothing_is_differentiated(monkeypatch):
    """Under no_grad (inference) no backward pass comes: no step's state or increment is kept."""
    from local_reg.sde import _checkpoint

    kept = []
    original = _checkpoint.RecordingStepper.increment

    def counted(self, t, t_next):
        kept.append(t)
        return original(self, t, t_next)

    monkeypatch.setattr(_checkpoint.RecordingStepper, "increment", counted)
    sde = _scalar_rate_sde()
    with torch.no_grad():
        solution = sdeint(
            sde, torch.ones(2, 1, dtype=DTYPE), [0.0, 1.0], step_size=0.01, gradient="checkpoint"
        )
    assert solution.ys.grad_fn is None and not kept
    _solve_rate(sde, torch.ones(2, 1, dtype=DTYPE), "checkpoint")
    assert len(kept) == 10  # with a parameter to differentiate, every step is kept


def test_backward_inside_inference_mode_runs():
    sde = _scalar_rate_sde()
    y0 = torch.ones(2, 1, dtype=DTYPE, requires_grad=True)
    loss = _solve_rate(sde, y0, "checkpoint").sum()
    expected = torch.autograd.grad(_solve_rate(sde, y0, "direct").sum(), y0)[0]
    with torch.inference_mode():
        loss.backward()
    torch.testing.assert_close(y0.grad, expected, rtol=1e-12, atol=0)


def test_general_noise_checkpoint_equals_direct():
    class General(NeuralSDE):
        def g(self, t, y):
            return torch.tanh(y)[..., None] * self.mixing  # (batch, d, m), depending on y

    results = []
    for gradient in ("direct", "checkpoint"):
        sde = General("general")
        y0 = torch.linspace(-1.0, 1.0, 12, dtype=DTYPE).reshape(4, 3).requires_grad_(True)
        bm = brownian("additive")
        solution = sdeint(sde, y0, [0.0, 0.5, 1.0], bm=bm, step_size=0.05, gradient=gradient)
        results.append((solution, torch.autograd.grad((solution.ys**2).sum(), (y0, sde.weight, sde.mixing))))
    (_, expected), (checkpointed, got) = results
    for g_direct, g_checkpoint in zip(expected, got, strict=True):
        torch.testing.assert_close(g_checkpoint, g_direct, rtol=1e-10, atol=1e-12)
    assert checkpointed.stats.nfe_backward == 2 * checkpointed.stats.n_accepted
