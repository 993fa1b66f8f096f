"""The NFE of the true dynamics behind each trajectory-fit task, solved as the task solves its model.

A model that fits a trajectory faithfully follows the dynamics that generated it, so the NFE of
those dynamics on the task's test solve (same initial states, output times, method and
tolerances, float32 as the models) is what a faithful fit costs to solve. Compare it with the
vanilla model's test NFE (docs/results.md): where the two are close, a cut far below vanilla's
NFE needs a model smoother than the data's own dynamics.

``latent_ode``'s series are ``a s_c sin(w t + phi + 2 pi c / C)``, which a linear decoder reads from
a latent state rotating at ``w``: the generating dynamics in such coordinates are the oscillator
``(u, v, w)' = (w v, -w u, 0)`` from ``(a sin phi, a cos phi, w)``, solved here for 250 draws of the
generator's amplitude, frequency and phase distributions (not the test series themselves) over
``[0, t_max]`` at the task's tolerances.

    python benchmarks/true_field_nfe.py [--size quick]
"""

from __future__ import annotations

import argparse

import torch

import local_reg
from local_reg.experiments.tasks import REGISTRY
from local_reg.experiments.tasks.latent_ode import series_parameters
from local_reg.experiments.tasks.lotka import damped_pendulum, lotka_volterra, van_der_pol
from local_reg.experiments.tasks.spiral import spiral_field


def test_problem(name: str, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y0, times)`` of the task's test solve."""
    data = REGISTRY[name].load_data(settings, 0)
    if name == "spiral":
        times, path = data.test.tensors
        return path[0, 0], times[0]
    observed, _ = data.test.tensors
    return observed[:, 0], torch.linspace(0.0, settings["t_max"], settings["n_times"])


def oscillator(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    u, v, w = z.unbind(-1)
    return torch.stack((w * v, -w * u, torch.zeros_like(w)), dim=-1)


def latent_oscillator(settings: dict, n: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z0, times)``: the oscillator behind ``latent_ode``'s series, from ``n`` draws of their
    amplitude, frequency and phase (``latent_ode.series_parameters``)."""
    amplitude, frequency, phase = series_parameters(n, torch.Generator().manual_seed(0))
    z0 = torch.stack((amplitude * torch.sin(phase), amplitude * torch.cos(phase), frequency), dim=-1)
    return z0, torch.tensor([0.0, settings["t_max"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="quick", choices=("tiny", "quick", "full"))
    args = parser.parse_args()
    fields = {"spiral": spiral_field, "lotka": lotka_volterra, "pendulum": damped_pendulum}
    fields["vanderpol"] = van_der_pol
    print(f"size {args.size}; the true field on each task's test solve, float32")
    print("| task | method, rtol, atol | output times | true field's test NFE |")
    print("|---|---|---|---|")
    fields["latent_ode"] = oscillator
    for name, field in fields.items():
        settings = REGISTRY[name].settings(args.size)
        solver = settings["solver"]
        y0, times = latent_oscillator(settings) if name == "latent_ode" else test_problem(name, settings)
        solution = local_reg.odeint(
            field, y0, times, method=solver["method"], rtol=solver["rtol"], atol=solver["atol"]
        )
        print(
            f"| {name} | {solver['method']}, {solver['rtol']:g}, {solver['atol']:g} | {len(times)} "
            f"| {solution.stats.nfe} |"
        )


if __name__ == "__main__":
    main()
