"""The smallest singular values of a sparse operator ``A = W1 o path`` on the real input.

Where the path from the input to W1 couples input elements (reflect padding, interpolation,
pooling, duplicated elements), neither the unit-by-unit construction nor the conv solver of
``linalg.conv_operator`` applies: ``A`` is formed as a sparse matrix (W1's sparse matrix times
the path's) and analysed here.

- Up to DENSE_MAX_COLUMNS inputs: every eigenvalue of the Gram matrix ``A^T A`` (n x n,
  formed sparse, then a dense ``eigh``). Its eigenvalues are only good to about
  ``n eps sigma_max^2``, so each direction whose eigenvalue is anywhere near ``tol^2`` is
  decided by ``||A v||`` computed from ``A`` itself (good to about ``eps sigma_max``): the
  null space's dimension is the number of those at or below ``tol``. This replaces a dense SVD
  of the (m x n) ``A``, which took a minute and 0.7 GB for a 3 x 32 x 32 input.
- Larger operators: the smallest eigenpairs of ``A^T A`` by shift-invert Lanczos (a sparse LU
  of ``A^T A + tau I``, ``tau`` far below float32 rounding of sigma_max^2).

Either way the returned values are ``||A v||`` of their returned vectors (a Rayleigh-Ritz SVD of
``A V``), not square roots of Gram eigenvalues.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from onnxcollide.linalg.conv_operator import OperatorSpectrum
from onnxcollide.linalg.spectral import EPS64, ToleranceRule

DENSE_MAX_COLUMNS = 6144  # every eigenpair of A^T A for at most this many inputs
CANDIDATE = 4.0  # directions with an eigenvalue up to (CANDIDATE tol)^2 are decided by ||A v||
CHUNK = 256  # columns of A V formed at a time
SHIFT = 1e-12  # shift-invert at -SHIFT * sigma_max^2 (keeps A^T A + tau I definite)


def _sign_fixed(v: np.ndarray) -> np.ndarray:
    """Rows flipped so that the entry of largest magnitude is positive: ``(k, n)``."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.where(v[np.arange(v.shape[0]), idx] < 0, -1.0, 1.0)
    return v * signs[:, None]


def gram_eigen(a: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending, ``(n,)``) and orthonormal eigenvectors (``(n, n)``, columns)
    of ``A^T A`` for an ``(m, n)`` sparse ``A``."""
    gram = (a.T @ a).toarray()
    return scipy.linalg.eigh(gram, overwrite_a=True, check_finite=False)


def column_norms(a: scipy.sparse.csr_matrix, vectors: np.ndarray) -> np.ndarray:
    """``||A v||`` for each column ``v`` of ``vectors`` ``(n, c)``, in chunks of CHUNK columns
    so that ``A V`` never holds more than ``m x CHUNK`` entries: ``(c,)``."""
    return np.concatenate([np.linalg.norm(a @ vectors[:, i:i + CHUNK], axis=0)
                           for i in range(0, vectors.shape[1], CHUNK)] or [np.zeros(0)])


def count_at_most(a: scipy.sparse.csr_matrix, values: np.ndarray, vectors: np.ndarray,
                  tol: float) -> int:
    """How many directions ``A`` maps to norm ``<= tol``, from ``A^T A``'s eigenpairs
    ``values (n,)``, ``vectors (n, n)``.

    An eigenvalue is good to about ``n eps lambda_max``: those clearly above ``tol^2`` count
    out, and every other direction is decided by ``||A v||`` computed from ``A``.
    """
    slack = a.shape[1] * EPS64 * max(float(values[-1]), 0.0) if values.size else 0.0
    near = np.flatnonzero(values <= (CANDIDATE * tol) ** 2 + slack)
    return int(np.count_nonzero(column_norms(a, vectors[:, near]) <= tol))


def top_singular(values: np.ndarray) -> float:
    """sigma_max from ``A^T A``'s eigenvalues ``(n,)`` in ascending order (0 for none)."""
    return float(np.sqrt(max(float(values[-1]), 0.0))) if values.size else 0.0


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
    return top_singular(np.array([top])), *_rayleigh_ritz(a, vectors)


def _rayleigh_ritz(a: scipy.sparse.csr_matrix, basis: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``||A v||`` (ascending) and vectors ``(k, n)`` from an SVD of ``A Q``.

    ``A Q`` is ``(m, k)``: where ``A`` has fewer rows than ``k``, the SVD's full ``V`` keeps
    the ``k - m`` directions ``A Q`` maps to zero (a thin SVD dropped them, and with them the
    null space of a Gemm with fewer outputs than the directions sought)."""
    q, _ = np.linalg.qr(basis)
    _, _, vt = np.linalg.svd(a @ q, full_matrices=True)
    vectors = (q @ vt.T).T
    s = column_norms(a, vectors.T)
    order = np.argsort(s, kind="stable")
    return s[order], vectors[order]


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
    n = a.shape[1]
    k = max(1, min(int(k), n))
    gram: tuple[np.ndarray, np.ndarray] | None = None
    if n <= DENSE_MAX_COLUMNS:  # every eigenpair: the null space's dimension is known
        gram = gram_eigen(a)
        smax = top_singular(gram[0])
        sigmas, vectors = _rayleigh_ritz(a, gram[1][:, :k])
        method, error = "eigh of (W1 o path)^T (W1 o path), ||A v|| near tol", n * EPS64
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
        null_dim=None if gram is None else count_at_most(a, *gram, tol),
        wide=max(0, n - a.shape[0]))
