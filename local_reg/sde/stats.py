"""What a regularized SDE forward pass reports about its cost."""

from __future__ import annotations

from dataclasses import dataclass

from ..solution import RegularizationStats


@dataclass
class SDERegularizationStats(RegularizationStats):
    """:class:`local_reg.RegularizationStats` of a neural SDE, with drift and diffusion counted apart.

    ``nfe_main`` and ``nfe_reg`` count drift plus diffusion evaluations; ``nfe_reg`` includes ``f``
    and ``g`` at ``u(t_reg)``, the initial-step heuristic's probe and the step's own.
    ``solver_stats`` is the main solve's :class:`local_reg.sde.SDEStats` (``local_reg`` backend).

    Attributes:
        nfe_main_drift, nfe_main_diffusion: ``nfe_main``, apart.
        nfe_reg_drift, nfe_reg_diffusion: ``nfe_reg``, apart.
    """

    nfe_main_drift: int = 0
    nfe_main_diffusion: int = 0
    nfe_reg_drift: int = 0
    nfe_reg_diffusion: int = 0
