"""Paths a user can reach that no other test executed (found by a coverage run): refusals that name
their argument, rarely used inputs (empty tuple states, one output time, builtin vector fields), and
the model's generator under ForkingPickler and checkpointing. Each is checked against torchdiffeq,
an analytic value or a hand calculation from the documented formula."""

import math
import pickle
import warnings
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torchdiffeq
from torch.utils.checkpoint import checkpoint

import local_reg
from local_reg import (
    AdaptiveWeight,
    ConstantWeight,
    GradientRatio,
    LocallyRegularized,
    PIController,
    Regularized,
    StepCallbacks,
    compat,
    odeint,
    sdeint,
)
from local_reg.sde import sde_initial_step_size
from tests.problems import ConstantNoiseSDE

F64 = torch.float64
T01 = torch.tensor([0.0, 1.0], dtype=F64)


class Decay(torch.nn.Module):
    """y' = -a y, a = 1 (dy(1)/da = -e^{-1}), with torchdiffeq's adjoint step callback."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def forward(self, t, y):
        return -self.a * y

    def callback_step_adjoint(self, t, y, dt):
        pass


class Tanh(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2).double()

    def forward(self, t, y):
        return torch.tanh(self.linear(y))


# --- local_reg.compat -------------------------------------------------------------------------------


def test_compat_tuple_of_empty_tensors_gives_empty_outputs():
    """A tuple y0 of empty tensors: each output is (len(t), *y0[i].shape), as for any tuple state."""
    y0 = (torch.empty(0, dtype=F64), torch.empty(3, 0, dtype=F64))
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    ys = compat.odeint(lambda t, y: tuple(-v for v in y), y0, t)
    assert isinstance(ys, tuple) and len(ys) == 2
    assert ys[0].shape == (3, 0) and ys[1].shape == (3, 3, 0)
    assert ys[0].dtype == F64 and ys[1].dtype == F64


def test_compat_scipy_solver_with_one_time_matches_torchdiffeq():
    """method='scipy_solver' with len(t) == 1 returns y0 stacked once, as torchdiffeq does."""
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    t = torch.tensor([0.3], dtype=F64)
    ours = compat.odeint(lambda t, y: -y, y0, t, method="scipy_solver")
    theirs = torchdiffeq.odeint(lambda t, y: -y, y0, t, method="scipy_solver")
    assert ours.shape == theirs.shape == (1, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # A copy, as torchdiffeq's: an in-place change of the outputs left y0 changed too.
    ours[0, 0] = 100.0
    assert y0.tolist() == [1.0, -2.0]


def test_compat_adjoint_warns_about_callback_step_adjoint_and_differentiates():
    """func.callback_step_adjoint is not called (a warning says so); the gradient is still -e^{-1}."""
    module = Decay()
    with pytest.warns(UserWarning, match="callback_step_adjoint"):
        ys = compat.odeint_adjoint(module, torch.tensor([1.0], dtype=F64), T01)
    ys[-1].sum().backward()
    assert module.a.grad is not None
    assert float(module.a.grad) == pytest.approx(-math.exp(-1.0), rel=1e-6)


def test_compat_adjoint_method_differing_with_options_is_refused_as_by_torchdiffeq():
    """adjoint_method != method with options and no adjoint_options: torchdiffeq refuses, so does compat."""
    y0 = torch.tensor([1.0], dtype=F64)
    kwargs = {"method": "dopri5", "options": {"first_step": 0.1}, "adjoint_method": "bosh3"}
    with pytest.raises(ValueError, match="adjoint_options"):
        torchdiffeq.odeint_adjoint(Decay(), y0, T01, **kwargs)  # the reference behaviour
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Decay's callback_step_adjoint warning
        with pytest.raises(ValueError, match="adjoint_options"):
            compat.odeint_adjoint(Decay(), y0, T01, **kwargs)


def test_compat_event_with_fixed_step_adjoint_method_needs_its_step_size():
    """event_fn with adjoint_method='rk4' and no adjoint step size is refused naming the option."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"adjoint_options\['step_size'\]"):
            compat.odeint_adjoint(
                Decay(),
                torch.tensor([1.0], dtype=F64),
                torch.tensor([0.0, 2.0], dtype=F64),
                event_fn=lambda t, y: y[0] - 0.5,
                adjoint_method="rk4",
            )


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"method": 3}, TypeError, "method"),
        ({"method": "bogus"}, ValueError, "method"),
        ({"options": "x"}, TypeError, "options"),
        ({"options": {"dtype": "float64"}}, TypeError, r"options\['dtype'\]"),
    ],
)
def test_compat_bad_method_or_options_types_are_refused_by_name(kwargs, error, name):
    """A method or options of the wrong type or value is refused naming the argument."""
    with pytest.raises(error, match=name):
        compat.odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64), T01, **kwargs)


# --- controller, Solution, modules ------------------------------------------------------------------


@pytest.mark.parametrize("safety", [0.0, 1.5, math.nan])
def test_controller_safety_outside_unit_interval_is_refused(safety):
    """PIController's safety factor must lie in (0, 1]: 0, 1.5 and NaN are refused by name."""
    with pytest.raises(ValueError, match="safety"):
        PIController(safety=safety)


@pytest.mark.parametrize("use", [lambda s: s[0], lambda s: s + 1], ids=["getitem", "add"])
@pytest.mark.parametrize(
    "solve",
    [
        lambda: odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64), [0.0, 1.0]),
        lambda: sdeint(ConstantNoiseSDE(), torch.ones(1, 1, dtype=F64), [0.0, 1.0], step_size=0.5),
    ],
    ids=["odeint", "sdeint"],
)
def test_solution_used_as_a_tensor_points_to_ys(use, solve):
    """Indexing or adding to a Solution (torchdiffeq's and torchsde's habit) raises a TypeError
    naming solution.ys and the compatibility layer, not only odeint's."""
    with pytest.raises(TypeError, match=r"odeint and sdeint return a Solution.*solution\.ys.*compat"):
        use(solve())


@pytest.mark.parametrize("module", [local_reg.sde, local_reg.regularization], ids=["sde", "regularization"])
def test_unknown_submodule_attribute_is_an_attribute_error(module):
    """A module-level __getattr__ still raises AttributeError for a name it does not know."""
    with pytest.raises(AttributeError, match="nonexistent"):
        module.nonexistent  # noqa: B018
    assert not hasattr(module, "nonexistent")


def test_sde_regularization_stats_is_a_deprecated_alias():
    """SDERegularizationStats warns DeprecationWarning and is RegularizationStats itself."""
    with pytest.warns(DeprecationWarning, match="RegularizationStats"):
        cls = local_reg.regularization.SDERegularizationStats
    assert cls is local_reg.RegularizationStats


# --- sdeint and its first step ----------------------------------------------------------------------


def test_sdeint_refuses_diffrax_dt0_naming_the_fixed_step_and_the_first_step():
    """A diffrax program's ``dt0`` is a fixed step under its default ConstantStepSize. Read as the
    first step of an adaptive solve at rtol=atol=1e-2 (with a DeprecationWarning that Python hides
    outside ``__main__``), a ported ``sdeint(..., dt0=0.01)`` took 7 steps, not 100."""
    y0 = torch.ones(2, 1, dtype=F64)
    for keywords in ({"dt0": 0.01}, {"dt0": 0.01, "first_step": 0.01}):
        with pytest.raises(
            TypeError,
            match=r"^sdeint\(\) got an unexpected keyword argument 'dt0' \(diffrax's dt0: step_size= "
            r".*first_step=",
        ):
            sdeint(ConstantNoiseSDE(), y0, [0.0, 1.0], **keywords)


def test_sdeint_refuses_step_penalty_with_fixed_step_size():
    """A step penalty needs the error estimate of the adaptive mode: with step_size it is refused."""
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(ValueError, match="step_size"):
        sdeint(
            ConstantNoiseSDE(), y0, [0.0, 1.0], step_size=0.01, step_penalty=lambda r, dt: r.error_estimate
        )


def test_sde_initial_step_size_without_t_end_follows_its_docstring():
    """h0 = 0.01 d0/d1, one trial step, h = h0 min(100, 0.9 EEst^-1) (order 1), worked out by hand."""
    rtol, atol = 1e-5, 1e-8
    sde, y0 = ConstantNoiseSDE(), torch.ones(2, 1, dtype=F64)
    t0 = torch.tensor(0.0, dtype=F64)
    h, nfe_drift, nfe_diffusion = sde_initial_step_size(
        sde, "diagonal", 0.0, y0, sde.f(t0, y0), sde.g(t0, y0), rtol, atol, t_end=None
    )
    # y0 = 1, f0 = -1, g0 = 0.1 in every component: d0 = 1 / s, d1 = (1 + 3 * 0.1) / s.
    s0 = atol + rtol * 1.0
    h0 = 0.01 * (1.0 / s0) / (1.3 / s0)
    # Trial with dW = sqrt(2 h0): K = 1 - h0, y1 = K + 0.1 dW; the diffusion is constant (E_N = 0),
    # E_D = h0/2 |f(K) - f0| = h0/2 * h0, weighted by 1/6.
    y1 = 1.0 - h0 + 0.1 * math.sqrt(2.0 * h0)
    eest = (h0 * h0 / 12.0) / (atol + rtol * max(1.0, y1))
    expected = h0 * min(100.0, 0.9 * eest**-1.0)
    assert 0.9 / eest < 100.0  # the tolerance-scaled branch, not the growth cap
    assert h == pytest.approx(expected, rel=1e-12)
    assert (nfe_drift, nfe_diffusion) == (1, 1)  # f at the predictor, g at the shifted state


# --- weight schedules and the gradient ratio --------------------------------------------------------


@pytest.mark.parametrize("iteration", ["3", 2.5])
def test_schedule_load_state_dict_refuses_a_non_integer_iteration(iteration):
    """A non-integer iteration is refused (ValueError) and leaves the schedule as it was."""
    weight = ConstantWeight(1.0)
    with pytest.raises(ValueError, match="iteration"):
        weight.load_state_dict({"iteration": iteration})
    assert weight.iteration == 0


def test_adaptive_weight_sequence_matches_the_docstring_formula():
    """A step() before any observe() leaves w alone; then EMA/bias correction/baseline/sign steps by hand."""
    rate, beta, loss_rise = 0.1, 0.9, 0.05
    weight = AdaptiveWeight(1.0, warmup=0, rate=rate, beta=beta, loss_rise=loss_rise)
    assert weight.step() == 1.0  # nothing measured: no update of log w
    assert weight.baseline is None

    ema, log_w, best = 0.0, 0.0, math.inf
    for k, loss in enumerate([2.0, 1.0, 3.0], start=1):
        ema = beta * ema + (1 - beta) * loss
        mean = ema / (1 - beta**k)
        best = min(best, mean)
        direction = -1.0 if mean > best + loss_rise * abs(best) else 1.0
        log_w += rate * direction
        weight.observe(loss)
        assert weight.step() == pytest.approx(math.exp(log_w), rel=1e-12)
        assert weight.baseline == pytest.approx(best, rel=1e-12)
    # The three observations gave +1, +1 (within the allowance) and -1 (3.0 lifts the mean above it).
    assert log_w == pytest.approx(0.1)


def test_gradient_ratio_with_an_unused_parameter_matches_autograd():
    """A parameter nothing depends on does not change the ratio ||dR/dθ|| / ||dL/dθ||."""
    func = Tanh()
    unused = torch.nn.Parameter(torch.ones(2, dtype=F64))
    model = LocallyRegularized(func, weight=1.0)
    ratio = GradientRatio([*func.parameters(), unused])
    y0 = torch.randn(4, 2, dtype=F64)
    task = model(y0, T01)[-1].pow(2).sum()
    used = list(func.parameters())
    penalty_grads = torch.autograd.grad(model.reg_loss, used, retain_graph=True)
    task_grads = torch.autograd.grad(task, used, retain_graph=True)
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in penalty_grads)) / math.sqrt(
        sum(float(g.pow(2).sum()) for g in task_grads)
    )
    ratio.before_backward(model.reg_loss)
    (task + model.reg_loss).backward()
    assert unused.grad is None
    assert ratio.after_backward() == pytest.approx(expected, rel=1e-9)


# --- the model's generator --------------------------------------------------------------------------


def test_forking_pickler_gives_the_model_its_own_generator_in_the_same_state():
    """ForkingPickler (multiprocessing) copies the generator: same next draws, independent streams."""
    generator = torch.Generator().manual_seed(5)
    torch.rand(3, generator=generator)  # not at its seed's start
    model = LocallyRegularized(Tanh(), generator=generator)
    copy = pickle.loads(ForkingPickler.dumps(model))
    assert copy.generator is not model.generator
    assert torch.equal(torch.rand(4, generator=copy.generator), torch.rand(4, generator=model.generator))
    second = torch.rand(4, generator=copy.generator)
    torch.rand(4, generator=copy.generator)  # the copy draws on ...
    assert torch.equal(torch.rand(4, generator=model.generator), second)  # ... the original did not move


def test_eval_model_with_generator_under_non_reentrant_checkpoint_has_the_same_gradient():
    """In eval mode nothing is drawn, so checkpointing the model leaves the y0 gradient unchanged."""
    model = LocallyRegularized(Tanh(), generator=torch.Generator().manual_seed(7)).eval()
    y0 = torch.randn(4, 2, dtype=F64)
    grads = []
    for checkpointed in (False, True):
        y = y0.clone().requires_grad_()
        ys = checkpoint(model, y, T01, use_reentrant=False) if checkpointed else model(y, T01)
        (grad,) = torch.autograd.grad(ys[-1].pow(2).sum(), y)
        grads.append(grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


# --- odeint under torch.func, stop conditions, builtin vector fields --------------------------------


def test_func_grad_through_dense_odeint_is_e():
    """d/dy0 of y(1) for y' = y is e^1, through torch.func.grad with dense output kept."""

    def final(y):
        return odeint(lambda t, y: y, y, [0.0, 1.0], dense=True).ys[-1].sum()

    grad = torch.func.grad(final)(torch.ones(1, dtype=F64))
    assert float(grad) == pytest.approx(math.e, rel=1e-6)


@pytest.mark.parametrize("outside", [lambda t0, t1: t1 + 1.0, lambda t0, t1: t0], ids=["after", "at-t0"])
def test_stop_returning_a_time_outside_the_step_is_refused(outside):
    """StepCallbacks.stop must return a time in (t0, t1] of the step, else ValueError."""
    callbacks = StepCallbacks(stop=lambda t0, t1, y, dense: outside(t0, t1))
    with pytest.raises(ValueError, match="outside the step"):
        odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64), [0.0, 1.0], callbacks=callbacks)


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (lambda t1: torch.tensor([t1, t1]), TypeError, r"tensor of shape \(2,\)"),
        (lambda t1: "t1", TypeError, "got str"),
        (lambda t1: math.nan, ValueError, "finite, got nan"),
    ],
    ids=["two-element tensor", "str", "nan"],
)
def test_stop_returning_no_time_is_named(returned, error, match):
    """What stop returns is a time: a tensor of two reached torch's "Boolean value of Tensor with
    more than one value is ambiguous", a string Python's "unsupported operand type(s)"."""
    callbacks = StepCallbacks(stop=lambda t0, t1, y, dense: returned(t1))
    with pytest.raises(error, match=f"the time callbacks.stop returned must be .*{match}"):
        odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64), [0.0, 1.0], callbacks=callbacks)
    # A 0-dim tensor is a time, as everywhere times are taken.
    callbacks = StepCallbacks(stop=lambda t0, t1, y, dense: torch.tensor(t1, dtype=F64))
    solution = odeint(lambda t, y: -y, torch.tensor([1.0], dtype=F64), [0.0, 1.0], callbacks=callbacks)
    assert solution.steps.stop_time == float(solution.ts[-1])


def test_builtin_without_signature_as_vector_field():
    """torch.add (no inspectable signature) as func: y' = t + y, y(0) = 1 gives y(1) = 2e - 2."""
    model = Regularized(torch.add, rtol=1e-9, atol=1e-12)
    ys = model(torch.tensor([1.0], dtype=F64), T01)
    assert float(ys[-1]) == pytest.approx(2.0 * math.e - 2.0, rel=1e-8)
