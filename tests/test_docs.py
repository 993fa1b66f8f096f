"""Every ```python block of README.md and docs/*.md runs against the library, and what its comments
state (shapes, facts) holds.

Each block runs alone, in a fresh namespace that first gets the placeholder names the docs use
(``func``, ``y0``, ``t``, ``task_loss``, ...; ``PRELUDE``), small enough that every block takes well
under a second. A block that cannot run is marked in the markdown, on the line just before its
fence, with ``<!-- not run: reason -->``; it is then skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import local_reg
import local_reg.compat
from local_reg import SteerRegularized, sdeint

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")


def python_blocks(path: Path) -> list[tuple[str, str | None]]:
    """The file's ```python blocks in order, each with the reason it is not run (None: it runs)."""
    blocks: list[tuple[str, str | None]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i > 0 else None
            end = i + 1
            while lines[end].strip() != "```":
                end += 1
            blocks.append(("\n".join(lines[i + 1 : end]), marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


def block_params() -> list[Any]:
    params = []
    for path in FILES:
        for index, (source, reason) in enumerate(python_blocks(path)):
            name = str(path.relative_to(ROOT))
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(name, source, id=f"{name}-{index}", marks=marks))
    return params


class Field(torch.nn.Module):
    """A damped rotation: every component of the state changes sign within t = pi, so an event
    ``y[..., 0] = 0`` is reached."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]]))
            self.linear.bias.zero_()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y)


def prelude() -> dict[str, Any]:
    """The placeholder names the docs' blocks use, fresh for each block."""
    func = Field()
    return {
        "func": func,
        "field": func,
        "field_module": func,
        "y0": torch.tensor([[1.0, 0.5], [0.8, -0.3], [1.2, 0.1]]),
        "t": torch.linspace(0.0, 1.0, 5),
        "t0": torch.tensor(0.0),
        "task_loss": lambda ys: ys.pow(2).mean(),
        "loss_fn": lambda ys: ys.pow(2).mean(),
        "optimizer": torch.optim.SGD(func.parameters(), lr=1e-3),
        "head": torch.nn.Linear(2, 2),
        "n_iterations": 10,
        "weight": 0.1,
        "my_norm": lambda x: x.abs().max(),
        "event_fn": lambda t, y: y[..., 0],
    }


def readme_quick_start(ns: dict[str, Any]) -> None:
    solution = ns["solution"]
    assert solution.ys.shape == (10, 128, 2)
    for name in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert isinstance(getattr(solution.stats, name), int)
    n = solution.stats.n_accepted
    for name in ("t", "dt", "error_estimate", "stiffness_estimate"):
        assert getattr(solution.steps, name).shape == (n,)


def readme_local_regularization(ns: dict[str, Any]) -> None:
    assert ns["loss"].dim() == 0
    assert not ns["model"].training and ns["model"].reg_loss == 0  # the plain solve
    assert ns["ys"].shape == (len(ns["t"]), *ns["y0"].shape)
    assert ns["func"].linear.weight.grad is not None


def compat(ns: dict[str, Any]) -> None:
    # The last line: torchdiffeq's (event_t, states at [t0, event_t]).
    event_t, ys = ns["event_t"], ns["ys"]
    assert isinstance(ys, torch.Tensor) and ys.shape == (2, *ns["y0"].shape)
    assert event_t.dim() == 0 and event_t > 0
    assert ys[-1, :, 0].abs().min() < 1e-4


def gradients_quick(ns: dict[str, Any]) -> None:
    solution = ns["solution"]
    assert solution.stats.nfe > 0 and solution.stats.nfe_backward > 0
    assert ns["field"].linear.weight.grad is not None


def gradients_checkpoints(ns: dict[str, Any]) -> None:
    assert ns["solution"].ys.shape == (len(ns["t"]), *ns["y0"].shape)


def adaptive_weight(ns: dict[str, Any]) -> None:
    assert isinstance(ns["model"].weight, local_reg.AdaptiveWeight)
    assert ns["model"].stats.nfe_main > 0


def ratio_weight(ns: dict[str, Any]) -> None:
    # The default every=1: measured in the one backward pass of the block, folded in by step().
    weight = ns["weight"]
    assert weight.last_ratio is not None and weight.last_ratio > 0
    assert weight() != weight.initial


def training_loop(ns: dict[str, Any]) -> None:
    assert ns["ys"].shape == ns["prediction"].shape == (10, 128, 2)
    assert ns["model"].reg_loss.dim() == 0 and ns["model"].reg_loss == 0  # eval mode
    assert ns["model"].stats.nfe_main > 0


def functional(ns: dict[str, Any]) -> None:
    assert ns["ys"].shape == (len(ns["t"]), *ns["y0"].shape)
    assert ns["reg"].dim() == 0 and ns["reg"] > 0


def custom_penalty(ns: dict[str, Any]) -> None:
    # The penalty of one's own is the weighted mean square of the final state, and ys its solve's.
    model, ys = ns["model"], ns["ys"]
    assert type(model.penalty).__name__ == "EndPenalty"
    assert torch.allclose(model.reg_loss, 0.5 * ys[-1].pow(2).mean())
    expected = local_reg.odeint(ns["func"], ns["y0"], ns["t"]).ys
    assert torch.equal(ys, expected)


def baselines(ns: dict[str, Any]) -> None:
    assert isinstance(ns["model"], local_reg.TayNODERegularized)
    assert ns["model"].reg_loss.dim() == 0 and ns["model"].reg_loss > 0
    steer = SteerRegularized(ns["func"], b=0.1)
    steer(ns["y0"], ns["t"])
    assert steer.reg_loss.dim() == 0 and steer.reg_loss == 0


def sde(ns: dict[str, Any]) -> None:
    solution = ns["solution"]
    assert solution.ys.shape == (5, 64, 2)
    stats = solution.stats
    assert stats.nfe == stats.nfe_drift + stats.nfe_diffusion and stats.nfe_diffusion > 0
    assert solution.steps.stiffness_estimate is None
    # Every output time is the end of an accepted step.
    ends = solution.steps.t + solution.steps.dt
    for time in torch.linspace(0, 1, 5)[1:]:
        assert torch.isclose(ends, time.to(ends.dtype)).any()
    assert ns["reg"].dim() == 0
    assert inspect.signature(sdeint).parameters["rtol"].default == 1e-2
    assert inspect.signature(sdeint).parameters["atol"].default == 1e-2
    model = ns["model"]
    assert model.problem.rtol == model.problem.atol == 1e-2
    assert model.training and model.reg_loss.dim() == 0 and model.reg_loss > 0
    assert ns["ys"].shape == (5, 64, 2)


DEPRECATED_KEYWORDS = {"checkpoints", "adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options"}


def solver_signature(ns: dict[str, Any]) -> None:
    # The block's `def odeint` is the real signature, less the deprecated keywords.
    shown = inspect.signature(ns["odeint"]).parameters
    real = inspect.signature(local_reg.odeint).parameters
    assert list(shown) == [name for name in real if name not in DEPRECATED_KEYWORDS]
    for name, parameter in shown.items():
        assert parameter.kind == real[name].kind, name
        assert parameter.default == real[name].default, name


def solver_jump_ts(ns: dict[str, Any]) -> None:
    solution, y0 = ns["solution"], ns["y0"]
    # Exact to rounding (0.5 at rate 1, then 0.5 at rate -2), with fewer evaluations than without.
    torch.testing.assert_close(solution.ys[-1], y0 - 0.5)
    assert solution.stats.nfe < local_reg.odeint(ns["switched"], y0, [0.0, 1.0]).stats.nfe


def solver_derivative(ns: dict[str, Any]) -> None:
    velocity, solution = ns["velocity"], ns["solution"]
    assert velocity.shape == (5, *ns["y0"].shape)
    # The interpolant's derivative is the field along the solution, to the interpolant's accuracy.
    times = torch.linspace(0.0, 1.0, 5)
    expected = torch.stack(
        [ns["func"](time, state) for time, state in zip(times, solution.evaluate(times), strict=True)]
    )
    torch.testing.assert_close(velocity, expected.detach(), rtol=1e-3, atol=1e-4)


def solver_event(ns: dict[str, Any]) -> None:
    event_t, solution = ns["event_t"], ns["solution"]
    assert event_t.dim() == 0
    assert torch.equal(solution.ts, torch.stack([ns["t0"], event_t]))
    assert solution.ys.shape == (2, *ns["y0"].shape)
    assert solution.ys[-1, :, 0].abs().min() < 1e-4


def solver_restarted_events(ns: dict[str, Any]) -> None:
    expected = [1.2970, 5.1673, 7.4631, 11.626, 13.572, 18.191, 19.572]
    assert ns["times"] == pytest.approx(expected, abs=1e-3)


CHECKS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "README.md-0": ("solution.stats", readme_quick_start),
    "README.md-2": ("model = LocallyRegularized(", readme_local_regularization),
    "docs/compat.md-0": ("import local_reg.compat as torchdiffeq", compat),
    "docs/gradients.md-0": ("gradient=", gradients_quick),
    "docs/gradients.md-1": ("checkpoints=", gradients_checkpoints),
    "docs/regularization.md-0": ("AdaptiveWeight(", adaptive_weight),
    "docs/regularization.md-1": ("RatioWeight(", ratio_weight),
    "docs/regularization.md-2": ("n_iterations = 500", training_loop),
    "docs/regularization.md-3": ("local_regularization(", functional),
    "docs/regularization.md-4": ("class EndPenalty:", custom_penalty),
    "docs/regularization.md-5": ("model = TayNODERegularized(", baselines),
    "docs/sde.md-0": ("sdeint(", sde),
    "docs/solver.md-0": ("def odeint(", solver_signature),
    "docs/solver.md-1": ("jump_ts=", solver_jump_ts),
    "docs/solver.md-2": ("solution.derivative(", solver_derivative),
    "docs/solver.md-3": ("odeint_event(", solver_event),
    "docs/solver.md-4": ("times", solver_restarted_events),
}
"""What a block's comments state, checked on its namespace after it ran, each with a line the block
contains: the blocks are known by their place in the file, and a block added before another moves
it (:func:`test_every_check_names_a_block` then fails rather than check the wrong block)."""

SHORTER: dict[str, tuple[str, str]] = {"docs/regularization.md-2": ("n_iterations = 500", "n_iterations = 2")}
"""A block's training length, shortened to keep the test fast."""


@pytest.mark.parametrize(("name", "source"), block_params())
def test_block_runs(name: str, source: str, request: pytest.FixtureRequest) -> None:
    block_id = request.node.callspec.id
    if block_id in SHORTER:
        old, new = SHORTER[block_id]
        assert old in source, f"{block_id} no longer contains {old!r}"
        source = source.replace(old, new)
    namespace = prelude()
    exec(compile(source, block_id, "exec"), namespace)  # noqa: S102 -- the docs' own code
    if block_id in CHECKS:
        CHECKS[block_id][1](namespace)


def test_every_check_names_a_block() -> None:
    sources = {param.id: param.values[1] for param in block_params()}
    assert set(CHECKS) <= set(sources) and set(SHORTER) <= set(sources)
    for block_id, (contained, check) in CHECKS.items():
        assert contained in sources[block_id], (
            f"{check.__name__} checks {block_id}, which lacks {contained!r}"
        )
    assert {path.name for path in FILES} >= {"README.md", "sde.md", "solver.md"}


LINKED = [*FILES, ROOT / "examples" / "README.md", ROOT / "experiments" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation other than ``-`` and
    ``_`` dropped, spaces as ``-``; a repeated one gets ``-1``, ``-2``, ..."""
    anchors: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#+ ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("path", LINKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(path: Path) -> None:
    broken = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            if "://" in target or target.startswith("mailto:"):
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name).resolve() if name else path
            if not linked.exists():
                broken.append(f"{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{number}: {target} (no such heading)")
    assert not broken, broken


def test_the_api_reference_is_what_the_docstrings_say() -> None:
    """docs/api.md is written from the docstrings by docs/api.py: a changed docstring or a new public
    name without the page written again fails here."""
    spec = importlib.util.spec_from_file_location("api_page", ROOT / "docs" / "api.py")
    assert spec is not None and spec.loader is not None
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    page = writer.render()
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == page, "run: python docs/api.py"
    for module in (local_reg, local_reg.regularization, local_reg.sde, local_reg.gradients, local_reg.compat):
        for name in module.__all__:
            assert f"### `{name}`" in page, name


def test_the_citation_file_cites_this_version_and_the_papers_it_implements() -> None:
    """CITATION.cff's version is the package's (it is read by hand at each release otherwise), and
    its references are the three papers the README names."""
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r'^version: "([^"]+)"$', citation, re.M).group(1) == local_reg.__version__
    titles = re.findall(r'^  - type: conference-paper\n    title: "([^"]+)"$', citation, re.M)
    assert [title.split(":")[0] for title in titles] == [
        "Locally Regularized Neural Differential Equations",
        "Opening the Blackbox",
        "Symplectic Adjoint Method for Exact Gradient of Neural ODE with Minimal Memory",
    ]
