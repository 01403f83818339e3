"""linalg.matrix_operator: W1 o path's smallest singular values, against a dense SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from onnxcollide.linalg import matrix_operator as matop
from onnxcollide.linalg.matrix_operator import count_at_most, gram_eigen, sparse_smallest_singular
from onnxcollide.linalg.spectral import ToleranceRule

EPS32 = 2.0**-23


def planted(rng: np.random.Generator, m: int, n: int, sigmas: np.ndarray) -> np.ndarray:
    """An (m, n) matrix with the given singular values (zeros for the rest) in random bases."""
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.zeros((m, n))
    s[np.arange(sigmas.size), np.arange(sigmas.size)] = sigmas
    return u @ s @ v.T


def sparse_with_kernel(rng: np.random.Generator, m: int, n: int, dropped: int
                       ) -> scipy.sparse.csr_matrix:
    """A sparse (m, n) matrix times a projector-like sparse map that sums pairs of inputs with
    opposite signs for ``dropped`` pairs: each such pair spans one null direction."""
    w = scipy.sparse.random(m, n, density=0.05, random_state=rng, format="csr")
    tie = scipy.sparse.identity(n, format="lil")
    for i in range(dropped):  # column 2i+1 is copied from column 2i: e_2i - e_2i+1 is null
        tie[2 * i + 1, 2 * i + 1] = 0.0
        tie[2 * i, 2 * i + 1] = 1.0
    return (w @ tie.tocsr()).tocsr()


@pytest.mark.parametrize("dense", [True, False])
def test_null_space_and_smallest_values_match_a_dense_svd(rng: np.random.Generator,
                                                          dense: bool,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    if not dense:
        monkeypatch.setattr(matop, "DENSE_MAX_COLUMNS", 0)
    a = sparse_with_kernel(rng, 300, 200, dropped=7)
    spectrum = sparse_smallest_singular(a, (2, 10, 10), 9, ToleranceRule(), 200, 300, EPS32)
    reference = np.linalg.svd(a.toarray(), compute_uv=False)
    tol = 300 * EPS32 * reference[0]
    assert spectrum.sigma_max == pytest.approx(reference[0], rel=1e-10)
    assert spectrum.exact == 7
    assert spectrum.null_dim == (7 if dense else None)
    np.testing.assert_allclose(spectrum.sigmas[7:], reference[::-1][7:9], rtol=1e-8)
    assert np.all(spectrum.sigmas[:7] <= tol)
    flat = spectrum.vectors.reshape(9, 200)
    np.testing.assert_allclose(np.linalg.norm(a @ flat.T, axis=0), spectrum.sigmas,
                               atol=1e-12 * reference[0])


def test_directions_just_above_and_below_tol_are_told_apart(rng: np.random.Generator) -> None:
    # tol = 1e-6 sigma_max; singular values at 0.9 tol and 1.1 tol. Their squares (8.1e-13 and
    # 1.21e-12 of sigma_max^2) are within 1e-3 of each other relative to a Gram eigenvalue's
    # rounding (n eps ~ 1e-14), so only ||A v|| decides: one is in, one is out.
    sig = np.concatenate([[1.0, 0.5, 0.3], np.full(5, 0.1), [1.1e-6, 0.9e-6]])
    a = scipy.sparse.csr_matrix(planted(rng, 12, 14, sig))
    values, vectors = gram_eigen(a)
    assert count_at_most(a, values, vectors, 1e-6) == 1 + 4  # 0.9e-6 and the 4 zeros
    assert count_at_most(a, values, vectors, 1.2e-6) == 6
    assert count_at_most(a, values, vectors, 0.5e-6) == 4
    spectrum = sparse_smallest_singular(a, (14,), 6, ToleranceRule(rtol=1e-6), 14, 12, EPS32)
    assert spectrum.null_dim == 5
    np.testing.assert_allclose(spectrum.sigmas[4:], [0.9e-6, 1.1e-6], rtol=1e-6)


def test_column_norms_in_chunks_match_one_product(rng: np.random.Generator,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matop, "CHUNK", 3)
    a = scipy.sparse.random(40, 20, density=0.3, random_state=rng, format="csr")
    v = rng.standard_normal((20, 11))
    np.testing.assert_allclose(matop.column_norms(a, v), np.linalg.norm(a @ v, axis=0))
    assert matop.column_norms(a, v[:, :0]).shape == (0,)


@pytest.mark.parametrize("dense", [True, False])
def test_fewer_rows_than_directions_keep_the_null_directions(rng: np.random.Generator,
                                                             dense: bool,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """W1 o path with fewer rows than the directions asked for (a Gemm with 3 outputs after a
    Resize of 4 elements to 3): the SVD of A Q has only 3 values, and the null directions of
    Q were dropped, so collide said 'no exact collision' for a 3 x 4 operator."""
    if not dense:
        monkeypatch.setattr(matop, "DENSE_MAX_COLUMNS", 0)
    a = scipy.sparse.csr_matrix(planted(rng, 3, 8 if not dense else 4,
                                        np.array([2.0, 1.0, 0.1])))
    n = a.shape[1]
    spectrum = sparse_smallest_singular(a, (n,), 4, ToleranceRule(), n, 3, EPS32)
    assert spectrum.sigmas.size == 4 and spectrum.exact == 1 + (n == 8) * 3
    assert spectrum.null_dim == (1 if dense else None)
    flat = spectrum.vectors.reshape(4, n)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(a @ flat.T, axis=0), spectrum.sigmas,
                               atol=1e-12)
