"""The training methods compared in the experiments, and how each wraps an ODE into a model.

A *method* names how a neural ODE is trained: ``vanilla`` (plain adaptive solve), ``local-random`` /
``local-biased`` (local regularization [LR23], unbiased or biased sampling of ``t_reg``), and
``global-error`` / ``global-stiffness`` (the ICML 2021 baselines ERNODE / SRNODE), and the other
baselines of [LR23]'s comparison: ``steer`` (random end time, Ghosh et al. 2020), ``rnode``
(kinetic energy and Jacobian norm, Finlay et al. 2020) and ``taynode`` (third derivative of the
solution, Kelly et al. 2020). The weight of a regularizer is a *weight spec* taken from the task's
settings (the published coefficients, see ``MNIST_WEIGHTS``):

- a number: a constant weight;
- ``{"start": w0, "end": w1}``: exponential decay ``w0 -> w1`` over the run's training iterations;
- ``{"adaptive": w0, "loss_rise": 0.05, ...}``: a weight that tunes itself from ``w0``
  (:class:`local_reg.regularization.AdaptiveWeight`; the other keys are its keyword arguments,
  e.g. ``target_nfe``, ``rate``, ``w_min``, ``w_max``);
- ``{"ratio": rho, "every": 1, ...}``: a weight that holds the ratio of the penalty's gradient norm to
  the task's at ``rho`` (:class:`local_reg.regularization.RatioWeight`; the other keys are its
  keyword arguments, ``every``, ``beta``, ``initial``, ``w_min``, ``w_max``, ``floor``, ``max_rise``,
  and ``scope``, the parameters it compares: :data:`.settings.RATIO_KEYS`).

STEER has no penalty: its spec is the half-width ``b`` of the end-time distribution
``U(t1 - b, t1 + b)``, a number in the units of the task's time (so the tables' weight column shows
``b`` for ``steer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from ..regularization import (
    AdaptiveWeight,
    ConstantWeight,
    ExponentialDecay,
    LocallyRegularized,
    RatioWeight,
    WeightSchedule,
)

# A spec comes from a task's JSON settings: a dict's values are numbers, an int (``every``,
# ``warmup``), a string (a ratio's ``scope``) or null (``target_nfe``), checked by ``settings.Weight``.
WeightSpec = float | dict[str, Any] | Literal["default"]


FAMILIES: tuple[str, ...] = ("vanilla", "local", "global", "steer", "rnode", "taynode")
"""The kinds of training method, each with its own solver block (:func:`.tasks.base.solver_block`):
what a method is, whatever its name."""


@dataclass(frozen=True)
class Method:
    """One way of training a neural ODE.

    Attributes:
        name: the CLI name.
        family: one of :data:`FAMILIES`: ``"vanilla"`` (:class:`local_reg.Regularized`), ``"local"``
            (``LocallyRegularized``, which alone takes the weight spec ``"default"`` and the
            ``local.*`` settings), ``"global"`` (``GloballyRegularized``), ``"steer"``, ``"rnode"``
            or ``"taynode"`` (their baselines' modules).
        sampling: how local regularization samples ``t_reg`` (``"random"`` or ``"biased"``); a local
            method's must be set.
        regularizer: ``"error"`` or ``"stiffness"``; a local or global method's must be set.

    A family outside :data:`FAMILIES`, or a local or global method without its options, is refused
    with a ``ValueError``.
    """

    name: str
    family: str
    sampling: str | None = None
    regularizer: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"method {self.name!r}: family {self.family!r} is not one of {list(FAMILIES)}; a method "
                "of another kind needs its own solver block (tasks/base.py: solver_block)"
            )
        if self.family == "local" and (self.sampling is None or self.regularizer is None):
            raise ValueError(f"local method {self.name!r} must name its sampling and regularizer")
        if self.family == "global" and self.regularizer is None:
            raise ValueError(f"global method {self.name!r} must name its regularizer")


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("vanilla", "vanilla"),
        Method("local-random", "local", sampling="random", regularizer="error"),
        Method("local-biased", "local", sampling="biased", regularizer="error"),
        Method("global-error", "global", regularizer="error"),
        Method("global-stiffness", "global", regularizer="stiffness"),
        Method("steer", "steer"),
        Method("rnode", "rnode"),
        Method("taynode", "taynode"),
    ]
}
"""Every ODE method, in the order tables list them."""

ODE_METHODS: tuple[str, ...] = tuple(METHODS)


# The published regularization coefficients ([LR23] Sec. 5, [GR21] Sec. 5); a task copies them
# into its settings so each run records the weights it used. [GR21]'s stiffness coefficients (SR
# 0.0285, 0.285) weigh the raw estimate rho: its public code (avik-pal/RegNeuralDE.jl,
# experiments/mnist_node.jl) puts 0.1 on max rho / 3.5068, Tsit5's stability size, and 0.1 / 3.5068
# = 0.0285. The penalty here is S_Est = rho / stability_size, so the weights are the printed ones
# times 3.5068 (0.1, 1.0; the public latent ODE script sets 10). The baselines: STEER's b = 0.5 on
# [0, 1] (Ghosh et al. 2020); RNODE's lambda_K = lambda_J = 0.01 (Finlay et al.'s scripts,
# github.com/cfinlay/ffjord-rnode; none published for a latent ODE, the same used there); TayNODE's
# lambda for K = 3 from Kelly et al.'s code, github.com/jacobjinkelly/easy-neural-ode, 6e-5 (MNIST)
# and 1e-2 (PhysioNet latent ODE).
MNIST_WEIGHTS: dict[str, WeightSpec] = {
    "local-random": {"start": 2.5, "end": 1.0},
    "local-biased": {"start": 2.5, "end": 1.0},
    "global-error": {"start": 100.0, "end": 10.0},
    "global-stiffness": 0.1,
    "steer": 0.5,
    "rnode": 0.01,
    "taynode": 6e-5,
}
PHYSIONET_WEIGHTS: dict[str, WeightSpec] = {
    "local-random": {"start": 100.0, "end": 10.0},
    "local-biased": {"start": 100.0, "end": 10.0},
    "global-error": {"start": 1000.0, "end": 100.0},
    "global-stiffness": 1.0,
    # b below the grid's last interval (5/24 synthetic, 5/47 PhysioNet): STEER perturbs only the end.
    "steer": 0.05,
    "rnode": 0.01,
    "taynode": 1e-2,
}


def local_options(weight: object, settings: dict[str, Any]) -> dict[str, Any]:
    """The keywords of a task's ``LocallyRegularized``: the experiments reproduce [LR23]'s
    procedure (``LocallyRegularized.PAPER_OPTIONS``; the tasks carry the paper's weights) unless the
    weight is the library's default (``None``, which comes with the default penalty) or
    ``settings["local"]`` sets study options."""
    study = settings.get("local", {})
    paper = {} if weight is None else dict(LocallyRegularized.PAPER_OPTIONS)
    if study.get("penalty") == "kinetic":
        paper.pop("probe")  # the kinetic penalty takes no probe step
    return {**paper, **study}


DEFAULT_WEIGHT: Final = "default"
"""The weight spec of local regularization's own default (``LocallyRegularized`` with no weight and
no probe option: the default penalty with its self-tuning ratio weight over the vector field's
parameters)."""


def weight_schedule(spec: WeightSpec, total_iterations: int, method: str) -> WeightSchedule | None:
    """The schedule of the weight spec of ``method`` (a name in :data:`METHODS`); a decay runs over
    the run's ``total_iterations``; ``None`` for :data:`DEFAULT_WEIGHT` (local regularization's own
    default; the other families have none)."""
    if spec == DEFAULT_WEIGHT:
        if METHODS[method].family != "local":
            raise ValueError(f"the weight spec 'default' is local regularization's; {method} needs a weight")
        return None
    if isinstance(spec, dict) and "adaptive" in spec:
        options = {k: v for k, v in spec.items() if k != "adaptive"}
        return AdaptiveWeight(spec["adaptive"], **options)
    if isinstance(spec, dict) and "ratio" in spec:
        # The scope is the runner's: it measures the gradients and feeds them to the weight.
        options = {k: v for k, v in spec.items() if k not in ("ratio", "scope")}
        return RatioWeight(spec["ratio"], **options)
    if isinstance(spec, dict):
        return ExponentialDecay(spec["start"], spec["end"], max(1, total_iterations))
    return ConstantWeight(spec)


def weight_text(weight: WeightSpec | None) -> str:
    """``2.5->1`` for an exponential decay, ``0.0285`` for a constant, ``adaptive 0.01 (...)`` /
    ``ratio 0.2 (...)`` for a self-tuning weight, ``–`` for none."""
    if weight is None:
        return "–"
    if weight == DEFAULT_WEIGHT:
        return "default"
    for kind in ("adaptive", "ratio"):
        if isinstance(weight, dict) and kind in weight:
            rest = ", ".join(
                f"{k}={v}" if isinstance(v, str) else f"{k}={number_text(v)}"
                for k, v in weight.items()
                if k != kind and v is not None
            )
            return f"{kind} {number_text(weight[kind])}" + (f" ({rest})" if rest else "")
    if isinstance(weight, dict):
        return f"{number_text(weight['start'])}->{number_text(weight['end'])}"
    return number_text(weight)


def number_text(value: float) -> str:
    """``value`` as ``:g`` prints it (``0.1``, ``1e-05``, ``4`` for ``4.0``) where that reads back as
    ``value``, else in full (``0.1234567``), an int as it is: a row's label must tell two settings
    apart."""
    if isinstance(value, int):
        return str(value)
    text = f"{value:g}"
    return text if float(text) == value else repr(float(value))
