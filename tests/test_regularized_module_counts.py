"""The regularized modules' plumbing against independent references: every drift and diffusion
call counted once (the user's own field counts them), what eval and plain calls leave in
``reg_loss`` and ``stats``, the probe's times and dtypes against torchdiffeq's own, the options
checked when the model is made, and the solves the probes retake against ``odeint``/``sdeint``,
torchdiffeq and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchdiffeq
import torchsde
from scipy.integrate import solve_ivp

import local_reg
from local_reg import GloballyRegularized, LocallyRegularized, get_tableau, odeint
from local_reg.sde import sdeint

DT = torch.float64


class CountingSDE(torch.nn.Module):
    """An Ito SDE whose drift and diffusion count their own calls (the reference for NFE)."""

    sde_type = "ito"

    def __init__(self, noise_type: str) -> None:
        super().__init__()
        self.noise_type = noise_type
        self.a = torch.nn.Parameter(torch.tensor(-1.5, dtype=DT))
        self.f_calls = 0
        self.g_calls = 0

    def f(self, t, y):
        self.f_calls += 1
        return self.a * y + torch.sin(3.0 * y)

    def g(self, t, y):
        self.g_calls += 1
        if self.noise_type == "additive":
            return torch.full((y.shape[0], 2, 3), 0.2, dtype=DT)
        return 0.2 * y


SDE_MODELS = {
    "plain": lambda sde, g: local_reg.Regularized(sde, generator=g),
    "plain-in-eval": lambda sde, g: LocallyRegularized(sde, weight=1.0, generator=g).eval(),
    "kinetic": lambda sde, g: LocallyRegularized(sde, weight=1.0, generator=g),
    "error-dt": lambda sde, g: LocallyRegularized(sde, weight=1.0, penalty="error-dt", generator=g),
    "solver-step": lambda sde, g: LocallyRegularized(sde, weight=1.0, step_size="solver", generator=g),
    "biased": lambda sde, g: LocallyRegularized(
        sde, weight=1.0, sampling="biased", penalty="error-dt", generator=g
    ),
    "global": lambda sde, g: GloballyRegularized(sde, weight=1.0, generator=g),
}


@pytest.mark.parametrize("noise_type", ["additive", "diagonal"])
@pytest.mark.parametrize("kind", list(SDE_MODELS))
def test_sde_stats_count_every_drift_and_diffusion_call_once(noise_type, kind):
    """RegularizationStats' docstring: every evaluation is counted in exactly one of main and probe,
    and nfe_diffusion counts the calls of g (the additive-noise g that sizes the Brownian motion
    belongs to the main solve). Reference: the calls the SDE's own f and g count."""
    sde = CountingSDE(noise_type)
    y0 = torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    model = SDE_MODELS[kind](sde, torch.Generator().manual_seed(1))
    model(y0, [0.0, 0.5, 1.0])
    stats = model.stats
    assert stats.main.nfe + stats.probe.nfe == sde.f_calls + sde.g_calls
    assert stats.main.nfe_diffusion + stats.probe.nfe_diffusion == sde.g_calls
    assert stats.nfe_main_diffusion + stats.nfe_reg_diffusion == sde.g_calls
    assert stats.nfe_main_drift + stats.nfe_reg_drift == sde.f_calls
    assert stats.nfe_forward == sde.f_calls + sde.g_calls  # nfe_measurement is 0 with a fixed weight
    if kind.startswith("plain") or kind == "global":
        assert stats.probe.nfe == 0


@pytest.mark.parametrize("training", [False, True])
def test_a_plain_or_eval_call_leaves_a_zero_reg_loss_of_the_solutions_dtype(training):
    """Regularized's docstring: otherwise ``ys`` is the unregularized solution and ``reg_loss`` is a
    0-dim zero (of the solution's dtype and device, so adding it never changes the loss's dtype)."""
    field = torch.nn.Linear(2, 2).to(DT)
    model = LocallyRegularized(lambda t, y: field(y), weight=1.0, adjoint_params=list(field.parameters()))
    model.train(training)
    y0 = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    ys = model(y0, [0.0, 1.0])
    assert model.reg_loss.dtype == ys.dtype == DT and model.reg_loss.shape == ()
    if not training:
        assert float(model.reg_loss) == 0.0


class DecayingSDE(torch.nn.Module):
    """``dy = (a y + sin 3y) dt + 0.2 y dW``, diagonal noise."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-1.5, dtype=DT))

    def f(self, t, y):
        return self.a * y + torch.sin(3.0 * y)

    def g(self, t, y):
        return 0.2 * y


def _bm(batch: int = 4, entropy: int = 5):

    return torchsde.BrownianInterval(0.0, 1.0, size=(batch, 2), dtype=DT, entropy=entropy)


def test_sde_kinetic_penalty_reads_the_plain_solve_and_interpolates_its_steps():
    """LocalPenalty's docstring: an SDE's kinetic penalty does not add t_reg to the output times
    (so the main solve is the plain sdeint solve, output and cost), and u(t_reg) is the linear
    interpolant of the recorded step states. Reference: local_reg.sdeint on the same Brownian path,
    its recorded steps interpolated by hand, and the drift evaluated at that point."""

    sde = DecayingSDE()
    y0 = torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(0)).abs() + 0.5
    bm = _bm()
    times = [0.0, 0.5, 1.0]
    ys, reg, stats = local_reg.local_regularization(
        sde, y0, times, bm=bm, generator=torch.Generator().manual_seed(3)
    )
    plain = sdeint(sde, y0, times, bm=bm, record_states=True)
    assert torch.equal(ys, plain.ys)
    assert stats.main.nfe == plain.stats.nfe and stats.n_accepted == plain.stats.n_accepted
    # The step that contains t_reg, and the linear interpolant of its ends.
    t_steps = plain.steps.t.tolist()
    dts = plain.steps.dt.tolist()
    j = max(i for i, t0 in enumerate(t_steps) if t0 <= stats.t_reg)
    start = plain.steps.states[j]
    end = plain.steps.states[j + 1] if j + 1 < len(t_steps) else plain.ys[-1]
    w = (stats.t_reg - t_steps[j]) / dts[j]
    u = (1 - w) * start + w * end
    torch.testing.assert_close(stats.state, u.detach(), rtol=1e-12, atol=1e-12)
    expected = (sde.f(None, u) ** 2).mean()
    torch.testing.assert_close(reg.detach(), expected.detach(), rtol=1e-12, atol=0)
    assert not stats.state.requires_grad


def test_stats_state_is_detached_even_when_the_penalty_differentiates_through_it():
    """RegularizationStats' docstring: ``state`` is ``u(t_reg)``, detached, also with
    ``detach_state=False`` (whose penalty does take a gradient through it), so that ``model.stats``
    holds no graph. Its value is the solution at t_reg: reference scipy's DOP853 at 1e-12."""

    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=DT)
    weight = torch.nn.Parameter(A.clone())
    y0 = torch.tensor([[1.0, 0.5]], dtype=DT)
    model = LocallyRegularized(
        lambda t, y: y @ weight.T,
        penalty="error-dt",
        detach_state=False,
        weight=1.0,
        adjoint_params=[weight],
        rtol=1e-8,
        atol=1e-10,
        generator=torch.Generator().manual_seed(4),
    )
    model(y0, [0.0, 1.0])
    stats = model.stats
    assert model.reg_loss.requires_grad
    assert not stats.state.requires_grad and stats.state.grad_fn is None
    ref = solve_ivp(
        lambda t, y: A.numpy() @ y, (0.0, stats.t_reg), y0[0].numpy(), method="DOP853", rtol=1e-12, atol=1e-12
    ).y[:, -1]
    np.testing.assert_allclose(stats.state[0].numpy(), ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", [None, "sum"])
def test_global_stiffness_penalty_divides_by_the_main_methods_stability_size(reduction):
    """GlobalPenalty's docstring: S_Est_j = rho_j / stability_size of the main solve's own method
    (here dopri5, whose stability size, 3.3, is not Tsit5's 3.5068); default reduction max, 'sum'
    of S_Est_j * |dt_j|. Reference: the per-step rho and dt local_reg.odeint records for the same
    solve, reduced by hand."""

    A = torch.tensor([[-20.0, 1.0], [0.0, -0.5]], dtype=DT)
    y0 = torch.tensor([[1.0, 1.0]], dtype=DT)
    field = lambda t, y: y @ A.T  # noqa: E731
    model = GloballyRegularized(
        field, regularizer="stiffness", reduction=reduction, method="dopri5", rtol=1e-5, atol=1e-7, weight=1.0
    )
    model(y0, [0.0, 1.0])
    steps = odeint(field, y0, [0.0, 1.0], method="dopri5", rtol=1e-5, atol=1e-7).steps
    s_est = steps.stiffness_estimate / get_tableau("dopri5").stability_size
    expected = s_est.max() if reduction is None else (s_est * steps.dt.abs()).sum()
    assert model.stats.penalty == pytest.approx(float(expected), rel=1e-10)
    assert float(model.reg_loss) == pytest.approx(float(expected), rel=1e-10)


class _DrawingPenalty:
    """A user's own penalty, without the class attribute ``draws``: R is a draw from the generator."""

    def check(self, problem):
        pass

    def __call__(self, problem, y0, t, generator=None, bm=None):
        from local_reg.regularization._module import plain_solve

        ys, stats = plain_solve(problem, y0, t, generator, bm)
        return ys, torch.rand((), generator=generator, dtype=DT), stats


def test_a_users_penalty_without_draws_is_taken_to_draw_and_gets_the_generator():
    """Regularized's docstring: a generator is refused for an ODE whose penalty draws nothing, and
    'a penalty of your own without the attribute is taken to draw'. Reference: the same draw from an
    identically seeded generator."""
    model = local_reg.Regularized(
        lambda t, y: -y, _DrawingPenalty(), weight=2.0, generator=torch.Generator().manual_seed(7)
    )
    y0 = torch.ones(1, 2, dtype=DT)
    ys = model(y0, [0.0, 1.0])
    expected = 2.0 * torch.rand((), generator=torch.Generator().manual_seed(7), dtype=DT)
    assert float(model.reg_loss) == float(expected)
    torch.testing.assert_close(ys[-1], y0 * torch.exp(torch.tensor(-1.0, dtype=DT)), rtol=1e-5, atol=1e-7)


class _ReturningPenalty:
    """A user's penalty returning ``returned(ys, R, stats)`` instead of ``(ys, R, stats)``."""

    draws = False

    def __init__(self, returned):
        self.returned = returned

    def check(self, problem):
        pass

    def __call__(self, problem, y0, t, generator=None, bm=None):
        from local_reg.regularization._module import plain_solve

        ys, stats = plain_solve(problem, y0, t, generator, bm)
        return self.returned(ys, ys.pow(2).mean(), stats)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        # A vector R broadcast silently into loss + reg_loss; the others failed far from the penalty.
        (lambda ys, r, s: (ys, ys.pow(2).mean(-1), s), r"returned R of shape \(2, 1\)"),
        (lambda ys, r, s: (ys, float(r), s), "returned R of float"),
        (lambda ys, r, s: (ys, r), "must return .ys, R, stats.*got a tuple of 2"),
        (lambda ys, r, s: ys, "must return .ys, R, stats.*got Tensor"),
        (lambda ys, r, s: (ys, r, None), "returned stats of type NoneType"),
        (lambda ys, r, s: (ys.tolist(), r, s), "returned ys of type list"),
    ],
)
def test_a_users_penalty_returning_otherwise_is_named(returned, message):
    model = local_reg.Regularized(lambda t, y: -y, _ReturningPenalty(returned), weight=2.0)
    y0 = torch.ones(1, 2, dtype=DT)
    with pytest.raises(TypeError, match=f"^penalty _ReturningPenalty {message}"):
        model(y0, [0.0, 1.0])
    with pytest.raises(TypeError, match=f"^penalty _ReturningPenalty {message}"):
        model.penalize(y0, [0.0, 1.0])
    fine = local_reg.Regularized(lambda t, y: -y, _ReturningPenalty(lambda *result: result), weight=2.0)
    ys = fine(y0, [0.0, 1.0])
    assert float(fine.reg_loss) == pytest.approx(2.0 * float(ys.pow(2).mean()), rel=1e-15)


class _FourArgumentPenalty:
    """A user's penalty of the four arguments :class:`Penalty` requires (``bm`` is optional)."""

    draws = False

    def check(self, problem):
        pass

    def __call__(self, problem, y0, t, generator):
        from local_reg.regularization._module import plain_solve

        ys, stats = plain_solve(problem, y0, t, generator)
        return ys, ys.pow(2).mean(), stats


def test_a_users_penalty_of_four_arguments_serves_penalize_too():
    """penalize passed bm=None as a fifth argument: such a penalty failed there with a TypeError."""
    model = local_reg.Regularized(lambda t, y: -y, _FourArgumentPenalty(), weight=2.0)
    y0 = torch.ones(1, 2, dtype=DT)
    ys, reg, _ = model.penalize(y0, [0.0, 1.0])
    assert float(reg) == float(ys.pow(2).mean())
    # Asked to solve on a given Brownian motion, it is named (Python's own message counted the
    # arguments of __call__).
    sde_model = local_reg.Regularized(DecayingSDE(), _FourArgumentPenalty(), weight=2.0)
    with pytest.raises(TypeError, match="penalty _FourArgumentPenalty takes no bm"):
        sde_model(torch.ones(4, 2, dtype=DT), [0.0, 1.0], bm=_bm())


@pytest.mark.parametrize("model_class", [local_reg.Regularized, LocallyRegularized, GloballyRegularized])
def test_an_sde_model_solves_on_a_given_brownian_motion_as_sdeint(model_class):
    """forward(y0, t, bm=...) as torchsde's sdeint(..., bm=): the model took no bm, so a solve on
    a path of the caller's needed the model's generator reset or sdeint called by hand."""
    sde = DecayingSDE()
    y0 = torch.ones(4, 2, dtype=DT)
    times = [0.0, 0.5, 1.0]
    plain = sdeint(sde, y0, times, bm=_bm())
    models = [model_class(sde, generator=torch.Generator().manual_seed(seed)).eval() for seed in (1, 2)]
    for model in models:
        assert torch.equal(model(y0, times, bm=_bm()), plain.ys)
    assert not torch.equal(models[0](y0, times), models[1](y0, times))  # without: each its own path
    # On a given path a model with a generator draws nothing, so torch.utils.checkpoint may re-run
    # it (it refused: the re-run cannot replay a generator's draws), as sdeint(bm=) there.
    y = y0.clone().requires_grad_()
    rerun = torch.utils.checkpoint.checkpoint(
        lambda x: models[0](x, times, bm=_bm()).pow(2).sum(), y, use_reentrant=False
    )
    (expected,) = torch.autograd.grad(sdeint(sde, y, times, bm=_bm()).ys.pow(2).sum(), y)
    torch.testing.assert_close(torch.autograd.grad(rerun, y)[0], expected, rtol=1e-12, atol=0)
    if model_class is not local_reg.Regularized:
        # A training pass on the given path: its solution is the penalized pass's on that path.
        model = model_class(sde).train()
        ys = model(y0, times, bm=_bm())
        expected, _, _ = model_class(sde).penalize(y0, times, bm=_bm())
        assert torch.equal(ys, expected)
    with pytest.raises(ValueError, match="bm is an SDE's Brownian motion, but this model solves an ODE"):
        LocallyRegularized(lambda t, y: -y, adjoint_params=()).eval()(y0, times, bm=_bm())


def test_sde_solver_step_probe_retakes_the_step_that_starts_at_t_reg():
    """LocallyRegularized's docstring: step_size='solver' takes 'the accepted step of the main solve
    that contains t_reg (starts at it when the main solve lands on it)'; an SDE solve with a probe
    step lands on t_reg. Reference: local_reg.sdeint over the times with t_reg added, on the same
    Brownian path: its accepted step starting at t_reg has the probe's dt and EEst."""

    sde = DecayingSDE()
    y0 = torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(0)).abs() + 0.5
    bm = _bm(entropy=11)
    times = [0.0, 0.5, 1.0]
    _, _, stats = local_reg.local_regularization(
        sde, y0, times, bm=bm, step_size="solver", generator=torch.Generator().manual_seed(3)
    )
    solve_times = sorted([*times, stats.t_reg])
    steps = sdeint(sde, y0, solve_times, bm=bm).steps
    index = steps.t.tolist().index(stats.t_reg)
    assert abs(stats.dt_reg) == pytest.approx(float(steps.dt[index].abs()), rel=1e-12)
    assert stats.error_estimate == pytest.approx(float(steps.error_estimate[index]), rel=1e-10)


def test_biased_solver_step_backward_in_time_retakes_the_signed_accepted_step():
    """Biased sampling with step_size='solver' re-takes an accepted step of the main solve: in a
    solve backward in time that step has a negative dt (RegularizationStats.dt_reg is signed).
    Reference: the steps local_reg.odeint records for the same solve, and torchdiffeq's dopri5 for
    the recorded start state."""

    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=DT)
    field = lambda t, y: y @ A.T  # noqa: E731
    y0 = torch.tensor([[1.0, 0.5]], dtype=DT)
    times = [1.0, 0.0]
    _, reg, stats = local_reg.local_regularization(
        field,
        y0,
        times,
        sampling="biased",
        step_size="solver",
        rtol=1e-6,
        atol=1e-8,
        generator=torch.Generator().manual_seed(2),  # draws an interior step (t_reg = 0.81)
    )
    steps = odeint(field, y0, times, rtol=1e-6, atol=1e-8).steps
    index = steps.t.tolist().index(stats.t_reg)
    assert stats.dt_reg < 0
    assert stats.dt_reg == pytest.approx(float(steps.dt[index]), rel=1e-12)
    assert 0.0 < stats.t_reg < 1.0
    t_ref = torch.tensor([1.0, stats.t_reg], dtype=DT)
    ref = torchdiffeq.odeint(field, y0, t_ref, rtol=1e-10, atol=1e-12)[-1]
    torch.testing.assert_close(stats.state, ref, rtol=1e-5, atol=1e-7)


def test_torchdiffeq_adjoint_backward_nfe_is_unknown_before_backward_and_counted_after():
    """RegularizationStats.nfe_backward: ``None`` while unknown (before backward), then the
    evaluations of the adjoint's backward solve. Reference: a field that counts its own calls."""

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=DT))
            self.calls = 0

        def forward(self, t, y):
            self.calls += 1
            return y @ self.w.T

    field = Field()
    model = local_reg.Regularized(field, backend="torchdiffeq", gradient="adjoint", rtol=1e-6, atol=1e-8)
    ys = model(torch.tensor([[1.0, 0.5]], dtype=DT), [0.0, 1.0])
    stats = model.stats
    assert stats.nfe_main == field.calls
    assert stats.nfe_backward is None
    forward_calls = field.calls
    ys[-1].sum().backward()
    assert field.calls > forward_calls
    assert stats.nfe_backward == field.calls - forward_calls


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"dense": "yes"}, TypeError, r"options\['dense'\] must be a bool"),
        ({"step_to_outputs": 1}, TypeError, r"options\['step_to_outputs'\] must be a bool"),
        # The keywords the problem passes itself are not options (a second value would clash).
        ({"step_penalty": None}, ValueError, r"unknown keys \['step_penalty'\]"),
        ({"record_states": True}, ValueError, r"unknown keys \['record_states'\]"),
    ],
)
def test_local_reg_options_are_checked_when_the_model_is_made(options, error, match):
    """_options' docstring: everything a typo can break fails when the model is made, with an
    error naming the argument, not at the first batch."""
    with pytest.raises(error, match=match):
        local_reg.Regularized(lambda t, y: -y, options=options)
    with pytest.raises(error, match=match):
        GloballyRegularized(lambda t, y: -y, options=options, weight=1.0)


@pytest.mark.parametrize("penalty", ["kinetic", "error-dt"])
@pytest.mark.parametrize("float64_times", [False, True])
def test_torchdiffeq_probe_gets_its_time_in_the_dtype_the_main_solve_gets(penalty, float64_times):
    """ODEProblem.prepare: with backend='torchdiffeq' the field gets its times in the state's dtype
    (torchdiffeq casts them), and the probe must call it as the main solve does. Reference: the
    dtypes torchdiffeq.odeint itself passes to the field on the same problem."""

    seen = []

    def field(t, y):
        seen.append(t.dtype)
        return -y

    y0 = torch.ones(2, 2)  # float32
    times = torch.tensor([0.0, 1.0], dtype=DT) if float64_times else [0.0, 1.0]
    torchdiffeq.odeint(field, y0, torch.as_tensor(times, dtype=DT))
    reference = set(seen)
    seen.clear()
    model = LocallyRegularized(field, backend="torchdiffeq", penalty=penalty, weight=1.0, adjoint_params=())
    model(y0, times)
    assert model.stats.nfe_reg > 0
    assert set(seen) == reference == {torch.float32}


def test_torchdiffeq_reads_a_list_of_times_as_a_float64_tensor():
    """ODEProblem.times_dtype: a sequence of floats is read in the state's dtype, except by
    torchdiffeq, which needs a tensor and gets it in float64: so for a float32 state a list and
    the same float64 tensor give the same draw of t_reg (rounded to float64, not float32) and the
    same outputs. Reference: the call with the explicit float64 tensor."""
    field = torch.nn.Linear(2, 2)

    def run(times):
        model = LocallyRegularized(
            lambda t, y: field(y),
            backend="torchdiffeq",
            weight=1.0,
            adjoint_params=list(field.parameters()),
            generator=torch.Generator().manual_seed(5),
        )
        ys = model(torch.ones(3, 2), times)
        return ys, model.stats.t_reg, model.reg_loss

    ys_list, t_list, reg_list = run([0.0, 0.3, 1.0])
    ys_tensor, t_tensor, reg_tensor = run(torch.tensor([0.0, 0.3, 1.0], dtype=DT))
    assert t_list == t_tensor
    assert float(torch.tensor(t_list, dtype=torch.float32)) != t_list  # a float64 time
    assert torch.equal(ys_list, ys_tensor) and torch.equal(reg_list, reg_tensor)


def test_penalize_on_a_plain_model_says_it_has_no_penalty():
    """Regularized.penalize: a model without a penalty is the plain solve, and says so."""
    model = local_reg.Regularized(lambda t, y: -y)
    with pytest.raises(ValueError, match="no penalty"):
        model.penalize(torch.ones(1, 2, dtype=DT), [0.0, 1.0])


def test_torchsde_adjoint_differentiates_only_the_given_adjoint_params():
    """Regularized's adjoint_params reach torchsde.sdeint_adjoint: only those tensors get a
    gradient (torchsde's own default would be every parameter of the SDE)."""

    class TwoParameterSDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(-1.0, dtype=DT))
            self.b = torch.nn.Parameter(torch.tensor(0.2, dtype=DT))

        def f(self, t, y):
            return self.a * y

        def g(self, t, y):
            return self.b * y

    sde = TwoParameterSDE()
    model = local_reg.Regularized(
        sde,
        backend="torchsde",
        gradient="adjoint",
        adjoint_params=[sde.a],
        generator=torch.Generator().manual_seed(0),
    )
    ys = model(torch.ones(3, 2, dtype=DT), [0.0, 1.0])
    ys[-1].sum().backward()
    assert sde.a.grad is not None and float(sde.a.grad) != 0.0
    assert sde.b.grad is None


def test_an_sde_refuses_the_runge_kutta_probe_heuristic():
    """LocalPenalty.check: probe='initial-hairer' is a Runge--Kutta option (exponent 1/(p+1)); an
    SDE's probe is an Euler--Maruyama step, whose heuristic would silently ignore it."""
    with pytest.raises(ValueError, match="initial-hairer"):
        LocallyRegularized(DecayingSDE(), probe="initial-hairer", weight=1.0)
