"""A field that calls a regularized model of its own: an ODE whose vector field solves an SDE
model (``Regularized(sde)``) at each evaluation. The graph-free gradient methods of the outer
solve evaluate the field again in their backward pass, where the inner model draws again."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchsde

from local_reg import LocallyRegularized, Regularized, odeint, sdeint
from tests.problems import DecaySDE, NetField

DTYPE = torch.float64
INNER_TIMES = torch.tensor([0.0, 0.2], dtype=DTYPE)


class _FieldCallingAModel(torch.nn.Module):
    """``dy/dt = inner(linear(y))(0.2) - y``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2, dtype=DTYPE)
        self.inner = inner

    def forward(self, t, y):
        return self.inner(self.linear(y), INNER_TIMES)[-1] - y


def _sde_model(generator: torch.Generator | None = None) -> Regularized:
    """A plain SDE model in eval mode, which draws a Brownian path at each call."""
    return Regularized(DecaySDE(), generator=generator).eval()


def _solve(field: torch.nn.Module, gradient: str):
    y0 = torch.ones(3, 2, dtype=DTYPE)
    return odeint(field, y0, [0.0, 1.0], method="rk4", step_size=0.5, gradient=gradient)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint", "symplectic"])
def test_graph_free_methods_warn_that_an_sde_model_in_the_field_draws_another_path(gradient):
    """Their backward pass evaluates the field again, where the inner model draws another Brownian
    path from torch's global stream than the forward solve's: the gradient (1-10% off ``direct``'s)
    is that of other paths. ``direct`` differentiates the forward's own paths and is quiet."""
    ys = _solve(_FieldCallingAModel(_sde_model()), gradient).ys
    with pytest.warns(UserWarning, match=f"gradient={gradient!r} of the solve whose field calls it") as seen:
        ys.sum().backward()
    message = str(seen[0].message)
    assert "Regularized" in message and "Brownian path" in message
    assert "gradient='direct'" in message and "bm" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _solve(_FieldCallingAModel(_sde_model()), "direct").ys.sum().backward()


class _FieldBesideAModel(torch.nn.Module):
    """A latent model's ODE decoder beside an SDE prior it never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.prior = _sde_model()
        self.linear = torch.nn.Linear(2, 2, dtype=DTYPE)

    def decoder(self, t, y):
        return torch.tanh(self.linear(y))


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint", "symplectic"])
def test_an_sde_model_the_field_never_calls_is_not_warned_of(gradient):
    """The warning came from a scan of func's module, so a bound method of a model holding an SDE
    prior it never calls warned on every solve, in either mode; it comes from the inner model's
    re-run now."""
    model = _FieldBesideAModel()
    y0 = torch.ones(3, 2, dtype=DTYPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(
            model.decoder, y0, [0.0, 1.0], method="rk4", step_size=0.5, gradient=gradient
        ).ys.sum().backward()


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_an_sde_model_with_its_own_generator_refuses_the_outer_backward_pass_naming_it(gradient):
    """The refusal named torch.utils.checkpoint's recomputation and advised torch's global stream,
    "which checkpointing replays": local_reg's own backward pass replays neither. It names the outer
    solve's gradient method and its remedies now; torch.utils.checkpoint's message is unchanged
    after it (the re-evaluation's mark does not outlive the refused pass)."""
    field = _FieldCallingAModel(_sde_model(torch.Generator().manual_seed(1)))
    ys = _solve(field, gradient).ys
    with pytest.raises(RuntimeError, match="re-run inside a backward pass") as refused:
        ys.sum().backward()
    message = str(refused.value)
    assert f"gradient={gradient!r}" in message and "gradient='direct'" in message and "bm" in message
    assert "checkpointing replays" not in message and "torch.utils.checkpoint" not in message

    from torch.utils.checkpoint import checkpoint

    y = torch.ones(3, 2, dtype=DTYPE)
    loss = checkpoint(lambda y: field(0.0, y).sum(), y, use_reentrant=False)
    with pytest.raises(RuntimeError, match=r"torch.utils.checkpoint's recomputation.*checkpointing replays"):
        loss.backward()


def test_a_penalty_drawing_from_its_own_generator_refuses_the_outer_backward_pass():
    """A training-mode LocallyRegularized of an ODE draws ``t_reg`` from its generator at each
    call: the refusal names eval mode as the remedy, not a Brownian motion it does not take."""
    inner = LocallyRegularized(
        NetField(torch.nn.Linear(2, 2, dtype=DTYPE)), weight=1.0, generator=torch.Generator().manual_seed(1)
    )
    ys = _solve(_FieldCallingAModel(inner), "checkpoint").ys
    with pytest.raises(RuntimeError, match="gradient='checkpoint' of the solve whose field") as refused:
        ys.sum().backward()
    message = str(refused.value)
    assert "eval mode" in message and "bm" not in message


def _peer_adjoint_model() -> Regularized:
    """An ODE model on the torchdiffeq backend, whose adjoint evaluates a field calling an SDE model."""
    pytest.importorskip("torchdiffeq")
    return Regularized(
        _FieldCallingAModel(_sde_model()),
        gradient="adjoint",
        backend="torchdiffeq",
        method="rk4",
        options={"step_size": 0.5},
    ).eval()


def test_a_peer_adjoint_warns_that_an_sde_model_in_the_field_draws_another_path():
    """torchdiffeq's odeint_adjoint (the torchdiffeq backend) evaluates the field again in its
    backward pass without local_reg's re-evaluation mark: the inner model drew another path there
    without a word."""
    outer = _peer_adjoint_model()
    ys = outer(torch.ones(3, 2, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE))
    with pytest.warns(UserWarning, match="gradient='adjoint' of the solve whose field calls it"):
        ys.sum().backward()


def test_a_peer_adjoints_forward_solve_in_a_checkpoint_recomputation_is_not_a_re_run():
    """torch.utils.checkpoint recomputes the forward solve inside a backward pass, replaying torch's
    stream: the inner model draws the same path there, and no adjoint evaluates the field (the
    solve's output gets no gradient here). Each of its evaluations warned as a re-run."""
    from torch.utils.checkpoint import checkpoint

    outer = _peer_adjoint_model()
    outer.requires_grad_(False)
    scale = torch.ones((), dtype=DTYPE, requires_grad=True)
    y0, times = torch.ones(3, 2, dtype=DTYPE), torch.tensor([0.0, 1.0], dtype=DTYPE)
    loss = checkpoint(lambda scale: scale * outer(y0, times)[-1].sum(), scale, use_reentrant=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.backward()
    assert scale.grad is not None


class _FieldCallingSdeint(torch.nn.Module):
    """``dy/dt = sdeint(decay, linear(y))(0.2) - y``, with ``sdeint``'s own settings."""

    def __init__(self, **settings) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2, dtype=DTYPE)
        self.sde = DecaySDE()
        self.settings = settings

    def forward(self, t, y):
        return sdeint(self.sde, self.linear(y), INNER_TIMES, **self.settings).ys[-1] - y


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint", "symplectic"])
def test_sdeint_called_by_the_field_names_the_outer_backward_pass_that_re_runs_it(gradient):
    """Called by a field without bm, sdeint draws another path when a graph-free backward pass
    evaluates that field again: from torch's stream it warned of nothing (the gradient that of other
    paths), and with a generator of its own its refusal blamed torch.utils.checkpoint and advised
    torch's stream, "which checkpointing replays": local_reg's backward pass replays neither."""
    ys = _solve(_FieldCallingSdeint(), gradient).ys
    with pytest.warns(UserWarning, match=f"gradient={gradient!r} of the solve whose field calls it"):
        ys.sum().backward()
    ys = _solve(_FieldCallingSdeint(generator=torch.Generator().manual_seed(1)), gradient).ys
    with pytest.raises(
        RuntimeError, match=f"gradient={gradient!r} of the solve whose field calls it"
    ) as refused:
        ys.sum().backward()
    assert "checkpointing replays" not in str(refused.value)
    with warnings.catch_warnings():  # a Brownian motion the re-run reads again
        warnings.simplefilter("error")
        field = _FieldCallingSdeint(
            bm=torchsde.BrownianInterval(0.0, 0.2, size=(3, 2), dtype=DTYPE, entropy=3)
        )
        _solve(field, gradient).ys.sum().backward()
