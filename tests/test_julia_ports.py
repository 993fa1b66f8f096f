"""A program ported from Julia's DifferentialEquations.jl, SciMLSensitivity.jl or the paper's own
code (``NeuralODE(model; regularize=:unbiased, ...)``): its settings are spelt otherwise here, and
each is refused with what to write instead, or (a positional controller) refused before it means
something else."""

from __future__ import annotations

import copy
import math
import pickle
import re

import pytest
import torch

import local_reg
from tests.problems import ConstantNoiseSDE, NetField


def assert_hinted(call, caller: str, hints: dict[str, str], error_type: type = TypeError) -> None:
    """``call(keyword)`` for each keyword of ``hints`` raises ``caller``'s unexpected-keyword error
    carrying its hint, and no guess at a keyword of its own."""
    for keyword, hint in hints.items():
        with pytest.raises(
            error_type, match=re.escape(f"{caller}() got an unexpected keyword argument {keyword!r} (")
        ) as error:
            call(keyword)
        assert hint in str(error.value) and "did you mean" not in str(error.value), (
            keyword,
            str(error.value),
        )


def test_picontroller_refuses_positional_settings_that_would_set_others():
    # OrdinaryDiffEq's PIController(beta1, beta2) set safety=0.14 and min_factor=0.08 here, within
    # their ranges: a solve of y'' = -y over [0, 10] took 3740 evaluations against 356.
    with pytest.raises(
        TypeError, match=r"PIController takes keywords only, got 2 positional arguments 0\.14, 0\.08"
    ):
        local_reg.PIController(7 / 50, 2 / 25)
    with pytest.raises(TypeError, match=r"PIController\(beta1=\.\.\., beta2=\.\.\.\) here.*rtol= and atol="):
        local_reg.PIController(1e-6)
    by_keyword = local_reg.PIController(beta1=7 / 50, beta2=2 / 25, max_step=0.5)
    assert (by_keyword.safety, by_keyword.min_factor, by_keyword.beta1) == (0.9, 0.2, 7 / 50)
    # Keyword construction, copies and replacement are as before.
    assert copy.deepcopy(by_keyword) == by_keyword == pickle.loads(pickle.dumps(by_keyword))
    import dataclasses

    assert dataclasses.replace(by_keyword, safety=0.8).safety == 0.8


@pytest.mark.parametrize(
    ("keyword", "hint"),
    [
        ("qmin", "OrdinaryDiffEq's smallest step shrink: min_factor= here"),
        ("qmax", "OrdinaryDiffEq's largest step growth: max_factor= here"),
        ("gamma", "OrdinaryDiffEq's safety factor: safety= here"),
        ("tstops", "OrdinaryDiffEq's times to end a step on: step_ts= here"),
        ("d_discontinuities", "OrdinaryDiffEq's times where the field may jump: jump_ts= here"),
        ("force_dtmin", "force_min_step= here"),
        ("dtmin", "min_step= here; a step of min_step is then accepted whatever its error"),
    ],
)
def test_picontroller_names_ordinarydiffeq_settings(keyword, hint):
    with pytest.raises(
        TypeError, match=re.escape(f"got an unexpected keyword argument {keyword!r} (")
    ) as error:
        local_reg.PIController(**{keyword: 0.5})
    assert hint in str(error.value), str(error.value)


def test_odeint_names_ordinarydiffeq_and_scimlsensitivity_keywords():
    # sensealg was "did you mean 'dense'?", callback "did you mean 'callbacks'?" (StepCallbacks
    # only), the others bare.
    hints = {
        "sensealg": "gradient= here, e.g. 'interpolating_adjoint' (InterpolatingAdjoint), 'adjoint' "
        "(BacksolveAdjoint)",
        "callback": "a ContinuousCallback that terminates is an event here, local_reg.odeint_event(",
        "internalnorm": "OrdinaryDiffEq's error norm: norm= here",
        "adaptive": "step_size= fixes the step here",
        "alg": "method= here",
        "save_everystep": "solution.steps records every accepted step",
    }
    assert_hinted(
        lambda keyword: local_reg.odeint(lambda t, y: -y, torch.ones(1), [0.0, 1.0], **{keyword: None}),
        "odeint",
        hints,
    )


def test_sdeint_names_stochasticdiffeq_keywords():
    hints = {
        "seed": "generator=torch.Generator().manual_seed(seed) here",
        "sensealg": "gradient= here, 'direct' or 'checkpoint' for an SDE",
        "alg": "method= here, e.g. 'euler_maruyama'",
    }
    assert_hinted(
        lambda keyword: local_reg.sdeint(ConstantNoiseSDE(), torch.ones(1, 1), [0.0, 1.0], **{keyword: 1}),
        "sdeint",
        hints,
    )


def test_regularized_models_name_the_papers_code_and_julia_settings():
    field = NetField(torch.nn.Linear(2, 2))
    # regularize was "did you mean 'regularizer'?", whose values are 'error'/'stiffness', not
    # :unbiased/:biased; the step-control spellings were bare.
    cases = {
        "regularize": "the paper's code's regularize=: sampling='random' here for :unbiased, "
        "sampling='biased'",
        "regularize_type": "regularizer='error' here for :error_estimate, regularizer='stiffness'",
        "sensealg": "SciMLSensitivity's sensealg: gradient= here",
        "maxiters": "options={'max_steps': ...} here",
        "tstops": "options={'controller': PIController(step_ts=...)} here",
        "dtmax": "options={'controller': PIController(max_step=...)} here",
    }
    assert_hinted(
        lambda keyword: local_reg.LocallyRegularized(field, sampling="random", **{keyword: 1}),
        "LocallyRegularized",
        cases,
    )
    # A model without local regularization points to the one that has it.
    with pytest.raises(
        TypeError, match=re.escape("local_reg.LocallyRegularized(func, sampling='random') for :unbiased")
    ):
        local_reg.Regularized(field, regularize="unbiased")
    # The same spellings as keys of options=.
    hint = "'d_discontinuities': OrdinaryDiffEq's times where the field may jump: options={'controller': "
    with pytest.raises(ValueError, match=re.escape(hint + "PIController(jump_ts=...)} here")):
        local_reg.LocallyRegularized(field, sampling="random", options={"d_discontinuities": [0.5]})


@pytest.mark.parametrize(
    ("model", "keyword", "hint"),
    [
        # The hints named the local_reg ODE solve's settings whatever the model: following them was
        # refused (options['max_steps'] by torchdiffeq and torchsde, 'interpolating_adjoint' for an
        # SDE, bm= by the model's constructor).
        ("torchdiffeq", "maxiters", "options={'max_num_steps': ...} here"),
        ("torchdiffeq", "sensealg", "gradient= here, 'direct' or 'adjoint' with backend='torchdiffeq'"),
        ("sde", "sensealg", "gradient= here, 'direct' or 'checkpoint' for an SDE"),
        ("torchsde", "sensealg", "gradient= here, 'direct' or 'adjoint' with backend='torchsde'"),
        ("sde", "seed", "or a Brownian motion at the call, model(y0, t, bm=...)"),
        ("sde", "maxiters", "options={'max_steps': ...} here"),
    ],
)
def test_regularized_models_julia_hints_are_their_backends(model, keyword, hint):
    field = ConstantNoiseSDE() if model in ("sde", "torchsde") else NetField(torch.nn.Linear(2, 2))
    backend = {"sde": None}.get(model, model)
    assert_hinted(
        lambda keyword: local_reg.LocallyRegularized(field, backend=backend, weight=0.1, **{keyword: 1}),
        "LocallyRegularized",
        {keyword: hint},
    )


def test_a_torchsde_model_gets_no_step_limit_hint_it_has_no_counterpart_for():
    with pytest.raises(TypeError) as error:
        local_reg.LocallyRegularized(ConstantNoiseSDE(), backend="torchsde", weight=0.1, maxiters=3)
    assert "max_steps" not in str(error.value) and "max_num_steps" not in str(error.value)


@pytest.mark.parametrize(
    ("method", "keyword", "hint"),
    [
        ("BacksolveAdjoint", "checkpointing", "InterpolatingAdjoint(checkpoints=), Checkpoint(checkpoints=)"),
        ("InterpolatingAdjoint", "checkpointing", "SciMLSensitivity's checkpointing: checkpoints= here"),
        ("Checkpoint", "checkpointing", "SciMLSensitivity's checkpointing: checkpoints= here"),
        ("BacksolveAdjoint", "abstol", "SciMLSensitivity's abstol: atol= here"),
        ("Symplectic", "reltol", "the solve's tolerance: odeint's rtol="),
        ("InterpolatingAdjoint", "autojacvec", "torch's autograd computes it here"),
        ("Checkpoint", "checkpionts", "did you mean 'checkpoints'?"),
        ("Direct", "autojacvec", "torch's autograd computes it here"),
    ],
)
def test_gradient_methods_name_themselves_and_scimlsensitivity_settings(method, keyword, hint):
    # The message named the base class whose __init__ took the keywords (_ContinuousAdjoint,
    # StepwiseGradient), with no hint.
    with pytest.raises(
        TypeError, match=re.escape(f"{method}() got an unexpected keyword argument {keyword!r} (")
    ) as error:
        getattr(local_reg, method)(**{keyword: 1})
    assert hint in str(error.value), str(error.value)
    assert getattr(local_reg, method)() == getattr(local_reg, method)()


def test_solution_names_other_libraries_attributes_and_is_unchanged_otherwise():
    solution = local_reg.odeint(lambda t, y: -y, torch.ones(2, dtype=torch.float64), [0.0, 1.0])
    for name, hint in {
        "u": "OrdinaryDiffEq's sol.u: ys here",
        "t": "ts here",
        "y": "time first",
        "retcode": "a failed solve raises local_reg.SolverError here",
        "destats": "stats here",
    }.items():
        with pytest.raises(
            AttributeError, match=re.escape(f"'Solution' object has no attribute {name!r} (")
        ) as error:
            getattr(solution, name)
        assert hint in str(error.value)
    assert not hasattr(solution, "nonexistent")
    for copied in (copy.deepcopy(solution), pickle.loads(pickle.dumps(solution))):
        assert torch.equal(copied.ys, solution.ys) and copied.stats == solution.stats
    assert math.isclose(float(solution.ys[-1, 0]), math.exp(-1.0), rel_tol=1e-5)
