"""``torch.func`` transforms over the solvers: ``grad``, ``jacrev``, ``jacfwd`` and ``hessian`` of a
``gradient="direct"`` solve against the analytic derivatives of ``y' = -a y``; what they cannot run
(``vmap`` of the state, the graph-free gradient methods, ``t``'s gradient, events) is a ValueError
naming the way that works, not torch's internal error."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch.func import grad, hessian, jacfwd, jacrev, vmap

from local_reg import odeint, odeint_event, sdeint
from local_reg.compat import odeint_adjoint
from local_reg.gradients import GRADIENT_METHODS
from tests.problems import DecaySDE

RATE = 0.7
DTYPE = torch.float64


def decay(t, y):
    return -RATE * y


def end_state(y0, **options):
    return odeint(decay, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12, **options).ys[-1]


def test_the_derivative_transforms_of_a_direct_solve_are_the_analytic_ones():
    y0 = torch.tensor([1.0, -2.0], dtype=DTYPE)
    flow = math.exp(-RATE)
    expected = flow * torch.eye(2, dtype=DTYPE)
    torch.testing.assert_close(grad(lambda y: end_state(y).sum())(y0), flow * torch.ones(2, dtype=DTYPE))
    torch.testing.assert_close(jacrev(end_state)(y0), expected)
    torch.testing.assert_close(jacfwd(end_state)(y0), expected)
    # y(1)^2 summed: the Hessian is 2 e^{-2a} I (jacfwd over jacrev: jacfwd's vmap batches tangents).
    second = hessian(lambda y: end_state(y).square().sum())(y0)
    torch.testing.assert_close(second, 2 * flow**2 * torch.eye(2, dtype=DTYPE))


def test_forward_over_reverse_transforms_repeat_in_one_process():
    """The solver's cached scalars (the norm's ``1/sqrt(n)``, the tolerances) were first made inside
    the transform that first needed them, as that transform's wrapped tensors: every later nested
    transform in the process then failed with torch's internal assert. Emptied first, the cache is
    filled here inside ``hessian``."""
    import local_reg._step

    local_reg._step._cached_scalar.cache_clear()
    y0 = torch.tensor([1.0, -2.0], dtype=DTYPE)
    flow = math.exp(-RATE)

    def loss(y):
        return end_state(y).square().sum()

    for _ in range(2):
        torch.testing.assert_close(hessian(loss)(y0), 2 * flow**2 * torch.eye(2, dtype=DTYPE))
        _, product = torch.func.jvp(grad(loss), (y0,), (y0,))
        torch.testing.assert_close(product, 2 * flow**2 * y0)
        torch.testing.assert_close(grad(lambda y: end_state(y).sum())(y0), flow * torch.ones(2, dtype=DTYPE))


def test_vmap_of_the_state_is_refused_naming_the_batch_dimension():
    batch = torch.ones(3, 2, dtype=DTYPE)
    with pytest.raises(
        ValueError, match=r"odeint cannot run under torch\.func\.vmap.*y0 with a batch dimension"
    ):
        vmap(end_state)(batch)
    with pytest.raises(ValueError, match=re.escape("odeint cannot run under torch.func.vmap")):
        vmap(grad(lambda y: end_state(y).sum()))(batch)

    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=re.escape("sdeint cannot run under torch.func.vmap")):
        vmap(lambda y: sdeint(DecaySDE(), y, [0.0, 1.0], generator=generator).ys[-1])(torch.ones(3, 1, 2))


def test_vmap_of_compats_times_is_refused_as_odeint_refuses_it():
    """Batched output times through the torchdiffeq drop-in: torch's "Cannot access data pointer"
    from reading them, where odeint names vmap."""
    import local_reg.compat as torchdiffeq

    spans = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=DTYPE)
    with pytest.raises(ValueError, match=re.escape("odeint cannot run under torch.func.vmap")):
        vmap(lambda t: torchdiffeq.odeint(lambda s, y: -y, torch.ones(2, dtype=DTYPE), t))(spans)


@pytest.mark.parametrize("gradient", GRADIENT_METHODS)
def test_batched_cotangents_run_through_direct_and_are_refused_by_the_others(gradient):
    """``jacobian(vectorize=True)`` and ``autograd.grad(is_grads_batched=True)`` pass batched
    cotangents (torch's older vmap) through the backward pass: the non-finite-gradient check read
    them and failed with torch's "Batching rule not implemented for aten::is_nonzero", for every
    method; torchdiffeq's odeint runs them."""
    y0 = torch.tensor([1.0, -2.0], dtype=DTYPE)
    expected = math.exp(-RATE) * torch.eye(2, dtype=DTYPE)
    scale = torch.tensor(1.0, dtype=DTYPE, requires_grad=True)

    def solve(y):
        return end_state(y * scale, gradient=gradient, adjoint_params=())

    if gradient == "direct":
        torch.testing.assert_close(torch.autograd.functional.jacobian(solve, y0, vectorize=True), expected)
        ys = solve(y0)
        (batched,) = torch.autograd.grad(ys, scale, torch.eye(2, dtype=DTYPE), is_grads_batched=True)
        torch.testing.assert_close(batched, math.exp(-RATE) * y0)
        # In the output times too (y(t1) = e^{-a (t1 - t0)} y0), and an event's time (y' = 1 + y/2
        # from 0 reaches sum y = 2 at t = 2 ln 2; d t_event / d y0_i = -1 / rate along = -1/2).
        times = torch.tensor([0.0, 1.0], dtype=DTYPE)
        by_times = torch.autograd.functional.jacobian(
            lambda t: odeint(decay, y0, t, rtol=1e-10, atol=1e-12).ys[-1], times, vectorize=True
        )
        torch.testing.assert_close(
            by_times, RATE * math.exp(-RATE) * torch.outer(y0, torch.tensor([1.0, -1.0], dtype=DTYPE))
        )
        event = torch.autograd.functional.jacobian(
            lambda y: odeint_event(
                lambda t, u: 1 + 0.5 * u,
                y,
                torch.tensor(0.0, dtype=DTYPE),
                event_fn=lambda t, u: u.sum() - 2.0,
                adjoint_params=(),
            )[0],
            torch.zeros(2, dtype=DTYPE),
            vectorize=True,
        )
        torch.testing.assert_close(event, torch.full((2,), -0.5, dtype=DTYPE))
        return
    with pytest.raises(RuntimeError, match=f"gradient='{gradient}' takes one cotangent per backward pass"):
        torch.autograd.functional.jacobian(solve, y0, vectorize=True)


@pytest.mark.parametrize("gradient", [g for g in GRADIENT_METHODS if g != "direct"])
def test_a_graph_free_gradient_method_is_refused_naming_direct(gradient):
    with pytest.raises(
        ValueError, match=re.escape(f"odeint with gradient='{gradient}' cannot run under torch.func")
    ):
        grad(lambda y: end_state(y, gradient=gradient, adjoint_params=()).sum())(torch.ones(2, dtype=DTYPE))


@pytest.mark.parametrize("gradient", GRADIENT_METHODS)
def test_forward_mode_ad_runs_through_direct_and_is_refused_by_the_others(gradient):
    """A dual ``y0`` (``torch.autograd.forward_ad``): ``direct`` gives the tangent ``e^{-a} v``; the
    other methods' autograd Functions have no jvp, which was torch's NotImplementedError."""
    from torch.autograd import forward_ad

    y0, tangent = torch.tensor([1.0, -2.0], dtype=DTYPE), torch.tensor([1.0, 0.5], dtype=DTYPE)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(y0, tangent)
        if gradient != "direct":
            with pytest.raises(ValueError, match=r"y0 carries forward-mode tangents.*gradient='direct'"):
                end_state(dual, gradient=gradient, adjoint_params=())
            return
        out = forward_ad.unpack_dual(end_state(dual)).tangent
        # A dual t: the solve reads times as floats, so its tangent was dropped (None), silently.
        dual_t = forward_ad.make_dual(
            torch.tensor([0.0, 1.0], dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)
        )
        with pytest.raises(ValueError, match=r"t carries forward-mode tangents.*t\.requires_grad_\(\)"):
            odeint(decay, y0, dual_t)
    torch.testing.assert_close(out, math.exp(-RATE) * tangent)


@pytest.mark.parametrize("gradient", [g for g in GRADIENT_METHODS if g != "direct"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_a_dual_tensor_the_field_captures_is_refused_by_the_graph_free_methods(gradient, requires_grad):
    """Not y0, not in adjoint_params: the field's own dual tensor (a closure, a module attribute).
    Its tangent was dropped silently (None) where the same tensor listed in adjoint_params is
    refused; ``direct`` propagates it."""
    from torch.autograd import forward_ad

    y0 = torch.ones(1, dtype=DTYPE)
    with forward_ad.dual_level():
        primal = torch.tensor(0.5, dtype=DTYPE, requires_grad=requires_grad)
        rate = forward_ad.make_dual(primal, torch.tensor(1.0, dtype=DTYPE))
        direct = odeint(lambda t, y: -rate * y, y0, [0.0, 1.0], adjoint_params=())
        torch.testing.assert_close(
            forward_ad.unpack_dual(direct.ys[-1]).tangent, torch.tensor([-math.exp(-0.5)], dtype=DTYPE)
        )
        with pytest.raises(
            ValueError, match=rf"^func uses a tensor carrying forward-mode tangents.*{gradient}"
        ):
            odeint(lambda t, y: -rate * y, y0, [0.0, 1.0], gradient=gradient, adjoint_params=())
        if gradient == "checkpoint":

            class Decay:
                noise_type, sde_type = "diagonal", "ito"

                def f(self, t, y):
                    return -rate * y

                def g(self, t, y):
                    return 0.1 * torch.ones_like(y)

            with pytest.raises(ValueError, match=r"^sde uses a tensor carrying forward-mode tangents"):
                sdeint(Decay(), y0[None], [0.0, 1.0], step_size=0.5, gradient=gradient, adjoint_params=())


@pytest.mark.parametrize("gradient", [g for g in GRADIENT_METHODS if g != "direct"])
def test_a_dual_parameter_is_refused_by_the_graph_free_methods(gradient):
    """A parameter with a forward-mode tangent, in adjoint_params (requiring grad or not, as
    make_dual of a plain tensor does not): a graph-free method's autograd Function has no jvp, so
    its tangent was dropped silently (``direct`` propagates it)."""
    from torch.autograd import forward_ad

    y0 = torch.ones(1, dtype=DTYPE)
    with forward_ad.dual_level():
        for requires_grad in (False, True):
            primal = torch.tensor(0.5, dtype=DTYPE, requires_grad=requires_grad)
            rate = forward_ad.make_dual(primal, torch.tensor(1.0, dtype=DTYPE))
            direct = odeint(lambda t, y, rate=rate: -rate * y, y0, [0.0, 1.0], adjoint_params=[rate])
            tangent = forward_ad.unpack_dual(direct.ys[-1]).tangent
            torch.testing.assert_close(tangent, torch.tensor([-math.exp(-0.5)], dtype=DTYPE))
            with pytest.raises(ValueError, match=rf"adjoint_params carry forward-mode tangents.*{gradient}"):
                odeint(
                    lambda t, y, rate=rate: -rate * y,
                    y0,
                    [0.0, 1.0],
                    gradient=gradient,
                    adjoint_params=[rate],
                )

            class Decay:
                noise_type, sde_type = "diagonal", "ito"

                def f(self, t, y, rate=rate):
                    return -rate * y

                def g(self, t, y):
                    return 0.1 * torch.ones_like(y)

            with pytest.raises(ValueError, match="adjoint_params carry forward-mode tangents"):
                sdeint(
                    Decay(), y0[None], [0.0, 1.0], step_size=0.5, gradient="checkpoint", adjoint_params=[rate]
                )


def test_the_output_times_gradient_and_events_are_refused_naming_autograd():
    y0 = torch.ones(2, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"t is differentiated by a torch\.func transform.*torch\.autograd"):
        grad(lambda t1: odeint(decay, y0, torch.stack([t1.new_zeros(()), t1])).ys[-1].sum())(
            torch.tensor(1.0, dtype=DTYPE)
        )
    with pytest.raises(ValueError, match=r"odeint_event cannot run under torch\.func transforms"):
        grad(lambda y: odeint_event(decay, y, 0.0, event_fn=lambda t, y: y[0] - 0.5)[0])(y0)
    with pytest.raises(ValueError, match=re.escape("gradient='adjoint' cannot run under torch.func")):
        grad(lambda y: odeint_adjoint(decay, y, torch.tensor([0.0, 1.0]), adjoint_params=()).sum())(y0)


def test_times_made_inside_the_transformed_function_are_not_differentiated_ones():
    # torch.func wraps every tensor made inside the function; a t that does not depend on the
    # input carries no derivative, and was refused as if it did.
    y0 = torch.tensor([1.0, -2.0], dtype=DTYPE)
    flow = math.exp(-RATE)

    def end(y):
        return odeint(decay, y, torch.linspace(0.0, 1.0, 3, dtype=DTYPE), rtol=1e-10, atol=1e-12).ys[-1]

    torch.testing.assert_close(grad(lambda y: end(y).sum())(y0), flow * torch.ones(2, dtype=DTYPE))
    torch.testing.assert_close(jacrev(end)(y0), flow * torch.eye(2, dtype=DTYPE))
    torch.testing.assert_close(jacfwd(end)(y0), flow * torch.eye(2, dtype=DTYPE))
    generator = torch.Generator().manual_seed(0)
    noisy = grad(
        lambda y: (
            sdeint(DecaySDE(), y, torch.tensor([0.0, 1.0]), step_size=0.1, generator=generator).ys[-1].sum()
        )
    )(torch.ones(1, 2))
    assert noisy.shape == (1, 2) and bool(torch.isfinite(noisy).all())

    # jacfwd vmaps the solve, whose Brownian draws need randomness="same" (the docs say so): with
    # it, forward mode agrees with reverse mode on one path.
    def noisy_end(y):
        path = torch.Generator().manual_seed(1)
        return sdeint(DecaySDE(), y, torch.tensor([0.0, 1.0]), step_size=0.1, generator=path).ys[-1].sum()

    torch.testing.assert_close(
        jacfwd(noisy_end, randomness="same")(torch.ones(1, 2)), jacrev(noisy_end)(torch.ones(1, 2))
    )
    # A t that is the transformed input is still refused, under grad and under jacfwd.
    for transform in (grad, jacfwd):
        with pytest.raises(ValueError, match=re.escape("t is differentiated by a torch.func transform")):
            transform(lambda t1: odeint(decay, y0, torch.stack([t1.new_zeros(()), t1])).ys[-1].sum())(
                torch.tensor(1.0, dtype=DTYPE)
            )


class _MLPField(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def forward(self, t, y):
        return self.net(y)


def test_a_regularized_model_trained_by_torch_func_stays_a_module_that_copies_and_saves():
    """``torch.func.grad`` of a ``functional_call`` of the model (the functional training loop):
    the gradient is autograd's, and the module keeps nothing of the transform's (its ``reg_loss``,
    the probe's state, the parameters the default weight measures), which left it refusing
    ``copy.deepcopy`` and ``pickle`` ("Cannot access storage of TensorWrapper")."""
    import copy
    import pickle

    from torch.func import functional_call

    from local_reg import LocallyRegularized

    model = LocallyRegularized(_MLPField(), generator=torch.Generator().manual_seed(0))
    params = {name: p.detach() for name, p in model.named_parameters()}
    y0 = torch.randn(4, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))

    def loss(parameters):
        ys = functional_call(model, parameters, (y0, [0.0, 1.0]))
        return ys[-1].pow(2).mean() + model.reg_loss

    # The default weight says once that it measures nothing there (it stays at its initial 0.001,
    # next to no regularization: a loop trained so would not know).
    with pytest.warns(UserWarning, match=r"RatioWeight measures nothing inside torch\.func transforms"):
        gradients = grad(loss)(params)
    model.generator.manual_seed(0)
    (loss(dict(model.named_parameters()))).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(gradients[name], p.grad, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per weight
        grad(loss)(params)
    assert [id(p) for p in model.weight.parameters] == [id(p) for p in model.parameters()]
    # Not passes the weight counts either (its warning that none was measured would misadvise),
    # nor ones that close the measurement a training pass opened before its backward pass.
    assert model.weight.state_dict()["watched"] == 1
    model = LocallyRegularized(_MLPField(), generator=torch.Generator().manual_seed(0))
    training, reg_loss = model(y0, [0.0, 1.0]), model.reg_loss  # its first pass: measured
    with pytest.warns(UserWarning, match="RatioWeight measures nothing"):
        grad(loss)({name: p.detach() for name, p in model.named_parameters()})
    (training[-1].pow(2).mean() + reg_loss).backward()
    assert model.weight.state_dict()["measured"] == 1 and model.weight.last_ratio is not None
    twin = copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
    assert twin.stats.t_reg == model.stats.t_reg


def test_compats_scipy_solver_and_events_are_refused_by_their_names():
    """scipy's solve under torch.func, or with a forward-mode tangent, dropped the tangent or raised
    torch's "Cannot access data pointer"; compat's events and dense output named odeint."""
    import torch.autograd.forward_ad as forward_ad

    import local_reg.compat as torchdiffeq

    y0, t = torch.ones(2, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)
    with pytest.raises(ValueError, match=re.escape("odeint cannot run under torch.func transforms")):
        grad(lambda y: torchdiffeq.odeint(lambda s, x: -x, y, t, method="scipy_solver")[-1].sum())(y0)
    with forward_ad.dual_level():
        with pytest.raises(ValueError, match="odeint: y0 carries forward-mode tangents"):
            torchdiffeq.odeint(lambda s, x: -x, forward_ad.make_dual(y0, y0), t, method="scipy_solver")
        t0 = forward_ad.make_dual(t[0], torch.ones((), dtype=DTYPE))
        with pytest.raises(ValueError, match="odeint_event: t carries forward-mode tangents"):
            torchdiffeq.odeint_event(lambda s, x: -x, y0, t0, event_fn=lambda s, x: x[0] - 0.5)


def test_one_step_runs_under_vmap():
    """A single step decides nothing from the state's values: ``vmap`` over ``local_reg.step`` and
    ``sde_step`` gives the loop's steps (the state's finiteness check, which reads values, failed
    inside torch)."""
    from local_reg import step
    from local_reg.sde import sde_step

    states = torch.randn(5, 4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    increment = 0.3 * torch.ones(4, 3, dtype=DTYPE)

    def one_step(y):
        return step(lambda t, z: -(z**2), 0.0, y, 0.1, "tsit5").y1

    def one_sde_step(y):
        return sde_step(DecaySDE(), "diagonal", 0.0, y, 0.1, increment, rtol=1e-3, atol=1e-3).y1

    for function in (one_step, one_sde_step):
        torch.testing.assert_close(vmap(function)(states), torch.stack([function(y) for y in states]))


@pytest.mark.parametrize("entry", ["odeint", "sdeint", "odeint_event", "odeint_adjoint", "sdeint_adjoint"])
def test_jit_trace_of_a_solve_is_refused_naming_the_reason(entry):
    """A trace kept one input's accepted steps and output times as constants: other inputs got that
    input's steps (wrong values, NaN at a larger y0) and new times were ignored, without a word
    from the library (only torch's generic tracer warnings)."""

    def solve(y0):
        if entry == "odeint":
            return end_state(y0)
        if entry == "odeint_adjoint":
            return odeint_adjoint(decay, y0, torch.tensor([0.0, 1.0], dtype=DTYPE), adjoint_params=())[-1]
        if entry == "sdeint":
            return sdeint(DecaySDE(), y0.unsqueeze(0), [0.0, 1.0]).ys[-1]
        if entry == "sdeint_adjoint":
            from local_reg.compat import sdeint_adjoint

            return sdeint_adjoint(DecaySDE(), y0.unsqueeze(0), torch.tensor([0.0, 1.0], dtype=DTYPE), dt=0.1)[
                -1
            ]
        return odeint_event(decay, y0, 0.0, event_fn=lambda t, y: y[0] - 0.5)[1].ys[-1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own TracerWarnings
        named = "odeint" if entry == "odeint_adjoint" else entry  # compat's messages name odeint
        with pytest.raises(RuntimeError, match=rf"{named} cannot be traced by torch\.jit\.trace"):
            torch.jit.trace(solve, (torch.tensor([1.0, -2.0], dtype=DTYPE),))


def test_torch_export_of_a_solve_is_refused_naming_the_reason():
    """Export failed deep inside the solve's checks with torch's data-dependent guard error."""

    class FixedSteps(torch.nn.Module):
        def forward(self, y0):
            return odeint(decay, y0, torch.linspace(0.0, 1.0, 5), method="rk4", step_size=0.25).ys

    with pytest.raises(RuntimeError, match=r"odeint cannot be exported by torch\.export"):
        torch.export.export(FixedSteps(), (torch.tensor([1.0, -2.0]),))


@pytest.mark.parametrize("read", ["evaluate", "derivative"])
def test_jit_trace_of_a_dense_read_is_refused(read):
    """A traced evaluate kept its first query time's step and position: a query at 0.9 returned
    the value at 0.3, silently."""
    solution = odeint(decay, torch.tensor([1.0], dtype=DTYPE), [0.0, 1.0], dense=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own TracerWarnings
        with pytest.raises(RuntimeError, match=rf"{read} cannot be traced by torch\.jit\.trace"):
            torch.jit.trace(getattr(solution, read), (torch.tensor([0.3], dtype=DTYPE),))
