"""krylov: block Lanczos against numpy's dense eigensolver."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcollide.linalg.krylov import top_eigenpairs


def symmetric_with_spectrum(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Q diag(values) Q^T for a random orthogonal Q, shape (n, n)."""
    q, _ = np.linalg.qr(rng.standard_normal((values.size, values.size)))
    return (q * values) @ q.T


@pytest.mark.parametrize("count", [1, 3, 8])
def test_top_values_and_vectors_match_dense(rng, count):
    """The largest eigenpairs agree with numpy.linalg.eigh to the requested residual."""
    values = np.concatenate([[10.0, 9.0, 8.5], np.linspace(0.1, 8.0, 197)])
    a = symmetric_with_spectrum(rng, values)
    found = top_eigenpairs(lambda x: a @ x, 200, count, 1e-10)
    expected = np.sort(values)[::-1][:count]
    assert found.converged
    np.testing.assert_allclose(found.values, expected, rtol=1e-9)
    residual = a @ found.vectors - found.vectors * found.values
    np.testing.assert_allclose(np.linalg.norm(residual, axis=0), found.residuals, atol=1e-9)
    assert np.all(found.residuals <= 1e-10 * np.abs(found.values))
    np.testing.assert_allclose(found.vectors.T @ found.vectors, np.eye(count), atol=1e-10)


def test_values_only_stops_earlier_with_accurate_values(rng):
    """values_only trades vector accuracy for fewer passes; the value still meets rtol."""
    values = np.concatenate([[5.0], 4.99 - np.geomspace(1e-3, 4.0, 399)])
    a = symmetric_with_spectrum(rng, values)
    calls = {"strict": 0, "values": 0}

    def counted(key):
        def apply(x):
            calls[key] += 1
            return a @ x
        return apply

    strict = top_eigenpairs(counted("strict"), 400, 1, 1e-8)
    loose = top_eigenpairs(counted("values"), 400, 1, 1e-8, values_only=True)
    assert strict.converged and loose.converged
    assert calls["values"] < calls["strict"]
    assert loose.values[0] == pytest.approx(5.0, rel=1e-8)


def test_invariant_subspace_smaller_than_block(rng):
    """A rank-3 operator with block 8: the basis keeps growing past the exhausted Krylov space."""
    v = np.linalg.qr(rng.standard_normal((50, 3)))[0]
    a = (v * np.array([3.0, 2.0, 1.0])) @ v.T
    found = top_eigenpairs(lambda x: a @ x, 50, 4, 1e-10)
    assert found.converged
    np.testing.assert_allclose(found.values, [3.0, 2.0, 1.0, 0.0], atol=1e-10)


def test_block_as_large_as_the_space(rng):
    """n <= block: one application of the operator decides everything exactly."""
    a = symmetric_with_spectrum(rng, np.array([4.0, 1.0, 2.0, 3.0, 0.5]))
    found = top_eigenpairs(lambda x: a @ x, 5, 2, 1e-12)
    assert found.converged
    np.testing.assert_allclose(found.values, [4.0, 3.0], rtol=1e-12)


def test_same_operator_same_bytes(rng):
    """A fixed start block: two runs give identical results."""
    a = symmetric_with_spectrum(rng, np.linspace(1.0, 2.0, 120))
    first = top_eigenpairs(lambda x: a @ x, 120, 2, 1e-9)
    second = top_eigenpairs(lambda x: a @ x, 120, 2, 1e-9)
    assert first.values.tobytes() == second.values.tobytes()
    assert first.vectors.tobytes() == second.vectors.tobytes()


def test_basis_limit_reports_not_converged(rng):
    """A tight basis limit on a hard spectrum returns what it has, marked not converged."""
    values = 1.0 + 1e-9 * np.arange(300)
    a = symmetric_with_spectrum(rng, values)
    found = top_eigenpairs(lambda x: a @ x, 300, 1, 1e-14, block=2, max_columns=8)
    assert not found.converged
    assert found.values[0] <= values.max() + 1e-12


def test_near_identity_operator_returns_every_pair_asked_for():
    """Q Q^T (the identity up to rounding): the projected matrices are nearly scalar, where
    LAPACK's dsyevr can return fewer eigenpairs than asked; every run still returns 7."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
        a = q @ q.T
        found = top_eigenpairs(lambda x, a=a: a @ x, 300, 7, 1e-5, block=64, max_columns=50)
        assert found.values.shape == (7,) and found.vectors.shape == (300, 7)
        np.testing.assert_allclose(found.values, 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["graded", "clustered", "few levels"])
def test_basis_stays_orthonormal_when_blocks_are_spanned(rng, kind, monkeypatch):
    """Spectra whose Krylov blocks fall (nearly) inside the basis: the basis stays orthonormal
    to rounding and the top eigenvalues are found."""
    from onnxcollide.linalg import krylov

    n = 300
    if kind == "graded":
        values = np.exp(rng.uniform(-12, 0, n))
    elif kind == "clustered":
        values = np.concatenate([1 + 1e-9 * rng.standard_normal(150), 1e-3 * rng.uniform(size=150)])
    else:
        values = rng.choice([1.0, 0.3, 0.2, 0.1, 1e-3, 1e-5, 1e-7, 1e-9, 1e-11], n)
    a = symmetric_with_spectrum(rng, values)
    worst = [0.0]
    extend = krylov._extend

    def checked(basis, filled, block):
        known = basis[:, :filled]
        worst[0] = max(worst[0], float(np.abs(known.T @ known - np.eye(filled)).max()))
        return extend(basis, filled, block)

    monkeypatch.setattr(krylov, "_extend", checked)
    found = top_eigenpairs(lambda x: a @ x, n, 16, 0.0, block=16)
    assert worst[0] < 1e-13
    np.testing.assert_allclose(found.values, np.sort(values)[::-1][:16], rtol=1e-9, atol=1e-14)
