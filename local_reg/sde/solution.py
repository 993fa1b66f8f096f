"""Statistics of an SDE solve: the ODE record plus drift and diffusion counted separately."""

from __future__ import annotations

from dataclasses import dataclass

from ..solution import Stats


@dataclass
class SDEStats(Stats):
    """:class:`local_reg.Stats` of an SDE solve.

    ``nfe`` is the total ``nfe_drift + nfe_diffusion``; the two are also kept apart because a
    diffusion network may cost differently from the drift network.

    Attributes:
        nfe_drift: evaluations of ``sde.f`` (initial-step heuristic included).
        nfe_diffusion: evaluations of ``sde.g``.
    """

    nfe_drift: int = 0
    nfe_diffusion: int = 0

    def add(self, nfe_drift: int, nfe_diffusion: int) -> None:
        self.nfe_drift += nfe_drift
        self.nfe_diffusion += nfe_diffusion
        self.nfe += nfe_drift + nfe_diffusion
