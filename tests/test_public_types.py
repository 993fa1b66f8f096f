"""The public API's type hints, as a user's type checker reads them.

``make lint`` runs mypy on this file (and on ``examples/``): each ``assert_type`` there states what
a type checker must infer from the library's annotations, e.g. that ``odeint`` of a tensor ``y0``
gives ``Solution[Tensor]``, whose ``ys`` is a tensor (not "a tensor or a tuple", which would make
every ``solution.ys[:, 0]`` a type error in a user's code). Under pytest the same calls run, and
each result is checked at run time to be what its annotation says.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import assert_type

import local_reg
from local_reg import (
    ButcherTableau,
    LocallyRegularized,
    PIController,
    RatioWeight,
    RegularizationStats,
    Regularized,
    Solution,
    Stats,
    local_regularization,
    odeint,
    odeint_event,
    sdeint,
)
from local_reg import compat as torchdiffeq


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.linear(y))


def decay(t: Tensor, y: Tensor) -> Tensor:
    return -y


def decay_pair(t: Tensor, y: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return -y[0], -2 * y[1]


class Diffusion:
    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return -y

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return 0.1 * torch.ones_like(y)


Y0 = torch.ones(3, 2)
T = torch.linspace(0.0, 1.0, 5)


def test_odeint_of_a_tensor_gives_a_solution_of_tensors() -> None:
    solution = odeint(decay, Y0, T, dense=True)
    assert_type(solution, Solution[Tensor])
    ys = assert_type(solution.ys, Tensor)
    assert isinstance(ys, Tensor) and ys[:, 0].shape == (5, 2)
    assert isinstance(assert_type(solution.evaluate(0.5), Tensor), Tensor)
    assert isinstance(assert_type(solution.stats, Stats), Stats)
    assert assert_type(solution.stats.nfe, int) > 0
    assert isinstance(assert_type(solution.penalties, Tensor | None), type(None))


def test_odeint_of_a_tuple_gives_a_solution_of_tuples_of_its_length() -> None:
    solution = odeint(decay_pair, (Y0, Y0[:, :1]), T, dense=True)
    assert_type(solution, Solution[tuple[Tensor, Tensor]])
    first, second = assert_type(solution.ys, tuple[Tensor, Tensor])
    assert (first.shape, second.shape) == ((5, 3, 2), (5, 3, 1))
    assert len(assert_type(solution.evaluate(0.5), tuple[Tensor, Tensor])) == 2


def test_a_state_typed_as_either_kind_is_accepted() -> None:
    # A user's wrapper that takes either kind of state (as Regularized.forward does) passes it on.
    def solve(y0: Tensor | tuple[Tensor, ...]) -> Solution[Tensor | tuple[Tensor, ...]]:
        return odeint(decay, y0, T)

    ys = assert_type(solve(Y0).ys, Tensor | tuple[Tensor, ...])
    assert isinstance(ys, Tensor) and ys.shape == (5, 3, 2)


def test_a_learnable_initial_state_is_a_state() -> None:
    y0 = nn.Parameter(Y0.clone())
    ys = odeint(decay, y0, T).ys
    assert isinstance(ys, Tensor) and ys.requires_grad


def test_a_module_a_lambda_and_a_list_of_times_are_fields_and_times() -> None:
    field = Field()
    assert isinstance(odeint(field, Y0, [0.0, 0.5, 1.0], gradient="symplectic").ys, Tensor)
    assert isinstance(odeint(lambda t, y: field(t, y), Y0, T, adjoint_params=field.parameters()).ys, Tensor)


def test_times_as_arrays_or_zero_dim_tensors_and_tensor_step_sizes_are_accepted() -> None:
    # Annotated Tensor | Sequence[float] and float, which a type checker refused on correct code.
    field = Field()
    times = [torch.tensor(0.0), torch.tensor(1.0)]
    for solution in (
        odeint(field, Y0, np.linspace(0.0, 1.0, 3), first_step=torch.tensor(0.01)),
        odeint(field, Y0, times, method="rk4", step_size=torch.tensor(0.25)),
        sdeint(Diffusion(), Y0, np.array([0.0, 1.0]), step_size=torch.tensor(0.1)),
    ):
        assert isinstance(assert_type(solution, Solution[Tensor]).ys, Tensor)
    dense = odeint(field, Y0, times, dense=True)
    assert dense.evaluate(np.array([0.2, 0.4])).shape == (2, *Y0.shape)


def test_odeint_event_gives_the_event_time_and_a_solution_of_the_state() -> None:
    event_t, solution = odeint_event(decay, Y0, 0.0, event_fn=lambda t, y: y.sum() - 1.0)
    assert isinstance(assert_type(event_t, Tensor), Tensor)
    assert isinstance(assert_type(solution, Solution[Tensor]).ys, Tensor)


def test_sdeint_gives_a_solution_of_tensors() -> None:
    solution = sdeint(Diffusion(), Y0, T)
    assert isinstance(assert_type(solution, Solution[Tensor]).ys, Tensor)


def test_compat_returns_what_torchdiffeq_returns() -> None:
    ys = assert_type(torchdiffeq.odeint(decay, Y0, T), Tensor)
    assert ys[:, 0].shape == (5, 2)
    pair = assert_type(torchdiffeq.odeint(decay_pair, (Y0, Y0), T), tuple[Tensor, Tensor])
    assert isinstance(pair, tuple)
    field = Field()
    assert isinstance(assert_type(torchdiffeq.odeint_adjoint(field, Y0, T), Tensor), Tensor)
    event_t, states = torchdiffeq.odeint(decay, Y0, T[:2], event_fn=lambda t, y: y.sum() - 1.0)
    assert isinstance(assert_type(event_t, Tensor), Tensor)
    assert isinstance(assert_type(states, Tensor), Tensor)
    dense = torchdiffeq.odeint_dense(decay, Y0, T[0], T[-1])
    assert isinstance(assert_type(dense(T[2]), Tensor), Tensor)
    assert isinstance(assert_type(dense(0.5), Tensor), Tensor)  # a float time, as torchdiffeq's


def test_a_regularized_model_has_stats_and_a_reg_loss_before_and_after_a_pass() -> None:
    field = Field()
    model = LocallyRegularized(
        field, sampling="random", weight=RatioWeight(0.2, parameters=field.parameters())
    )
    assert_type(model.stats, RegularizationStats)
    assert model.stats.nfe_main == 0 and model.stats.t_reg is None  # no pass yet
    ys = model(Y0, T)
    assert isinstance(ys, Tensor)
    assert assert_type(model.stats.nfe_main, int) > 0
    assert isinstance(assert_type(model.reg_loss, Tensor), Tensor)
    plain = Regularized(field)
    plain(Y0, T)
    assert assert_type(plain.stats.nfe_main, int) > 0


def test_a_tableau_takes_its_coefficients_as_lists_or_arrays() -> None:
    # ButcherTableau's docstring: lists or arrays (a as its rows, or as the square matrix), kept as
    # tuples of floats.
    rows = ButcherTableau("heun-euler-lists", [0.0, 1.0], [[], [1.0]], [0.5, 0.5], 2, [-0.5, 0.5])
    matrix = ButcherTableau(
        "heun-euler-arrays",
        c=np.array([0.0, 1.0]),
        a=np.array([[0.0, 0.0], [1.0, 0.0]]),
        b=np.array([0.5, 0.5]),
        order=2,
        error_weights=np.array([-0.5, 0.5]),
    )
    for tableau in (rows, matrix):
        assert assert_type(tableau.c, tuple[float, ...]) == (0.0, 1.0)
        assert assert_type(tableau.a, tuple[tuple[float, ...], ...]) == ((), (1.0,))
        assert isinstance(odeint(decay, Y0, T, method=tableau).ys, Tensor)


def test_a_controller_takes_its_landing_times_as_any_sequence() -> None:
    # PIController's docstring: a 1-D sequence, array or tensor, kept as a sorted tuple of floats.
    controller = PIController(step_ts=np.array([0.3]), jump_ts=torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert assert_type(controller.jump_ts, tuple[float, ...]) == (0.25, 0.5)
    assert assert_type(controller.step_ts, tuple[float, ...]) == (0.3,)
    assert isinstance(odeint(decay, Y0, T, controller=controller).ys, Tensor)


class EndPenalty:
    """A user's own penalty (Regularized's docstring takes one): ``R = mean(y(t1)^2)`` of its own
    solve of the field. Regularized's ``penalty`` must accept it, as it accepts the library's."""

    draws = False

    def __init__(self, field: nn.Module) -> None:
        self.field = field

    def check(self, problem: object) -> None:
        pass

    def __call__(
        self,
        problem: object,
        y0: Tensor,
        t: Tensor | Sequence[float],
        generator: torch.Generator | None = None,
        bm: object = None,
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        solution = odeint(self.field, y0, t)
        return solution.ys, solution.ys[-1].pow(2).mean(), RegularizationStats(main=solution.stats)


def test_a_users_own_penalty_is_a_penalty() -> None:
    field = Field()
    model = Regularized(field, EndPenalty(field), weight=0.5)
    ys = model(Y0, T)
    assert isinstance(ys, Tensor)
    reg_loss = assert_type(model.reg_loss, Tensor).detach()
    assert float(reg_loss) == 0.5 * float(ys[-1].detach().pow(2).mean())
    assert assert_type(model.stats.nfe_main, int) > 0


class FourArgumentPenalty(EndPenalty):
    """``EndPenalty`` of the four arguments the protocol requires (``bm`` is optional)."""

    def __call__(  # type: ignore[override]  # fewer arguments than EndPenalty's, as the protocol's
        self, problem: object, y0: Tensor, t: Tensor | Sequence[float], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, RegularizationStats]:
        return super().__call__(problem, y0, t, generator)


class PriorDiffusion(Diffusion):
    def h(self, t: Tensor, y: Tensor) -> Tensor:
        return -2 * y


def test_compats_sdeint_penalties_and_times_are_typed_as_they_run() -> None:
    # compat.sdeint was "a tensor or a pair", a four-argument penalty no Penalty, and numpy times,
    # a list t for compat and a float t0 type errors. (model(...) stays Any, nn.Module's call: a
    # subclass's forward may take other arguments.)
    field = Field()
    model = Regularized(field, FourArgumentPenalty(field), weight=0.5)
    ys = assert_type(model.forward(Y0, np.linspace(0.0, 1.0, 5)), Tensor)
    assert ys.shape == (5, 3, 2)
    zs = assert_type(torchdiffeq.sdeint(Diffusion(), Y0, T, dt=0.1), Tensor)
    assert zs.shape == (5, 3, 2)
    states, log_ratio = assert_type(
        torchdiffeq.sdeint(PriorDiffusion(), Y0, T, dt=0.1, logqp=True), tuple[Tensor, Tensor]
    )
    assert states.shape == (5, 3, 2) and log_ratio.shape == (4, 3)
    assert isinstance(assert_type(torchdiffeq.odeint(decay, Y0, [0.0, 0.5, 1.0]), Tensor), Tensor)
    event_t, _ = torchdiffeq.odeint_event(decay, Y0, 0.0, event_fn=lambda t, y: y.sum() - 1.0)
    assert isinstance(event_t, Tensor)


def test_the_functional_regularizers_return_the_states_of_y0s_kind() -> None:
    ys, penalty, stats = local_regularization(decay, Y0, T)
    assert isinstance(assert_type(ys, Tensor), Tensor) and isinstance(assert_type(penalty, Tensor), Tensor)
    assert isinstance(assert_type(stats, RegularizationStats), RegularizationStats)
    pair, _, _ = local_regularization(decay_pair, (Y0, Y0[:, :1]), T)
    assert len(assert_type(pair, tuple[Tensor, Tensor])) == 2
    field = Field()
    model = LocallyRegularized(
        field, sampling="random", weight=RatioWeight(0.2, parameters=field.parameters())
    )
    states, _, _ = model.penalize(Y0, T)
    assert isinstance(assert_type(states, Tensor), Tensor)
    assert isinstance(assert_type(model.forward(Y0, T), Tensor), Tensor)


def test_the_package_exports_what_the_test_names() -> None:
    # A user's `from local_reg import X` of each name above resolves (mypy checks the imports too).
    for name in ("LocallyRegularized", "RatioWeight", "Regularized", "RegularizationStats", "Solution"):
        assert name in local_reg.__all__


def test_a_deprecated_sde_spelling_warns_naming_it_as_written() -> None:
    # local_reg.sde_local_regularization warned about local_reg.sde.sde_local_regularization, and
    # local_reg.SDEBlock was an AttributeError while local_reg.sde.SDEBlock worked.
    import warnings

    import local_reg.sde

    cases = [
        (lambda: local_reg.SDEBlock, "local_reg.SDEBlock", Regularized),
        (lambda: local_reg.sde.SDEBlock, "local_reg.sde.SDEBlock", Regularized),
        (
            lambda: local_reg.sde_local_regularization,
            "local_reg.sde_local_regularization",
            local_regularization,
        ),
        (lambda: local_reg.SDERegularizationStats, "local_reg.SDERegularizationStats", RegularizationStats),
        (
            lambda: local_reg.regularization.SDERegularizationStats,
            "local_reg.regularization.SDERegularizationStats",
            RegularizationStats,
        ),
    ]
    for get, spelled, replacement in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert get() is replacement
        (warning,) = caught
        assert str(warning.message).startswith(f"{spelled} is deprecated: use local_reg.")
        assert warning.filename == __file__  # points at the line that used the name


def test_the_public_packages_list_their_api_not_their_helpers() -> None:
    """``dir(local_reg.compat)`` listed its ~60 helpers (a torchdiffeq user's completion list), and
    ``local_reg.gradients`` / ``local_reg.sde`` held internal helpers under public names."""
    import local_reg.compat
    import local_reg.gradients
    import local_reg.sde

    public = {name for name in dir(local_reg.compat) if not name.startswith("__")}
    assert public == {*local_reg.compat.__all__, *local_reg.compat.TORCHSDE_NAMES}
    for package in (local_reg.gradients, local_reg.sde):
        names = {
            name
            for name, value in vars(package).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
        }
        assert names == set(package.__all__), package.__name__
