"""``odeint(compile=...)``: the forward solve's steps compiled by ``torch.compile`` give the eager
results within round-off, with every gradient method, and compile once for many solves.

Most cases use the ``aot_eager`` backend, which traces the same forward and backward graphs as the
default one but skips code generation (fast); one case runs the default backend (inductor)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from local_reg import LocallyRegularized, odeint
from tests.problems import van_der_pol

GRADIENTS = ["direct", "checkpoint", "symplectic", "adjoint", "interpolating_adjoint"]
AOT_EAGER = {"backend": "aot_eager"}


@pytest.fixture(autouse=True)
def fresh_compile_caches():
    """Every test starts from empty compile caches: torch keeps at most ``recompile_limit`` (8)
    graphs of one function, and these tests make many (fields, tableaus, backends, grad modes)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Field(torch.nn.Module):
    """A time-dependent MLP field in float64: the stage times enter the graph as tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        ).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, torch.sin(t).expand(*y.shape[:-1], 1)], dim=-1))


def assert_same_solutions_and_gradients(field, y0, compile, solve):
    """``solve(compile)`` eager and compiled: the same statistics, and values and gradients of
    ``sum(ys**2)`` within round-off."""
    results = []
    for option in (False, compile):
        solution = solve(option)
        grads = torch.autograd.grad((solution.ys**2).sum(), (y0, *field.parameters()))
        results.append((solution.ys.detach(), grads, solution.stats))
    (ys, grads, stats), (compiled_ys, compiled_grads, compiled_stats) = results
    assert stats == compiled_stats
    assert torch.allclose(ys, compiled_ys, rtol=1e-12, atol=1e-14)
    for reference, value in zip(grads, compiled_grads, strict=True):
        assert torch.allclose(reference, value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bosh3", "fehlberg2"])
def test_compiled_steps_give_the_eager_solution_with_rejections_and_interpolated_outputs(method):
    y0 = torch.tensor([[2.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    times = torch.linspace(0.0, 6.0, 13, dtype=torch.float64)
    # A first step far too long forces rejections; outputs inside steps come from dense output.
    eager, compiled = (
        odeint(van_der_pol, y0, times, method=method, rtol=1e-7, atol=1e-9, first_step=2.0, compile=compile)
        for compile in (False, AOT_EAGER)
    )
    assert eager.stats.n_rejected > 0
    assert eager.stats == compiled.stats
    # EEst is a difference of nearly equal sums: one rounding apart in a stage moves it by about
    # 1e-8 relative, and the next step sizes with it.
    assert torch.allclose(eager.steps.t, compiled.steps.t, rtol=1e-8, atol=1e-12)
    assert torch.allclose(eager.steps.error_estimate, compiled.steps.error_estimate, rtol=1e-6, atol=1e-9)
    if eager.steps.stiffness_estimate is not None:
        assert torch.allclose(eager.steps.stiffness_estimate, compiled.steps.stiffness_estimate, rtol=1e-6)
    assert torch.allclose(eager.ys, compiled.ys, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_compiled_steps_give_the_eager_gradients(gradient):
    field = Field()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=torch.float64, requires_grad=True)
    times = [0.0, 0.7, 1.5]
    assert_same_solutions_and_gradients(
        field,
        y0,
        AOT_EAGER,
        lambda compile: odeint(field, y0, times, rtol=1e-8, atol=1e-10, gradient=gradient, compile=compile),
    )


@pytest.mark.parametrize(("grad", "n_graphs"), [(False, 1), (True, 2)])
def test_one_compilation_serves_every_step_of_every_solve_with_the_same_field_and_shape(grad, n_graphs):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    field = Field()
    with torch.set_grad_enabled(grad):
        for scale, t1 in ((1.0, 1.0), (0.5, 2.0), (2.0, 0.3)):
            y0 = scale * torch.tensor([[0.5, -0.3]], dtype=torch.float64)
            eager = odeint(field, y0, [0.0, t1])
            compiled = odeint(field, y0, [0.0, t1], compile={"backend": counting_backend})
            assert torch.allclose(eager.ys, compiled.ys, rtol=1e-12, atol=1e-14)
            assert compiled.stats.n_steps >= 2
    # Tsit5 is FSAL: every step gets its first stage, and the step's time and size are inputs, not
    # constants: one graph for every step. With autograd the first step, whose state y0 needs no
    # gradient, has its own.
    assert len(graphs) == n_graphs


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler"
)
def test_the_default_backend_gives_the_eager_solution_and_gradients():
    field = Field()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=torch.float64, requires_grad=True)
    assert_same_solutions_and_gradients(
        field, y0, True, lambda compile: odeint(field, y0, [0.0, 0.5, 2.0], compile=compile)
    )


def test_options_that_cannot_be_hashed_are_taken_and_one_compilation_is_reused():
    """inductor's ``options`` is a dict: accepted, and the same options reuse one compiled step."""
    from local_reg._step import compiled_step

    options = {"backend": "aot_eager", "options": {}}
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    first = odeint(van_der_pol, y0, [0.0, 1.0], compile=options)
    again = odeint(van_der_pol, 2 * y0, [0.0, 1.0], compile=dict(options))
    eager = odeint(van_der_pol, 2 * y0, [0.0, 1.0])
    assert first.stats.n_steps > 0 and torch.allclose(again.ys, eager.ys, rtol=1e-12, atol=1e-13)
    assert compiled_step(options) is compiled_step({"options": {}, "backend": "aot_eager"})


@pytest.mark.parametrize(
    ("compile", "error", "match"),
    [
        ("inductor", TypeError, "compile must be a bool or a dict"),
        ({1: "x"}, TypeError, "compile must be a bool or a dict"),
        (
            {"mode": "max-autotune", "bakend": "eager"},
            ValueError,
            r"torch.compile does not take: \['bakend'\]",
        ),
        # Values torch.compile takes and fails on only at the first compiled step.
        ({"backend": "no_such_backend"}, ValueError, r"compile\['backend'\] must be a callable or one of"),
        ({"backend": 3}, ValueError, r"compile\['backend'\] must be a callable or one of"),
        ({"mode": "fastest"}, ValueError, r"compile\['mode'\] must be one of"),
        ({"mode": "default", "options": {}}, ValueError, "compile takes 'mode' or 'options', not both"),
        ({"options": {"no_such_option": 1}}, ValueError, r"inductor does not know: \['no_such_option'\]"),
        ({"options": ["cpp_wrapper"]}, TypeError, r"compile\['options'\] must be a dict"),
        ({"dynamic": "maybe"}, TypeError, r"compile\['dynamic'\] must be None or a bool"),
        ({"fullgraph": "yes"}, TypeError, r"compile\['fullgraph'\] must be a bool"),
    ],
)
def test_bad_compile_options_are_refused_by_name(compile, error, match):
    with pytest.raises(error, match=match):
        odeint(van_der_pol, torch.ones(2, dtype=torch.float64), [0.0, 1.0], compile=compile)
    # A regularized model refuses them when it is built, not at its first training call, naming
    # its options entry.
    entry_match = (
        r"options\['compile'\]" + match.removeprefix("compile") if match.startswith("compile") else match
    )
    with pytest.raises(error, match=entry_match):
        LocallyRegularized(Field(), options={"compile": compile})


def test_backends_that_print_alike_get_their_own_compiled_step():
    """Two callable backends with equal reprs are two backends: each compiles with its own."""
    from local_reg._step import compiled_step

    class Backend:
        def __call__(self, graph, inputs):
            return graph

        def __repr__(self) -> str:
            return "Backend()"

    first, second = Backend(), Backend()
    assert compiled_step({"backend": first}) is compiled_step({"backend": first})
    assert compiled_step({"backend": first}) is not compiled_step({"backend": second})


def test_a_regularized_model_compiles_its_main_solve_through_options():
    field = Field()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.8]], dtype=torch.float64)
    results = []
    for compile in (False, AOT_EAGER):
        model = LocallyRegularized(
            field, generator=torch.Generator().manual_seed(3), options={"compile": compile}
        )
        ys = model(y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
        grads = torch.autograd.grad(ys[-1].sum() + model.reg_loss, tuple(field.parameters()))
        results.append((ys.detach(), model.reg_loss.detach(), grads, model.stats.t_reg))
    (ys, reg_loss, grads, t_reg), (compiled_ys, compiled_reg_loss, compiled_grads, compiled_t_reg) = results
    assert t_reg == compiled_t_reg
    assert torch.allclose(ys, compiled_ys, rtol=1e-12, atol=1e-14)
    assert torch.allclose(reg_loss, compiled_reg_loss, rtol=1e-9)
    for reference, value in zip(grads, compiled_grads, strict=True):
        assert torch.allclose(reference, value, rtol=1e-9, atol=1e-12)


def test_a_step_the_compiler_cannot_build_runs_eagerly_after_one_warning():
    """A code-generation failure (torch's ``BackendCompilerFailed``, as Triton raised on an H200 for
    the step with autograd) costs one warning, not the solve; those steps are the eager ones, and
    later solves of that dtype, device, shape and autograd mode do not try again. Every other graph
    (without autograd, another shape, another dtype) still compiles."""
    builds = []

    def fails_with_autograd_in_float32(graph, inputs):
        # The state's dtype: that of the inputs with a dimension (the parameter is 0-dim float32).
        states = [x for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0]
        dtype = torch.float32 if any(x.dtype == torch.float32 for x in states) else torch.float64
        builds.append((dtype, torch.is_grad_enabled()))
        if dtype == torch.float32 and torch.is_grad_enabled():
            raise RuntimeError("PassManager::run failed")
        return graph

    rate = torch.nn.Parameter(torch.tensor(1.0))

    def field(t, y):
        return rate * van_der_pol(t, y)

    compile = {"backend": fails_with_autograd_in_float32}
    y0 = torch.tensor([2.0, 0.0])
    eager = odeint(field, y0, [0.0, 1.0, 2.0])
    with pytest.warns(
        RuntimeWarning,
        match=r"build the step for a torch.float32 state of shape \(2,\) on cpu with autograd .*PassManager",
    ):
        first = odeint(field, y0, [0.0, 1.0, 2.0], compile=compile)
    assert builds == [(torch.float32, True)]
    assert torch.equal(first.ys, eager.ys) and first.stats.nfe == eager.stats.nfe
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile could not build")
        again = odeint(field, 2 * y0, [0.0, 1.0], compile=compile)
        assert builds == [(torch.float32, True)]  # not retried
        with torch.no_grad():
            plain = odeint(field, y0, [0.0, 1.0], compile=compile)
        double = odeint(field, y0.double(), [0.0, 1.0], compile=compile)
    assert (torch.float32, False) in builds and (torch.float64, True) in builds
    torch.testing.assert_close(again.ys, odeint(field, 2 * y0, [0.0, 1.0]).ys, rtol=0, atol=0)
    torch.testing.assert_close(plain.ys, eager.ys[:2], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(double.ys, odeint(field, y0.double(), [0.0, 1.0]).ys, rtol=1e-12, atol=1e-13)
    # A tuple state is named by its parts' shapes, as passed, not by the flat state the step sees.
    named = r"for a torch\.float32 tuple state of shapes \(1,\), \(2,\) on cpu"
    with pytest.warns(RuntimeWarning, match=named):
        odeint(lambda t, y: (-rate * y[0], -y[1]), (y0[:1], torch.ones(2)), [0.0, 1.0], compile=compile)


# A user's own torch.compile of a model that solves ------------------------------------------------


class Plain(torch.nn.Module):
    """An autonomous MLP field in float32, as a user's model would hold."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("kind", ["torchdiffeq", "torchsde", "taynode"])
def test_a_users_compile_of_a_model_gives_the_eager_results(kind):
    """Dynamo hashed the torchdiffeq/torchsde backends' backward counter (a frozen dataclass, hashed
    by its fields) half-made and failed with torch's internal AttributeError; TayNODE's nested
    forward-mode derivatives failed to trace (they run eagerly now, a graph break)."""
    from local_reg import TayNODERegularized
    from tests.problems import DecaySDE

    y0, t = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([0.0, 1.0])
    if kind == "taynode":
        model = TayNODERegularized(Plain())
    elif kind == "torchsde":
        model = LocallyRegularized(DecaySDE(), backend="torchsde", generator=torch.Generator().manual_seed(2))
    else:
        model = LocallyRegularized(Plain(), backend="torchdiffeq", generator=torch.Generator().manual_seed(2))

    def run(module):
        if kind == "torchsde":
            torch.manual_seed(3)  # the Brownian path
        ys = module(y0, t)
        return ys.detach(), float(model.reg_loss), model.stats.main

    eager = run(model)
    if kind != "taynode":
        model.generator.manual_seed(2)
    compiled = run(torch.compile(model, backend="eager"))
    torch.testing.assert_close(compiled[0], eager[0])
    assert compiled[1] == pytest.approx(eager[1], rel=1e-6) and compiled[2] == eager[2]


def test_importing_the_library_does_not_load_torchs_compiler():
    # TayNODE's eager fallback under a user's compile was a decorator run at import, which loaded
    # torch._dynamo for every user (about a second, ten times the library's own import).
    import subprocess
    import sys

    code = "import sys, torch, local_reg; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("kind", ["odeint", "model"])
def test_a_compiled_training_step_gives_the_eager_steps_gradients_and_weights(kind):
    """``torch.compile`` of a whole training step (forward, ``loss.backward()``, in one function):
    dynamo traced the library's backward hooks, which the autograd engine calls from the compiled
    frame, and failed its own guards on the non-finite-gradient check's ``weakref.finalize`` ("Guard
    failed on the same frame it was created") under ``gradient="direct"`` and every regularized
    model. The hooks run eagerly now: each step's gradients, and the self-tuning weight, match."""
    y0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    target = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0.0, 1.0, 3)

    def steps(compile):
        field = Plain()
        model = LocallyRegularized(field, generator=torch.Generator().manual_seed(3))

        def train_step():
            if kind == "model":
                loss = (model(y0, t)[1:] - target).pow(2).mean() + model.reg_loss
            else:
                loss = (odeint(field, y0, t).ys[1:] - target).pow(2).mean()
            loss.backward()
            return loss.detach()

        step = torch.compile(train_step, backend="eager") if compile else train_step
        results = []
        for _ in range(2):
            field.zero_grad()
            loss = step()
            results.append((loss, [p.grad.clone() for p in field.parameters()], model.weight()))
        return results

    for (loss, grads, weight), (eager_loss, eager_grads, eager_weight) in zip(
        steps(True), steps(False), strict=True
    ):
        torch.testing.assert_close(loss, eager_loss)
        for grad, eager_grad in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(grad, eager_grad)
        assert weight == pytest.approx(eager_weight)


@torch._dynamo.config.patch(recompile_limit=1)  # torch's own patch (monkeypatch broke its config)
def test_the_limit_of_graphs_under_fullgraph_runs_the_steps_eagerly():
    """With fullgraph=True torch raises at its limit of graphs (shared by every compiled step of the
    process) where it otherwise runs eagerly: the solve failed with torch's FailOnRecompileLimitHit,
    naming neither the limit nor local_reg."""
    compile = {"backend": "aot_eager", "fullgraph": True}

    def field(t, y):
        return -y * torch.cos(t)

    odeint(field, torch.ones(3, 2, dtype=torch.float64), [0.0, 1.0], compile=compile)  # the one graph
    y0 = torch.ones(3, 2)
    with pytest.warns(
        RuntimeWarning, match=r"reached its limit of graphs \(torch._dynamo.config.recompile_limit"
    ):
        solution = odeint(field, y0, [0.0, 1.0], compile=compile)
    torch.testing.assert_close(solution.ys, odeint(field, y0, [0.0, 1.0]).ys, rtol=0, atol=0)


def test_an_event_solve_compiled_whole_gives_the_eager_event_time_and_gradient():
    """Under a user's torch.compile of the whole solve, the check that callbacks.stop leaves the
    state unchanged read the traced graph's version counters, which do not follow the eager ones:
    odeint_event failed with "callbacks.stop modified the state it was given in place"."""
    from local_reg import odeint_event

    def event_time(y0):
        time, _ = odeint_event(
            lambda t, y: torch.ones_like(y) + 0.5 * y,
            y0,
            torch.tensor(0.0),
            event_fn=lambda t, y: y[..., 0].sum() - 2.0,
            adjoint_params=(),
        )
        return time

    results = []
    for solve in (event_time, torch.compile(event_time, backend="aot_eager")):
        y0 = torch.zeros(1, 2, requires_grad=True)
        time = solve(y0)
        time.backward()
        results.append((time.detach(), y0.grad))
    # y(t) = 2 (e^{t/2} - 1) + y0 e^{t/2} reaches 2 at t = 2 ln 2 from y0 = 0.
    assert float(results[0][0]) == pytest.approx(2 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("entry", ["model", "odeint", "compat", "sde_model", "evaluate", "odeint_dense"])
def test_a_compiled_model_serves_under_inference_mode(entry):
    """``torch.compile`` of a model whose forward solves, called under ``torch.inference_mode`` (the
    usual serving recipe): dynamo traced the solve's numpy tables and failed its own guards ("This
    is a bug"), also through the torchdiffeq drop-in, where torchdiffeq runs. The solve now runs
    eagerly under a user's compile, with the same values as uncompiled."""
    import local_reg.compat as compat
    from tests.problems import NetField

    torch.manual_seed(0)
    field = NetField(torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)))
    y0, t = torch.randn(4, 2), torch.linspace(0.0, 1.0, 3)
    if entry == "model":
        module = LocallyRegularized(field).eval()
    elif entry == "sde_model":

        class SDE(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def __init__(self):
                super().__init__()
                self.field = field

            def f(self, t, y):
                return self.field(t, y)

            def g(self, t, y):
                return 0.1 * torch.sigmoid(y)

        sde_model = LocallyRegularized(SDE(), generator=torch.Generator().manual_seed(0)).eval()

        class Reseeded(torch.nn.Module):  # the same Brownian path for each call
            def __init__(self):
                super().__init__()
                self.model = sde_model

            def forward(self, y0, t):
                self.model.generator.manual_seed(0)
                return self.model(y0, t)

        module = Reseeded()
    elif entry in ("evaluate", "odeint_dense"):

        class Dense(torch.nn.Module):
            def forward(self, y0, t):
                if entry == "evaluate":
                    return odeint(field, y0, t, dense=True).evaluate(torch.tensor(0.3))
                return compat.odeint_dense(field, y0, 0.0, 1.0)(torch.tensor(0.3))

        module = Dense()
    else:
        solve = odeint if entry == "odeint" else compat.odeint

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.field = field

            def forward(self, y0, t):
                result = solve(self.field, y0, t, method="dopri5")
                return result.ys if entry == "odeint" else result

        module = Model()
    with torch.no_grad():
        expected = module(y0, t)
    compiled = torch.compile(module, backend="eager")
    with torch.inference_mode():
        served = compiled(y0, t)
    torch.testing.assert_close(served, expected, rtol=0, atol=0)


def test_a_compiled_step_that_builds_a_torchdiffeq_model_runs_in_a_fresh_process():
    """A model on backend='torchdiffeq' built inside a compiled function imported torchdiffeq there
    at its first use, which dynamo traced (an internal error from scipy's import) in a process that
    had not imported torchdiffeq yet; the library imports it with itself now."""
    import subprocess
    import sys

    script = """
import sys, torch
from local_reg import LocallyRegularized
def step(y0):
    model = LocallyRegularized(lambda t, y: -y, backend="torchdiffeq")
    return model(y0, torch.tensor([0.0, 1.0]))[-1]
print(float(torch.compile(step, backend="eager")(torch.ones(2, 2))[0, 0]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert abs(float(done.stdout.split()[-1]) - 0.36787944) < 1e-5


@pytest.mark.parametrize("gradient", ["checkpoint", "symplectic"])
def test_a_training_step_compiled_whole_by_inductor_gives_the_eager_gradients(gradient):
    """Inductor, torch.compile's default backend, compiled the graph-free methods' backward pass,
    which the autograd engine calls from the compiled frame: checkpoint's and symplectic's
    gradients came out 2-74% off without a word (the eager backend matched). It runs eagerly now."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    target = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))

    def train_step():
        ys = odeint(
            lambda t, y: net(y),
            y0,
            torch.tensor([0.0, 0.5, 1.0]),
            gradient=gradient,
            adjoint_params=tuple(net.parameters()),
            rtol=1e-3,
            atol=1e-4,
        ).ys
        loss = (ys[-1] - target).pow(2).mean()
        loss.backward()
        return loss.detach()

    compiled = torch.compile(train_step)
    for _ in range(3):
        net.zero_grad()
        train_step()
        eager = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        compiled()
        for grad, expected in zip((p.grad for p in net.parameters()), eager, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.05 * p.grad
