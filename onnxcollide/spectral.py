"""Numerical rank, nullity and singular-value facts of weight matrices (pure numpy/scipy).

Rule (NumPy/LAPACK): singular values above ``tol = sigma_max * max(q, p) * eps`` count, ``eps``
of the dtype the weight is computed in; ``rtol`` / ``atol`` override. Small blocks use a float64
SVD. Large blocks use a float64 Gram matrix (BLAS syrk, accumulated in row chunks so memory stays
bounded and memory-mapped weights are streamed) and a Cholesky factorisation of
``G - tol^2 I``: it succeeds exactly when every singular value exceeds ``tol``. Where it fails,
the Gram eigenvalues give the rank. Where a Gram decision is too close to call at Gram
precision, the block is decided again by an exact SVD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

EPS_OF: dict[str, float] = {
    "float": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
    "double": float(np.finfo(np.float64).eps),
}
EPS64 = float(np.finfo(np.float64).eps)
SVD_MAX_DIM = 256  # blocks with min(q, p) up to this use a float64 SVD
GRAM_TRUST = 1.01  # a Gram decision with a margin below this is re-decided by SVD
CHUNK_BYTES = 64 << 20  # float64 bytes per chunk streamed into the Gram matrix
HELD_GRAM_BYTES = 512 << 20  # Gram matrices kept between the two passes; beyond, recomputed


@dataclass(frozen=True)
class ToleranceRule:
    """How ``tol`` is set: the default NumPy rule, or user overrides.

    Attributes:
        rtol: if set, ``tol = rtol * sigma_max`` replaces ``max(q, p) * eps * sigma_max``.
        atol: if set, ``tol = max(atol, relative tol)``.
    """

    rtol: float | None = None
    atol: float | None = None

    def describe(self) -> str:
        """The rule in words, e.g. ``sigma_max * max(q, p) * eps``."""
        relative = f"{self.rtol!r} * sigma_max" if self.rtol is not None else \
            "sigma_max * max(q, p) * eps"
        return relative if self.atol is None else f"max({self.atol!r}, {relative})"

    def tolerance(self, sigma_max: float, q: int, p: int, eps: float) -> float:
        """Return ``tol`` for a matrix with this largest singular value and shape."""
        rel = self.rtol if self.rtol is not None else max(q, p) * eps
        tol = sigma_max * rel
        return max(tol, self.atol) if self.atol is not None else tol


@dataclass(frozen=True)
class RankDecision:
    """The rank of one (block-diagonal) matrix and the facts it was decided on.

    Attributes:
        rank: number of singular values above ``tol`` (summed over blocks).
        sigma_max: largest singular value over all blocks.
        tol: the threshold used.
        eps: machine epsilon of the compute dtype.
        smallest_kept: smallest singular value above ``tol`` (None if rank is 0).
        largest_dropped: largest singular value at or below ``tol`` (None if none dropped).
        method: ``svd``, ``gram-cholesky``, ``gram-eigh``, or a ``+``-joined mix over blocks.
    """

    rank: int
    sigma_max: float
    tol: float
    eps: float
    smallest_kept: float | None
    largest_dropped: float | None
    method: str

    @property
    def margin(self) -> float | None:
        """How clear the decision is: min(smallest_kept / tol, tol / largest_dropped) >= 1.

        None for a zero matrix (tol is 0). A dropped value of exactly 0 puts no bound on it.
        """
        if self.tol <= 0:
            return None
        ratios = []
        if self.smallest_kept is not None:
            ratios.append(self.smallest_kept / self.tol)
        if self.largest_dropped is not None and self.largest_dropped > 0:
            ratios.append(self.tol / self.largest_dropped)
        return min(ratios) if ratios else None


@dataclass
class _BlockFacts:
    """What is known of one block while deciding: its singular values or its Gram matrix."""

    sigmas: np.ndarray | None  # all singular values (SVD path), float64
    gram: np.ndarray | None  # upper triangle valid, float64, Fortran order (Gram path)
    sigma_max: float
    matrix: np.ndarray  # the block itself (possibly a memmap view), for an SVD re-check


def _check_finite(chunk: np.ndarray) -> None:
    if not np.all(np.isfinite(chunk)):
        raise FloatingPointError("weight contains NaN or Inf")


def gram_matrix(matrix: np.ndarray) -> np.ndarray:
    """Float64 Gram matrix of the smaller side, streamed in chunks.

    Args:
        matrix: (q, p) array of any float dtype, possibly a read-only memmap.

    Returns:
        (m, m) float64 Fortran array, m = min(q, p): ``W^T W`` if q >= p else ``W W^T``.
        Only the upper triangle is filled.
    """
    tall = matrix.shape[0] >= matrix.shape[1]
    work = matrix if tall else matrix.T  # (n, m) with n >= m; G = work^T work
    n, m = work.shape
    gram = np.zeros((m, m), dtype=np.float64, order="F")
    rows = max(1, CHUNK_BYTES // (8 * max(m, 1)))
    for start in range(0, n, rows):
        chunk = np.asarray(work[start:start + rows], dtype=np.float64)
        _check_finite(chunk)
        # chunk is C-ordered (r, m) == Fortran (m, r): syrk(a) with trans=0 gives a a^T.
        gram = blas.dsyrk(1.0, chunk.T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
    return gram


def _symmetric(gram_upper: np.ndarray) -> np.ndarray:
    """Fill the lower triangle from the upper one; returns a Fortran-ordered array."""
    full = np.asfortranarray(np.triu(gram_upper))
    full += np.triu(gram_upper, 1).T
    return full


def _largest_eigenvalue(sym: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric Fortran-ordered matrix by Lanczos.

    Matrix-vector products go through scipy's BLAS (dsymv): mixing numpy's and scipy's
    OpenBLAS thread pools in one loop makes them spin against each other on few cores.
    """
    m = sym.shape[0]
    if not np.any(sym):
        return 0.0  # a zero weight (zero-initialised layers): ARPACK cannot start on it
    if m <= SVD_MAX_DIM:
        return float(scipy.linalg.eigvalsh(sym, subset_by_index=[m - 1, m - 1])[0])
    start = np.ones(m) / math.sqrt(m)
    operator = LinearOperator((m, m), matvec=lambda x: blas.dsymv(1.0, sym, x.ravel(), lower=0),
                              dtype=np.float64)
    try:
        value = eigsh(operator, k=1, which="LA", v0=start, tol=1e-10,
                      return_eigenvectors=False)
        return float(value[0])
    except (ArpackNoConvergence, ArpackError):
        return float(scipy.linalg.eigvalsh(sym, subset_by_index=[m - 1, m - 1])[0])


def _singular_values(blocks: np.ndarray) -> np.ndarray:
    """Float64 singular values of each block: (g, q, p) -> (g, min(q, p))."""
    as64 = np.asarray(blocks, dtype=np.float64)
    _check_finite(as64)
    return np.linalg.svd(as64, compute_uv=False)


def _block_facts(block: np.ndarray, use_gram: bool) -> _BlockFacts:
    if not use_gram:
        sigmas = _singular_values(block[None])[0]
        return _BlockFacts(sigmas, None, float(sigmas[0]) if sigmas.size else 0.0, block)
    gram = gram_matrix(block)
    sym = _symmetric(gram)
    lam = _largest_eigenvalue(sym)
    return _BlockFacts(None, sym, math.sqrt(max(lam, 0.0)), block)


@dataclass(frozen=True)
class _BlockRank:
    rank: int
    kept: float | None
    dropped: float | None
    method: str


def _rank_from_sigmas(sigmas: np.ndarray, tol: float, method: str) -> _BlockRank:
    above = sigmas > tol
    rank = int(np.count_nonzero(above))
    kept = float(sigmas[above].min()) if rank else None
    dropped = float(sigmas[~above].max()) if rank < sigmas.size else None
    return _BlockRank(rank, kept, dropped, method)


def _smallest_eigenvalue_from_cholesky(factor: np.ndarray) -> float:
    """Smallest eigenvalue of R^T R by Lanczos on its inverse (two triangular solves a step)."""
    m = factor.shape[0]

    def solve(x: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve((factor, False), x, check_finite=False)

    operator = LinearOperator((m, m), matvec=solve, dtype=np.float64)
    start = np.ones(m) / math.sqrt(m)
    try:
        top = eigsh(operator, k=1, which="LA", v0=start, tol=1e-8, return_eigenvectors=False)
        return 1.0 / float(top[0])
    except (ArpackNoConvergence, ArpackError):
        return float(scipy.linalg.eigvalsh(factor.T @ factor, subset_by_index=[0, 0])[0])


def _rank_from_gram(facts: _BlockFacts, tol: float) -> _BlockRank:
    assert facts.gram is not None
    m = facts.gram.shape[0]
    shifted = np.array(facts.gram, order="F")
    shifted.flat[:: m + 1] -= tol * tol
    factor, info = scipy.linalg.lapack.dpotrf(shifted, lower=0, clean=1, overwrite_a=1)
    if info != 0:
        lam = scipy.linalg.eigvalsh(facts.gram, check_finite=False)
        sigmas = np.sqrt(np.clip(lam, 0.0, None))[::-1]
        return _rank_from_sigmas(sigmas, tol, "gram-eigh")
    lam_min = tol * tol + _smallest_eigenvalue_from_cholesky(factor)
    return _BlockRank(m, math.sqrt(max(lam_min, 0.0)), None, "gram-cholesky")


def _close_call(result: _BlockRank, tol: float) -> bool:
    near_kept = result.kept is not None and result.kept < tol * GRAM_TRUST
    near_dropped = result.dropped is not None and result.dropped * GRAM_TRUST > tol
    return near_kept or near_dropped


def _gram_is_precise(n: int, relative_tol: float) -> bool:
    """Gram eigenvalues resolve singular values down to ~sqrt(n * eps64) * sigma_max."""
    return relative_tol > 0 and math.sqrt(n * EPS64) < 0.01 * relative_tol


def decide_rank(blocks: np.ndarray, eps: float, rule: ToleranceRule | None = None) -> RankDecision:
    """Numerical rank of the block-diagonal matrix diag(blocks[0], ..., blocks[g-1]).

    Args:
        blocks: (g, qb, pb) array (any float dtype; may be a memmap view).
        eps: machine epsilon of the dtype the weight is computed in.
        rule: tolerance rule; the NumPy default when None.

    Returns:
        The rank over all blocks with the tolerance, sigma_max, the smallest kept and largest
        dropped singular values, and the method used.

    Raises:
        FloatingPointError: the weight contains NaN or Inf.
    """
    rule = rule or ToleranceRule()
    g, qb, pb = blocks.shape
    q, p = g * qb, g * pb
    if qb == 0 or pb == 0:
        return RankDecision(0, 0.0, 0.0, eps, None, None, "empty")
    default_rel = rule.rtol if rule.rtol is not None else max(q, p) * eps
    big = min(qb, pb) > SVD_MAX_DIM and _gram_is_precise(max(qb, pb), default_rel)
    if not big:
        sigmas = _singular_values(blocks)
        sigma_max = float(sigmas.max())
        tol = rule.tolerance(sigma_max, q, p, eps)
        decided = _rank_from_sigmas(sigmas.ravel(), tol, "svd")
        return RankDecision(decided.rank, sigma_max, tol, eps, decided.kept, decided.dropped,
                            "svd")
    # Pass 1: sigma_max of every block (it sets tol). Pass 2: decide each block against tol.
    keep = g * min(qb, pb) ** 2 * 8 <= HELD_GRAM_BYTES
    facts = []
    for k in range(g):
        fact = _block_facts(blocks[k], True)
        if not keep:
            fact.gram = None
        facts.append(fact)
    sigma_max = max(f.sigma_max for f in facts)
    tol = rule.tolerance(sigma_max, q, p, eps)
    results = []
    for fact in facts:
        if fact.gram is None:
            fact.gram = _symmetric(gram_matrix(fact.matrix))
        results.append(_decide_block(fact, tol, max(qb, pb), sigma_max))
        fact.gram = None
    return _combine(results, sigma_max, tol, eps)


def _decide_block(facts: _BlockFacts, tol: float, n: int, sigma_max: float) -> _BlockRank:
    precise = sigma_max > 0 and _gram_is_precise(n, tol / sigma_max)
    if precise:
        result = _rank_from_gram(facts, tol)
        if not _close_call(result, tol):
            return result
    sigmas = _singular_values(facts.matrix[None])[0]
    return _rank_from_sigmas(sigmas, tol, "svd")


def _combine(results: list[_BlockRank], sigma_max: float, tol: float, eps: float) -> RankDecision:
    kept = [r.kept for r in results if r.kept is not None]
    dropped = [r.dropped for r in results if r.dropped is not None]
    methods = sorted({r.method for r in results})
    return RankDecision(
        rank=sum(r.rank for r in results), sigma_max=sigma_max, tol=tol, eps=eps,
        smallest_kept=min(kept) if kept else None,
        largest_dropped=max(dropped) if dropped else None,
        method="+".join(methods),
    )
