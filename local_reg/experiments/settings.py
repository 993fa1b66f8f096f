"""What each setting of a task may hold: a small schema next to the task's defaults, checked in one place.

A task declares ``schema`` (a :class:`Schema`): every setting's :class:`Rule` (nested groups such as
``solver`` or ``weights`` are dicts of rules) and the :class:`Requirement` s that tie settings
together (e.g. enough data points for one training segment). :func:`apply_overrides` applies
``--set KEY=VALUE`` pairs by dotted key and :func:`check_settings` checks the result against the
schema; both raise :class:`SettingsError` naming the key and what it may hold, so a bad value is
refused before any training rather than crashing (or silently training) later.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from .methods import weight_schedule
from .results import is_number


class SettingsError(ValueError):
    """A setting is unknown or holds a value it may not: the message names the key and what is allowed."""


class Rule:
    """What one setting may hold."""

    def allowed(self) -> str:
        """What the setting may hold, in words (ends the error message)."""
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def refusal(self, value: Any) -> str | None:
        """Why ``value`` is refused, in words that follow the setting's name; ``None`` if accepted."""
        return None if self.accepts(value) else f"must be {self.allowed()}"


@dataclass(frozen=True)
class Integer(Rule):
    """An integer ``>= minimum`` (``null`` too when ``nullable``: e.g. "all the data")."""

    minimum: int = 1
    nullable: bool = False

    def allowed(self) -> str:
        return ("null or " if self.nullable else "") + f"an integer >= {self.minimum}"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum


@dataclass(frozen=True)
class Real(Rule):
    """A finite number in ``(low, high]`` (``[low, high]`` when ``closed``): integers are numbers too."""

    low: float = 0.0
    high: float = math.inf
    closed: bool = False

    def allowed(self) -> str:
        low = f"{'>=' if self.closed else '>'} {self.low:g}"
        return f"a finite number {low}" + ("" if self.high == math.inf else f" and <= {self.high:g}")

    def accepts(self, value: Any) -> bool:
        if not (is_number(value) and math.isfinite(value)):
            return False
        above = value >= self.low if self.closed else value > self.low
        return above and value <= self.high


@dataclass(frozen=True)
class OneOf(Rule):
    """One of a fixed set of values (a solver's name; a size fixed by the data)."""

    choices: tuple[Any, ...]

    def allowed(self) -> str:
        if len(self.choices) == 1:
            return f"{self.choices[0]!r} (fixed by the task)"
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def accepts(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choices)


@dataclass(frozen=True)
class Directory(Rule):
    """``null`` or the path of an existing directory."""

    def allowed(self) -> str:
        return "null or the path of an existing directory"

    def accepts(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and os.path.isdir(value))


ADAPTIVE_KEYS = ("loss_rise", "target_nfe", "rate", "beta", "warmup", "w_min", "w_max")
"""The keywords of :class:`local_reg.AdaptiveWeight` a ``{"adaptive": w0, ...}`` spec may set."""
RATIO_KEYS = ("every", "beta", "initial", "w_min", "w_max", "floor", "max_rise", "scope")
"""The keywords of :class:`local_reg.RatioWeight` a ``{"ratio": rho, ...}`` spec may set, and ``scope``:
the parameters whose gradients it compares, ``"model"`` (every trained one, the default) or
``"field"`` (the regularized vector field's only)."""
RATIO_SCOPES = ("model", "field")


@dataclass(frozen=True)
class Weight(Rule):
    """A regularization weight spec (:mod:`.methods`): a constant ``>= 0``, ``{"start": w0, "end": w1}``
    with ``w0, w1 > 0`` (an exponential decay, so neither may be 0), or ``{"adaptive": w0, ...}``
    with ``w0 > 0`` and :data:`ADAPTIVE_KEYS` (numbers, ``warmup`` an integer, ``target_nfe`` may be
    null), or ``{"ratio": rho, ...}`` with ``rho > 0`` and :data:`RATIO_KEYS` (``every`` an integer
    >= 1, ``scope`` one of :data:`RATIO_SCOPES`, the others numbers); a self-tuning spec's numbers
    must also lie in the ranges its class takes (``beta < 1``, ``w_min <= initial <= w_max``, ...:
    the spec is refused here, naming the setting, rather than when the model is made), or ``"default"``
    (local regularization's own default, the kinetic penalty and its self-tuning weight, no probe step;
    local methods only: ``default=False`` refuses it for the others)."""

    default: bool = True

    def allowed(self) -> str:
        return (
            'a number >= 0, {"start": w0, "end": w1} with finite w0, w1 > 0, {"adaptive": w0, ...} '
            f"with w0 > 0 and keys among {', '.join(ADAPTIVE_KEYS)} (warmup an integer >= 0, "
            "only target_nfe may be null), or "
            '{"ratio": rho, ...} '
            f"with rho > 0 and keys among {', '.join(RATIO_KEYS)} (every an integer >= 1, floor <= 1, "
            f"max_rise > 1, scope one of {', '.join(RATIO_SCOPES)}), each self-tuning spec's numbers in "
            "the ranges AdaptiveWeight and RatioWeight take (beta < 1, 0 < w_min <= initial <= w_max)"
            + (', or "default" (local regularization\'s own)' if self.default else "")
        )

    def accepts(self, value: Any) -> bool:
        return self.refusal(value) is None

    def refusal(self, value: Any) -> str | None:
        if value == "default":
            return None if self.default else f"must be {self.allowed()}"
        for kind, keys in (("adaptive", ADAPTIVE_KEYS), ("ratio", RATIO_KEYS)):
            if isinstance(value, dict) and kind in value:
                return _self_tuning_refusal(kind, keys, value)
        if isinstance(value, dict):
            accepted = set(value) == {"start", "end"} and all(Real().accepts(v) for v in value.values())
        else:
            accepted = Real(closed=True).accepts(value)
        return None if accepted else f"must be {self.allowed()}"


def _self_tuning_refusal(kind: str, keys: tuple[str, ...], spec: dict[str, Any]) -> str | None:
    """Why a ``{"adaptive": w0, ...}`` or ``{"ratio": rho, ...}`` spec is refused, naming its sub-key."""
    if not Real().accepts(spec[kind]):
        return f'holds "{kind}": {_describe(spec[kind])}, which must be a finite number > 0'
    unknown = [k for k in spec if k != kind and k not in keys]
    if unknown:
        return f'has unknown key(s) {", ".join(unknown)} (the "{kind}" spec takes {", ".join(keys)})'
    for key, value in spec.items():
        if key == "scope" and value not in RATIO_SCOPES:
            return f'holds "scope": {_describe(value)}, which must be one of {", ".join(RATIO_SCOPES)}'
        nullable = key == "target_nfe"
        if key not in (kind, "scope", "every", "warmup") and not (
            (value is None and nullable) or Real(closed=True).accepts(value)
        ):
            return f'holds "{key}": {_describe(value)}, which must be a finite number >= 0'
    try:
        weight_schedule(spec, 1, "local-random")
    except (ValueError, TypeError) as error:  # the class checks the ranges and names the keyword
        return f"is refused by {'AdaptiveWeight' if kind == 'adaptive' else 'RatioWeight'}: {error}"
    return None


Fields = Mapping[str, Union[Rule, "Fields"]]


@dataclass(frozen=True)
class Requirement:
    """A condition on several settings: ``holds(settings)``, explained by ``text`` (names the keys)."""

    keys: tuple[str, ...]
    holds: Callable[[dict[str, Any]], bool]
    text: str


@dataclass(frozen=True)
class Schema:
    """Every setting of a task (``fields``, nested for groups) and the requirements across them."""

    fields: Fields
    requires: tuple[Requirement, ...] = ()


def _describe(value: Any) -> str:
    """The value as it was written on the command line (JSON), a string marked as one."""
    if isinstance(value, str):
        return f"the string {value!r}"
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _check_group(fields: Fields, settings: Any, prefix: str) -> None:
    where = prefix.rstrip(".") or "the settings"
    if not isinstance(settings, dict):
        raise SettingsError(
            f"{where} must be an object with the keys {', '.join(fields)}, got {_describe(settings)}"
        )
    unknown = [k for k in settings if k not in fields]
    missing = [k for k in fields if k not in settings]
    if unknown or missing:
        problems = ([f"unknown {', '.join(prefix + k for k in unknown)}"] if unknown else []) + (
            [f"missing {', '.join(prefix + k for k in missing)}"] if missing else []
        )
        raise SettingsError(f"{where}: {'; '.join(problems)} (keys: {', '.join(fields)})")
    for key, rule in fields.items():
        if isinstance(rule, Rule):
            refusal = rule.refusal(settings[key])
            if refusal is not None:
                raise SettingsError(f"{prefix}{key} {refusal}, got {_describe(settings[key])}")
            if isinstance(rule, Real):
                # 4 and 4.0 are one setting: one run, one table (the hashes read the JSON).
                settings[key] = float(settings[key])
        else:
            _check_group(rule, settings[key], f"{prefix}{key}.")


def check_settings(schema: Schema, settings: dict[str, Any]) -> None:
    """Raise :class:`SettingsError` unless every setting is known and holds what its rule allows, and
    every requirement holds. A number a :class:`Real` rule allows is made a float in place."""
    _check_group(schema.fields, settings, "")
    for requirement in schema.requires:
        if not requirement.holds(settings):
            got = ", ".join(f"{k}={settings[k]!r}" for k in requirement.keys)
            raise SettingsError(f"{requirement.text} (got {got})")


def apply_overrides(settings: dict[str, Any], overrides: Mapping[str, Any], task: str) -> dict[str, Any]:
    """A copy of ``settings`` with each dotted ``key: value`` of ``overrides`` replaced.

    Only existing keys may be replaced (a typo is an error, not a new setting that nothing reads).
    """
    settings = copy.deepcopy(settings)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node: Any = settings
        for depth, parent in enumerate(parents):
            path = ".".join(parents[: depth + 1])
            if parent not in node:
                raise SettingsError(_unknown(task, key, node, ".".join(parents[:depth])))
            node = node[parent]
            if not isinstance(node, dict):
                raise SettingsError(f"task {task!r} has no setting {key!r}: {path} is a single value")
        if leaf not in node:
            raise SettingsError(_unknown(task, key, node, ".".join(parents)))
        node[leaf] = value
    return settings


def _unknown(task: str, key: str, node: dict[str, Any], group: str) -> str:
    where = f"{group} holds" if group else "settings"
    return f"task {task!r} has no setting {key!r} ({where}: {', '.join(node)})"
