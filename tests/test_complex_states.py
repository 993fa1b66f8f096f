"""Complex states: ``odeint`` solves a complex ``y0`` as its real view (:mod:`local_reg._tuple`).

The references: the exact solution ``exp(-i H t) y0`` of a Schrödinger equation, the same solve of
the real view written by hand, ``gradcheck`` in complex128 and torchdiffeq's own complex solve.
"""

import math

import pytest
import torch

from local_reg import StepCallbacks, odeint, odeint_event
from local_reg.gradients import GRADIENT_METHODS

DTYPE = torch.complex128


def hamiltonian() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(3, 3, dtype=DTYPE, generator=generator)
    return (h + h.conj().T) / 2


H = hamiltonian()


def schroedinger(t, psi):
    return -1j * psi @ H.T.to(psi.dtype)


def exact(times, psi0, h=H):
    return torch.stack([psi0 @ torch.linalg.matrix_exp(-1j * h * float(t)).T for t in times])


PSI0 = torch.tensor([[1.0, 0.5j, -0.2], [0.3, -0.4 + 0.1j, 0.8j]], dtype=DTYPE)


@pytest.mark.parametrize(
    ("method", "options", "tol"),
    [
        ("tsit5", {"rtol": 1e-9, "atol": 1e-11}, 1e-7),
        ("dopri5", {"rtol": 1e-9, "atol": 1e-11}, 1e-7),
        ("dopri8", {"rtol": 1e-11, "atol": 1e-13}, 1e-9),
        ("rk4", {"step_size": 0.01}, 1e-7),
    ],
)
def test_a_complex_solve_is_the_exact_solution_and_the_real_views_solve(method, options, tol):
    times = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    solution = odeint(schroedinger, PSI0, times, method=method, **options)
    assert solution.ys.dtype == DTYPE and solution.ys.shape == (5, *PSI0.shape)
    torch.testing.assert_close(solution.ys, exact(times, PSI0), rtol=0, atol=tol)

    # The semantics, exactly: the solve of the real view written by hand, step for step.
    def real_view_field(t, y):
        return torch.view_as_real(schroedinger(t, torch.view_as_complex(y)))

    by_hand = odeint(real_view_field, torch.view_as_real(PSI0), times, method=method, **options)
    assert torch.equal(torch.view_as_real(solution.ys), by_hand.ys)
    assert solution.stats.nfe == by_hand.stats.nfe


def test_the_layout_reads_a_real_view_of_any_strides():
    # A real view whose last dimension is not contiguous takes the layout's own fallback, which no
    # test reached: swapped real and imaginary parts there passed.
    solution = odeint(lambda t, z: 1j * z, torch.tensor([1 + 2j], dtype=torch.complex128), [0.0, 1.0])
    real = torch.view_as_real(solution.ys)
    strided = torch.stack([real[..., 0], real[..., 1]]).movedim(0, -1)
    assert strided.stride(-1) != 1
    assert torch.equal(solution.layout(strided), solution.layout(real))
    assert torch.equal(solution.layout(real), solution.ys)


def test_complex64_solves_in_float32_and_a_norm_is_kept():
    psi0 = PSI0.to(torch.complex64)
    solution = odeint(lambda t, y: -1j * y @ H.to(torch.complex64).T, psi0, [0.0, 1.0])
    assert solution.ys.dtype == torch.complex64
    torch.testing.assert_close(solution.ys[-1], exact([1.0], PSI0)[0].to(torch.complex64), rtol=0, atol=1e-5)
    # A unitary flow keeps |psi|.
    torch.testing.assert_close(
        solution.ys[-1].abs().pow(2).sum(-1), psi0.abs().pow(2).sum(-1), rtol=1e-5, atol=0
    )


class LearnedHamiltonian(torch.nn.Module):
    """``dpsi/dt = -i s H psi`` with a complex ``H`` and a real ``s``, both parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.Parameter(H.clone())
        self.s = torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))

    def forward(self, t, psi):
        return -1j * self.s * psi @ self.h.T


def observable(ys: torch.Tensor) -> torch.Tensor:
    # A real loss: the expected value of a diagonal observable at every output.
    return (ys.abs().pow(2) * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).sum()


@pytest.mark.parametrize("gradient", GRADIENT_METHODS)
def test_every_gradient_method_differentiates_a_complex_state_and_parameters(gradient):
    times = [0.0, 0.4, 1.0]
    grads = {}
    for name in ("direct", gradient):
        field = LearnedHamiltonian()
        psi0 = PSI0.clone().requires_grad_()
        observable(odeint(field, psi0, times, gradient=name, rtol=1e-10, atol=1e-12).ys).backward()
        grads[name] = (psi0.grad, field.h.grad, field.s.grad)
    for ours, direct in zip(grads[gradient], grads["direct"], strict=True):
        assert ours.dtype == direct.dtype
        torch.testing.assert_close(ours, direct, rtol=1e-7, atol=1e-9)
    # The exact gradient w.r.t. psi0 (torch's convention for a real loss: d/dRe + i d/dIm).
    psi0 = PSI0.clone().requires_grad_()
    observable(exact(times, psi0, 0.8 * H)).backward()
    torch.testing.assert_close(grads["direct"][0], psi0.grad, rtol=0, atol=1e-8)


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "symplectic"])
def test_gradcheck_through_a_complex_solve(gradient):
    def solve(field, psi0):
        # Fixed steps: the function gradcheck differentiates is the discrete solve itself.
        return odeint(field, psi0, [0.0, 0.3, 0.6], method="rk4", step_size=0.1, gradient=gradient).ys

    field = LearnedHamiltonian()
    psi0 = PSI0[:1].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: solve(field, z), (psi0,))
    # The complex parameter's gradient, through the same solve, against central differences.
    observable(solve(field, PSI0)).backward()
    entry, eps = (0, 2), 1e-6
    for unit in (1.0, 1j):
        values = []
        for sign in (1.0, -1.0):
            shifted = LearnedHamiltonian()
            with torch.no_grad():
                shifted.h[entry] += sign * eps * unit
                values.append(float(observable(solve(shifted, PSI0))))
        got = field.h.grad[entry].real if unit == 1.0 else field.h.grad[entry].imag
        assert float(got) == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


def test_dense_output_events_tolerances_and_callbacks_see_the_complex_state():
    psi0 = PSI0[0]
    solution = odeint(schroedinger, psi0, [0.0, 2.0], dense=True, rtol=1e-9, atol=1e-11)
    times = torch.tensor([0.3, 1.7], dtype=torch.float64)
    torch.testing.assert_close(solution.evaluate(times), exact(times, psi0), rtol=0, atol=1e-7)
    torch.testing.assert_close(
        solution.derivative(times), schroedinger(times, exact(times, psi0)), rtol=0, atol=1e-6
    )
    # An event on the complex state: Re psi_0 falls to 0.5 first at t = 1.0x (found by bisection of
    # the exact solution).
    event_t, event_solution = odeint_event(
        schroedinger, psi0, 0.0, event_fn=lambda t, psi: psi[0].real - 0.5, rtol=1e-10, atol=1e-12
    )
    grid = torch.linspace(0.0, float(event_t), 2001, dtype=torch.float64)
    assert bool((exact(grid[:-1], psi0)[:, 0].real > 0.5).all())
    assert abs(float(exact([event_t], psi0)[0, 0].real) - 0.5) < 1e-8
    assert event_solution.ys.dtype == DTYPE
    # A per-element tolerance of y0's shape holds for both parts of each element.
    tight_first = torch.tensor([1e-12, 1.0, 1.0], dtype=torch.float64)
    loose = odeint(schroedinger, psi0, [0.0, 2.0], rtol=1e-3, atol=1e-3)
    tight = odeint(schroedinger, psi0, [0.0, 2.0], rtol=1e-3, atol=tight_first)
    assert tight.stats.nfe > loose.stats.nfe
    with pytest.raises(ValueError, match=r"atol of shape \(4,\) does not broadcast to y0's shape \(3,\)"):
        odeint(schroedinger, psi0, [0.0, 1.0], atol=torch.full((4,), 1e-8, dtype=torch.float64))
    # The step callbacks and the step record hold the real state the solver steps.
    seen = []
    odeint(
        schroedinger, psi0, [0.0, 1.0], callbacks=StepCallbacks(accept=lambda t, y, dt: seen.append(y.shape))
    )
    assert seen and set(seen) == {(3, 2)}


def test_a_fields_wrong_output_and_unsupported_complex_states_are_named():
    psi0 = PSI0[0]
    with pytest.raises(
        TypeError, match=r"func returned dtype torch.float64, expected the dtype of y0 torch.complex128"
    ):
        odeint(lambda t, psi: psi.real, psi0, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"func returned shape \(2,\), expected \(3,\)"):
        odeint(lambda t, psi: psi[:2], psi0, [0.0, 1.0])
    # Entries are named by y0's own indices, not the real view's (one index more).
    with pytest.raises(
        ValueError, match=r"y0 must be finite, got 1 non-finite entries \(the first at index \(1,\): "
    ):
        odeint(schroedinger, torch.tensor([1.0, complex(0.5, math.nan), 0.0], dtype=DTYPE), [0.0, 1.0])
    with pytest.raises(
        ValueError, match=r"atol must be positive and finite in every element, got 0.0 at \(1,\)"
    ):
        odeint(schroedinger, psi0, [0.0, 1.0], atol=torch.tensor([1e-8, 0.0, 1e-8], dtype=torch.float64))
    with pytest.raises(TypeError, match="a tuple y0 of complex tensors is not supported"):
        odeint(lambda t, state: state, (psi0, psi0), [0.0, 1.0])
    # A lazily conjugated output is resolved, not refused: d/dt psi = conj(i psi) = -i conj(psi).
    solution = odeint(lambda t, psi: (1j * psi).conj(), psi0, [0.0, 1e-3], method="rk4", step_size=1e-3)
    torch.testing.assert_close(solution.ys[-1], psi0 - 1e-3j * psi0.conj(), rtol=0, atol=1e-5)


def test_compat_solves_a_complex_state_as_torchdiffeq_does_and_differentiates_it():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    import local_reg.compat as compat

    times = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    reference = exact(times, PSI0)
    ours = compat.odeint(schroedinger, PSI0, times)
    theirs = torchdiffeq.odeint(schroedinger, PSI0, times)
    assert ours.dtype == theirs.dtype == DTYPE
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-7)
    torch.testing.assert_close(theirs, reference, rtol=0, atol=1e-6)
    scipy = compat.odeint(schroedinger, PSI0, times, method="scipy_solver", options={"solver": "RK45"})
    torch.testing.assert_close(scipy, reference, rtol=0, atol=1e-6)
    # torchdiffeq's odeint_adjoint fails on a complex state; compat's agrees with the direct gradient.
    grads = []
    for solve in (compat.odeint, compat.odeint_adjoint):
        field = LearnedHamiltonian()
        observable(solve(field, PSI0, times, rtol=1e-10, atol=1e-12)).backward()
        grads.append((field.h.grad, field.s.grad))
    for ours_grad, direct in zip(*grads, strict=True):
        torch.testing.assert_close(ours_grad, direct, rtol=1e-7, atol=1e-9)

    # A torchdiffeq norm of a complex state may return a complex number of the right modulus.
    complex_norm = {"norm": lambda x: x.pow(2).mean().sqrt()}
    torch.testing.assert_close(
        compat.odeint(schroedinger, PSI0, times, options=complex_norm),
        torchdiffeq.odeint(schroedinger, PSI0, times, options=complex_norm),
        rtol=0,
        atol=1e-6,
    )

    # A torchdiffeq norm and step callbacks see the complex state, as torchdiffeq's do; func gets
    # real times in the parts' dtype (torchdiffeq: y.abs().dtype).
    class Recorded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.dtype] = []

        def forward(self, t, psi):
            self.seen.append(t.dtype)
            return schroedinger(t, psi)

        def callback_accept_step(self, t0, psi, dt):
            self.seen.append(psi.dtype)

    normed = []
    field = Recorded()
    compat.odeint(
        field,
        PSI0.to(torch.complex64),
        times,
        options={"norm": lambda x: normed.append(x.dtype) or x.abs().max()},
    )
    assert set(field.seen) == {torch.float32, torch.complex64}
    # (The first-step heuristic takes its norms in float64, as for a real state.)
    assert torch.complex64 in normed and all(dtype.is_complex for dtype in normed)
