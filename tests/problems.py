"""Test problems with known or reference solutions, shared by the test modules."""

from __future__ import annotations

import gc

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm


class CountingField(torch.nn.Module):
    """Wraps a vector field and counts its calls independently of the solver."""

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.func(t, y)


class NetField(torch.nn.Module):
    """``f(t, y) = net(y)``: an autonomous field with ``net``'s parameters (shared by every
    ``NetField`` of one ``net``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def lotka_volterra(t, y):
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], dim=-1)


def van_der_pol(t, y, mu=1.0):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)


def rotation(t, y):
    """``x' = v, v' = -x``: the harmonic oscillator, a solve that is neither stiff nor hard."""
    return torch.stack([y[1], -y[0]])


def to_numpy_field(func):
    def field(t, y):
        out = func(torch.tensor(t, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64))
        return out.numpy()

    return field


def scipy_reference(func, y0, times):
    """DOP853 at rtol=atol=1e-13: the independent reference solution."""
    times = np.asarray(times, dtype=np.float64)
    solution = solve_ivp(
        to_numpy_field(func),
        (times[0], times[-1]),
        np.asarray(y0, dtype=np.float64),
        method="DOP853",
        t_eval=times,
        rtol=1e-13,
        atol=1e-13,
    )
    assert solution.success
    return torch.from_numpy(solution.y.T.copy())


class DecaySDE(torch.nn.Module):
    """``dy = -y dt + 0.1 y dW``: a small diagonal-noise Itô SDE (geometric Brownian motion)."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * y


class ConstantNoiseSDE(torch.nn.Module):
    """``dy = -y dt + 0.1 dW``: diagonal noise of a constant diffusion."""

    noise_type, sde_type = "diagonal", "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return 0.1 * torch.ones_like(y)


LINEAR_MATRIX = np.array([[-0.5, 1.0, 0.0], [-1.0, -0.2, 0.3], [0.2, 0.0, -0.8]])
TIGHT_TOLERANCES = {"rtol": 1e-11, "atol": 1e-11}


class LinearRows(torch.nn.Module):
    """``f(t, z) = z A^T`` for a batch of row states: ``z(t) = z0 expm(A t)^T``."""

    def __init__(self, matrix: np.ndarray = LINEAR_MATRIX):
        super().__init__()
        self.matrix = torch.nn.Parameter(torch.tensor(matrix))

    def forward(self, t, z):
        return z @ self.matrix.T


def linear_rows_solution(z0: np.ndarray, t: float) -> np.ndarray:
    """``LinearRows``' solution at ``t`` from ``z(0) = z0``."""
    return z0 @ expm(LINEAR_MATRIX * t).T


def failing_backward(message: str):
    """An identity on a tensor whose backward pass raises ``RuntimeError(message)``: a failure
    further up a graph (an error of another part of the model, a compiled backward's refusal)."""

    class Fails(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError(message)

    return Fails.apply


def made_at(address: int, make):
    """What ``make()`` makes, made again until CPython places it at ``address`` (a freed object's,
    taken by an identity check by ``id`` for that object), the misses kept meanwhile. ``make`` should
    make one Python object only: one made before it may take the address. An address that is not
    given out again (its memory pool freed with it, which happens in some processes) gives the last
    one made: a plain replacement, which the checks must find too."""
    misses = []
    for _ in range(10_000):
        made = make()
        if id(made) == address:
            return made
        misses.append(made)
    return made


def live_objects(kind: type) -> list:
    """The objects of ``kind`` the garbage collector tracks, told by ``type()``: ``isinstance`` reads
    ``__class__``, which raises ``ReferenceError`` on a dead ``weakref.proxy`` (garbage that
    ``torch.compile`` leaves until the next collection)."""
    return [obj for obj in gc.get_objects() if issubclass(type(obj), kind)]
