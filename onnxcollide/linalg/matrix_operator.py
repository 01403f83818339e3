"""The smallest singular values of a sparse operator ``A = W1 o path`` on the real input.

Where the path from the input to W1 couples input elements (reflect padding, interpolation,
pooling, duplicated elements), neither the unit-by-unit construction nor the conv solver of
``linalg.conv_operator`` applies: ``A`` is formed as a sparse matrix (W1's sparse matrix times
the path's) and analysed here.

- Up to DENSE_MAX_COLUMNS inputs (and DENSE_MAX_ENTRIES entries) a dense SVD gives every
  singular value: the null space's dimension is exact.
- Larger operators: the smallest eigenpairs of ``A^T A`` by shift-invert Lanczos (a sparse LU
  of ``A^T A + tau I``, ``tau`` far below float32 rounding of sigma_max^2), then a
  Rayleigh-Ritz SVD of ``A V`` so that each value is ``||A v||`` of its returned vector.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from onnxcollide.linalg.conv_operator import OperatorSpectrum
from onnxcollide.linalg.spectral import EPS64, ToleranceRule

DENSE_MAX_COLUMNS = 6144  # a dense SVD for at most this many inputs ...
DENSE_MAX_ENTRIES = 48 << 20  # ... and at most this many entries of A
SHIFT = 1e-12  # shift-invert at -SHIFT * sigma_max^2 (keeps A^T A + tau I definite)


def _sign_fixed(v: np.ndarray) -> np.ndarray:
    """Rows flipped so that the entry of largest magnitude is positive: ``(k, n)``."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.where(v[np.arange(v.shape[0]), idx] < 0, -1.0, 1.0)
    return v * signs[:, None]


def _dense(a: scipy.sparse.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every singular value (descending, zeros appended to n) and the ``k`` smallest right
    singular vectors ``(k, n)`` with their values, ascending."""
    n = a.shape[1]
    _, s, vt = scipy.linalg.svd(a.toarray(), full_matrices=True, lapack_driver="gesvd")
    full = np.zeros(n)
    full[: s.size] = s
    order = np.arange(n)[::-1][:k]
    return full, vt[order], full[order]


def _iterative(a: scipy.sparse.csr_matrix, k: int, seed: int
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """sigma_max, and the ``k`` smallest singular values with right singular vectors."""
    gram = (a.T @ a).tocsc()
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(a.shape[1])
    top = float(scipy.sparse.linalg.eigsh(gram, k=1, which="LA", v0=start,
                                          return_eigenvectors=False)[0])
    tau = SHIFT * max(top, np.finfo(float).tiny)
    _, vectors = scipy.sparse.linalg.eigsh(gram, k=k, sigma=-tau, which="LM", v0=start)
    return float(np.sqrt(max(top, 0.0))), *_rayleigh_ritz(a, vectors)


def _rayleigh_ritz(a: scipy.sparse.csr_matrix, basis: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``||A v||`` (ascending) and vectors ``(k, n)`` from an SVD of ``A Q``."""
    q, _ = np.linalg.qr(basis)
    _, s, vt = np.linalg.svd(a @ q, full_matrices=False)
    order = np.argsort(s, kind="stable")
    return s[order], (q @ vt.T).T[order]


def sparse_smallest_singular(a: scipy.sparse.csr_matrix, input_shape: tuple[int, ...],
                             k: int, rule: ToleranceRule, q: int, p: int, eps: float,
                             seed: int = 0) -> OperatorSpectrum:
    """The ``k`` smallest singular values of ``a`` and their right singular vectors.

    Args:
        a: ``(m, n)`` the operator on one input sample (``n = prod(input_shape)``).
        input_shape: per-sample shape of the input the vectors are returned in.
        k: how many (clipped to n).
        rule: the tolerance rule (``rtol``: relative to sigma_max; ``atol`` a floor).
        q, p: the per-unit sizes of W1 the default tolerance is scaled by.
        eps: the unit roundoff of W1's compute type.
        seed: the start vector's seed (iterative path).

    Returns:
        An :class:`OperatorSpectrum` with ``vectors`` shaped ``(k, *input_shape)``.
    """
    m, n = a.shape
    k = max(1, min(int(k), n))
    full = None
    if n <= DENSE_MAX_COLUMNS and m * n <= DENSE_MAX_ENTRIES:
        full, vectors, sigmas = _dense(a, k)
        smax, method, error = float(full[0]), "dense SVD of W1 o path", max(m, n) * EPS64
    else:
        smax, sigmas, vectors = _iterative(a, min(k, n - 1), seed)
        method, error = "shift-invert Lanczos on (W1 o path)^T (W1 o path)", 1e-9
    smax_error = error * smax
    tol = rule.tolerance(smax, q, p, eps)
    tol_high = rule.tolerance(smax + smax_error, q, p, eps)
    vectors = _sign_fixed(vectors)
    residuals = np.linalg.norm(a.T @ (a @ vectors.T) - vectors.T * sigmas**2, axis=0)
    blind = int(np.count_nonzero(np.diff(a.tocsc().indptr) == 0))
    return OperatorSpectrum(
        sigmas=sigmas, vectors=vectors.reshape(len(sigmas), *input_shape), sigma_max=smax,
        tol=tol, exact=int(np.sum(sigmas <= tol)),
        relative=sigmas / smax if smax > 0 else np.zeros_like(sigmas), residuals=residuals,
        iterations=0, method=method, seed=seed, blind=blind, sigma_max_error=smax_error,
        tol_error=tol_high - tol,
        null_dim=None if full is None else int(np.count_nonzero(full <= tol)),
        wide=max(0, n - m))
