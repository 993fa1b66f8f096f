"""Write docs/api.md, the API reference: every public name of local_reg, its signature and the first
paragraph of its docstring, with a link to the guide page that explains it.

    python docs/api.py           # rewrite docs/api.md
    python docs/api.py --check   # exit 1 if docs/api.md is not what this writes (tests/test_docs.py)

The docstrings are the source: change them, not the page.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import local_reg
import local_reg.compat
import local_reg.gradients
import local_reg.regularization
import local_reg.sde

DOCS = Path(__file__).resolve().parent
PAGE = DOCS / "api.md"
# (title, module, introduction, the guide its names link to)
SECTIONS: list[tuple[str, ModuleType, str, str]] = [
    (
        "Solving ODEs and SDEs",
        local_reg,
        "`import local_reg`: solvers, their options and results.",
        "solver.md",
    ),
    (
        "Regularization",
        local_reg.regularization,
        "Also importable from `local_reg` itself: the regularized modules, their penalties and weights.",
        "regularization.md",
    ),
    ("SDE steps", local_reg.sde, "`local_reg.sde`: the instrumented SDE step beside `sdeint`.", "sde.md"),
    (
        "Gradient methods",
        local_reg.gradients,
        "`local_reg.gradients`: the gradient methods and the base classes a new one builds on.",
        "gradients.md",
    ),
    (
        "torchdiffeq drop-in",
        local_reg.compat,
        "`local_reg.compat`: torchdiffeq's functions, on local_reg.",
        "compat.md",
    ),
]
# Names whose guide is not their section's.
GUIDE = {
    **dict.fromkeys(["sdeint", "is_sde", "SDEStats"], "sde.md"),
    **dict.fromkeys(
        ["BacksolveAdjoint", "Checkpoint", "Direct", "GradientMethod", "InterpolatingAdjoint", "Symplectic"],
        "gradients.md",
    ),
    "GRADIENT_METHODS": "gradients.md",
}

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc):`~?([^`]+)`")


def markdown(text: str) -> str:
    """A docstring paragraph as markdown: RST literals and roles as code, on one line."""
    text = _ROLE.sub(lambda match: f"`{match.group(1)}`", text)
    return " ".join(text.replace("``", "`").split())


def first_paragraph(obj: object) -> str:
    paragraph = (inspect.getdoc(obj) or "").split("\n\n")[0]
    if paragraph.endswith(":"):  # it introduces a block the page leaves out
        paragraph = paragraph.rstrip(":") + "."
    return markdown(paragraph)


def default_text(value: Any) -> str:
    """A default as a reader would write it: functions by name (their repr holds an address)."""
    if callable(value) and hasattr(value, "__name__") and not isinstance(value, type):
        return value.__name__
    return repr(value)


def signature(name: str, obj: Any) -> str:
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return name
    parts = []
    star_done = False
    for parameter in parameters:
        if parameter.kind is parameter.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            text, star_done = f"*{text}", True
        elif parameter.kind is parameter.VAR_KEYWORD:
            text = f"**{text}"
        if parameter.annotation is not parameter.empty:
            text += f": {parameter.annotation}"
        if parameter.default is not parameter.empty:
            text += f" = {default_text(parameter.default)}"
        parts.append(text)
    return f"{name}({', '.join(parts)})"


def value_text(value: Any) -> str:
    """A public constant: what it holds, briefly."""
    if isinstance(value, dict):
        return "A dict with keys " + ", ".join(f"`{key}`" for key in value)
    return f"`{value!r}`"


def order(name: str, obj: Any) -> tuple[int, bool, str]:
    """Functions first, then classes, then constants; an object under its own name before any
    other name of it; alphabetical."""
    kind = 0 if inspect.isfunction(obj) else 1 if inspect.isclass(obj) else 2
    return kind, getattr(obj, "__name__", name) != name, name.lower()


def entry(name: str, obj: Any, guide: str, aliases: dict[int, str]) -> list[str]:
    if id(obj) in aliases:
        return [f"### `{name}`", "", f"The same object as `{aliases[id(obj)]}`.", ""]
    aliases[id(obj)] = name
    # compat's names (its sdeint too) are all documented in its own guide.
    page = guide if guide == "compat.md" else GUIDE.get(name, guide)
    see = f" See [{page}]({page})."
    if inspect.isclass(obj) or inspect.isfunction(obj):
        kind = "class" if inspect.isclass(obj) else "function"
        return [
            f"### `{name}`",
            "",
            f"```text\n{kind} {signature(name, obj)}\n```",
            "",
            first_paragraph(obj) + see,
            "",
        ]
    return [f"### `{name}`", "", f"{value_text(obj)}.{see}", ""]


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Every public name, its signature and the first paragraph of its docstring, with a link to the",
        "guide that explains it. Written by `python docs/api.py` from the docstrings (a test checks that",
        "it is current): the docstrings hold the rest.",
        "",
    ]
    shown: set[tuple[int, str]] = set()
    aliases: dict[int, str] = {}
    for title, module, intro, guide in SECTIONS:
        # Each object under the first section that lists it (the regularization names in their own
        # section, though `local_reg` lists them too); a second name of it says so.
        exported = [getattr(module, name) for name in module.__all__]
        names = [
            name
            for name, obj in zip(module.__all__, exported, strict=True)
            if (id(obj), name) not in shown
            and not (module is local_reg and name in local_reg.regularization.__all__)
        ]
        names.sort(key=lambda name: order(name, getattr(module, name)))
        if not names:
            continue
        lines += [f"## {title}", "", intro, ""]
        for name in names:
            obj = getattr(module, name)
            shown.add((id(obj), name))
            lines += entry(name, obj, guide, aliases)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if PAGE.read_text() != text:
            print("docs/api.md is out of date: run python docs/api.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
