"""Numerical rank, nullity and singular-value facts of weight matrices (pure numpy/scipy).

Rule (NumPy/LAPACK): singular values above ``tol = sigma_max * max(q, p) * eps`` count, ``eps``
of the dtype the weight is computed in; ``rtol`` / ``atol`` override. Small blocks use a float64
SVD. Large blocks use a float64 Gram matrix (BLAS syrk, accumulated in row chunks so memory stays
bounded and memory-mapped weights are streamed) and a Cholesky factorisation of
``G - tol^2 I``: it succeeds exactly when every singular value exceeds ``tol``. Where it fails,
the Schur complement of the positive definite leading block it leaves counts the values below
``tol`` (``inertia``); failing that, a deflated certificate or the Gram eigenvalues do. Where
a Gram decision is too close to call at Gram precision, the block is decided again by an exact
SVD. An SVD of a long block (a float64 copy over CHUNK_BYTES, see ``streams``) takes the
singular values of the R factor of a tall-skinny QR streamed along its long side
(``streamed_r``), not of a float64 copy of the block.

Every reported value carries an error estimate, and reports print only the digits it resolves
(``resolved``): a float64 SVD resolves singular values to ``max(q, p) * eps64 * sigma_max``
(streamed: ``n + (chunks + 1) * min(q, p)`` in place of ``max(q, p)``, ``_streamed_length``); a
Gram matrix resolves its eigenvalues to ``n * eps64 * sigma_max^2`` (n the long side: the
rounding of its length-n inner products), so a singular value ``s`` to about that over ``2 s``;
Lanczos values add their own error estimate: sigma_max its Ritz residual, the others
``min(||r||, 10 ||r||^2 / gap)`` (``krylov.Eigenpairs.errors``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
from scipy.linalg import blas

from onnxcollide.linalg.inertia import SchurSplit, schur_split
from onnxcollide.linalg.krylov import project_out, top_eigenpairs
from onnxcollide.linalg.pages import give_back, read_columns

EPS_OF: dict[str, float] = {
    "float": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
    "double": float(np.finfo(np.float64).eps),
}
EPS64 = float(np.finfo(np.float64).eps)
SVD_MAX_DIM = 256  # blocks with min(q, p) up to this use a float64 SVD ...
SVD_MAX_WORK = 1 << 24  # ... where it is cheap: max(q, p) * min(q, p)^2 at most this
# Gram blocks up to this wide are decided from all their eigenvalues (dsyevd, once: sigma_max
# and the rank). Measured CPU time on a 512-wide block: 20 ms against 38 to 57 ms for Lanczos,
# certificate and Cholesky; the crossover is near 800. Kept at SVD_MAX_DIM for now: the tests
# of the Cholesky, LDL and deflated paths use 300 to 500 wide blocks.
EIGH_MAX_DIM = SVD_MAX_DIM
GRAM_TRUST = 10.0  # a Gram decision with tol within this many error bars of a kept or
# dropped value is re-decided by SVD (its error bar: the Gram matrix's rounding plus Lanczos's)
CHUNK_BYTES = 64 << 20  # float64 bytes per chunk streamed into the Gram matrix
SIGMA_MAX_RTOL = 1e-10  # Lanczos residual tolerance for sigma_max^2 (of the scaled Gram matrix)
SIGMA_MAX_RESTARTS = 200  # beyond (a tight cluster at the top), all eigenvalues by dsyevd
SIGMA_MAX_SEED = 20241121  # the Lanczos start vector for sigma_max: the same bytes every run
CERTIFICATE_ROUNDING = 8.0  # sigma_max^2's certificate shift above the Ritz value, in m*eps64
KEPT_RTOL = 1e-5  # block Lanczos tolerance for the smallest kept eigenvalue on the Gram path
HELD_GRAM_BYTES = 512 << 20  # Gram matrices kept between the two passes; beyond, recomputed
STREAM_ROWS_PER_WIDTH = 4  # a streamed QR's chunk holds at least this many lines per R row
TSQR_BLOCK = 32  # dtpqrt's block size (nb)


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
        method: ``svd``, ``gram-cholesky``, ``gram-ldl``, ``gram-deflated``, ``gram-eigh``, or a
            ``+``-joined mix over blocks.
        sigma_max_error, tol_error, kept_error, dropped_error: estimated absolute errors of
            sigma_max, tol, smallest_kept and largest_dropped (0 when exact).
    """

    rank: int
    sigma_max: float
    tol: float
    eps: float
    smallest_kept: float | None
    largest_dropped: float | None
    method: str
    sigma_max_error: float = 0.0
    tol_error: float = 0.0
    kept_error: float | None = None
    dropped_error: float | None = None

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

    def resolved(self) -> dict[str, tuple[float | None, int | None]]:
        """Each reported value with the significant digits its error estimate resolves.

        Returns:
            name -> (value, digits) for ``sigma_max``, ``tol``, ``smallest_kept``,
            ``largest_dropped`` and ``margin``: the value rounded to ``digits`` (1 to 17).
            A singular value within its error of 0 (a dropped value at the noise floor) is
            not resolved: it becomes an upper bound (value + error, rounded up to 2 digits)
            with digits 0, and the margin, when such a bound sets it, becomes the lower bound
            that gives (rounded down), digits 0. (None, None) where there is no value.
        """
        shown = {"sigma_max": resolved(self.sigma_max, self.sigma_max_error),
                 "tol": resolved(self.tol, self.tol_error),
                 "smallest_kept": _resolved_or_bound(self.smallest_kept, self.kept_error),
                 "largest_dropped": _resolved_or_bound(self.largest_dropped,
                                                       self.dropped_error)}
        shown["margin"] = self._resolved_margin(shown)
        return shown

    def _resolved_margin(self, shown: dict[str, tuple[float | None, int | None]]
                         ) -> tuple[float | None, int | None]:
        """min(kept / tol, tol / dropped) with its digits, or a lower bound (digits 0)."""
        if self.tol <= 0:
            return None, None
        tol_rel = self.tol_error / self.tol

        def ratio_resolved(ratio: float, value: float, error: float | None
                           ) -> tuple[float | None, int | None]:
            """A ratio of ``value`` and tol: their relative errors add."""
            return resolved(ratio, ratio * (tol_rel + (error or 0.0) / value))

        # (unrounded ratio or bound, as shown): the smaller is chosen before rounding, since
        # rounding can reorder two close ratios.
        ratios: list[tuple[float, tuple[float | None, int | None]]] = []
        kept, dropped = self.smallest_kept, self.largest_dropped
        if kept is not None:
            if shown["smallest_kept"][1] == 0:  # above tol by the decision, size unresolved
                ratios.append((1.0, (1.0, 0)))
            else:
                ratios.append((kept / self.tol,
                               ratio_resolved(kept / self.tol, kept, self.kept_error)))
        if dropped is not None:
            bound, digits = shown["largest_dropped"]
            if digits == 0:
                assert bound is not None
                ratios.append((self.tol / bound,
                               (_round_to_two(self.tol / bound, math.floor), 0)))
            elif dropped > 0:  # an exact 0 puts no bound on the margin
                ratios.append((self.tol / dropped, ratio_resolved(self.tol / dropped, dropped,
                                                                  self.dropped_error)))
        return min(ratios, key=lambda pair: pair[0])[1] if ratios else (None, None)


MAX_DIGITS = 17  # a float64 holds no more


def significant_digits(value: float, error: float) -> int:
    """How many significant digits of ``value`` an absolute ``error`` leaves (1 to 17)."""
    if not math.isfinite(error):
        return 1
    if error <= 0 or value == 0:
        return MAX_DIGITS
    return max(1, min(MAX_DIGITS, math.floor(math.log10(abs(value) / error))))


def resolved(value: float | None, error: float | None) -> tuple[float | None, int | None]:
    """``value`` rounded to ``significant_digits(value, error)``, and that count (None, None
    for no value)."""
    if value is None or not math.isfinite(value):
        return None, None
    digits = significant_digits(value, error or 0.0)
    return float(f"{value:.{digits}g}"), digits


def _round_to_two(value: float, direction: Callable[[float], float]) -> float:
    """``value`` > 0 rounded to 2 significant digits by ``math.ceil`` or ``math.floor``."""
    unit = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{direction(value / unit) * unit:.2g}")


def _resolved_or_bound(value: float | None, error: float | None
                       ) -> tuple[float | None, int | None]:
    """A singular value resolved to its digits, or an upper bound (digits 0) when its error
    leaves no digit (error above a tenth of the value)."""
    if value is None or not error or 10.0 * error <= value:
        return resolved(value, error)
    return _round_to_two(value + error, math.ceil), 0


def root_error(sigma: float, lam_error: float) -> float:
    """Error of ``sigma = sqrt(lambda)`` when lambda is known to within ``lam_error``."""
    if sigma <= 0:
        return math.sqrt(lam_error)
    return min(math.sqrt(lam_error), lam_error / (2.0 * sigma))


def _gram_error(n: int, sigma_max: float) -> float:
    """Error scale of a float64 Gram matrix's eigenvalues: ``n * eps64 * sigma_max^2``."""
    return n * EPS64 * sigma_max * sigma_max


def _svd_error(n: int, sigma_max: float) -> float:
    """Error scale of a float64 SVD's singular values: ``n * eps64 * sigma_max``."""
    return n * EPS64 * sigma_max


@dataclass
class _BlockFacts:
    """What is known of one Gram-path block while deciding."""

    gram: np.ndarray | None  # upper triangle valid, float64, Fortran order (Gram path)
    sigma_max: float
    matrix: np.ndarray  # the block itself (possibly a memmap view), for an SVD re-check
    sigma_max_error: float = 0.0  # estimated error of sigma_max
    eigenvalues: np.ndarray | None = None  # all of G's, ascending (blocks up to EIGH_MAX_DIM)


def _check_finite(chunk: np.ndarray) -> None:
    if not np.all(np.isfinite(chunk)):
        raise FloatingPointError("weight contains NaN or Inf")


Accumulate = Callable[[np.ndarray, "np.ndarray | None", bool], np.ndarray]


def syrk_accumulate(chunk: np.ndarray, gram: np.ndarray | None, tall: bool) -> np.ndarray:
    """``gram + chunk^T chunk`` (``tall``: chunk (r, m)) or ``gram + chunk chunk^T`` (chunk
    (m, r)) by BLAS dsyrk, upper triangle, in place where ``gram`` is given (None: 0)."""
    # chunk.T is a Fortran view: syrk(a, trans=0) gives a a^T, syrk(a, trans=1) a^T a.
    if gram is None:
        return blas.dsyrk(1.0, chunk.T, trans=0 if tall else 1, lower=0)
    return blas.dsyrk(1.0, chunk.T, beta=1.0, c=gram, trans=0 if tall else 1, lower=0,
                      overwrite_c=1)


@dataclass(frozen=True)
class GramEngine:
    """Where the float64 Gram matrices are formed.

    Attributes:
        device: ``cpu`` (BLAS dsyrk, the default) or the device another engine runs on, as
            reports record it.
        accumulate: adds one float64 chunk's Gram matrix to the running one (see
            ``syrk_accumulate``); the decisions themselves always run on the CPU.
        chunk_bytes: float64 bytes per chunk it takes (None: CHUNK_BYTES).
    """

    device: str = "cpu"
    accumulate: Accumulate = field(default=syrk_accumulate, compare=False)
    chunk_bytes: int | None = None

    def form(self, matrix: np.ndarray) -> np.ndarray:
        """``gram_matrix`` of ``matrix`` with this engine."""
        return gram_matrix(matrix, self.accumulate, self.chunk_bytes)


CPU_GRAM = GramEngine()


def gram_matrix(matrix: np.ndarray, accumulate: Accumulate = syrk_accumulate,
                chunk_bytes: int | None = None) -> np.ndarray:
    """Float64 Gram matrix of the smaller side, streamed in chunks.

    Chunks run along the long side: rows of a tall matrix, column blocks of a wide one, each
    converted to a C-ordered float64 copy that BLAS reads without a transposed copy. A
    Fortran-ordered matrix (a transposed view, as Gemm with transB gives) is read as its
    C-ordered transpose, whose smaller-side Gram matrix is the same. The pages of a
    memory-mapped matrix are given back as each chunk is read (``pages.give_back``).

    Args:
        matrix: (q, p) array of any float dtype, possibly a read-only memmap.
        accumulate: adds a chunk's Gram matrix (``syrk_accumulate``: BLAS on the CPU).
        chunk_bytes: float64 bytes per chunk (CHUNK_BYTES where None).

    Returns:
        (m, m) float64 Fortran array, m = min(q, p): ``W^T W`` if q > p, ``W W^T`` if q < p,
        either for a square matrix (the same eigenvalues). Only the upper triangle is filled.
    """
    if matrix.flags.f_contiguous and not matrix.flags.c_contiguous:
        matrix = matrix.T  # same Gram matrix; chunks of the C-ordered side copy contiguously
    tall = matrix.shape[0] >= matrix.shape[1]
    long_side, m = (matrix.shape if tall else matrix.shape[::-1])
    gram: np.ndarray | None = None
    step = min(max(1, (chunk_bytes or CHUNK_BYTES) // (8 * max(m, 1))), max(long_side, 1))
    # One float64 buffer for every chunk: a fresh allocation per chunk costs page faults.
    buffer = np.empty((step, m) if tall else (m, step), dtype=np.float64)
    for start in range(0, max(long_side, 1), step):
        part = matrix[start:start + step] if tall else matrix[:, start:start + step]
        if tall:
            chunk = buffer[:part.shape[0]]
        elif part.shape[1] == step:
            chunk = buffer
        else:  # the last column block: a slice of the buffer would not be C-ordered
            chunk = np.empty((m, part.shape[1]), dtype=np.float64)
        _read_chunk(matrix, start, start + part.shape[0 if tall else 1], tall, chunk)
        gram = accumulate(chunk, gram, tall)
    assert gram is not None
    # A NaN or Inf anywhere in the weight reaches the diagonal entry of its row or column
    # (a sum of squares; float32 and float16 squares cannot overflow float64), so checking the
    # diagonal checks the weight without another pass over it.
    _check_finite(np.diagonal(gram))
    return np.asfortranarray(gram)


def _read_chunk(matrix: np.ndarray, lo: int, hi: int, tall: bool, out: np.ndarray) -> None:
    """Rows ``lo:hi`` (``tall``) or columns ``lo:hi`` of ``matrix`` into ``out`` (float64,
    same shape), handing the pages read back where ``matrix`` is memory-mapped
    (``pages``): the column blocks of a wide matrix read in several are read from the
    file row by row; a block of every column is every row. A signalling NaN raises numpy's
    "invalid" flag as it is converted: the caller's finite check reports it (one line), not
    a RuntimeWarning."""
    with np.errstate(invalid="ignore"):
        if tall:
            np.copyto(out, matrix[lo:hi], casting="unsafe")
            give_back(matrix, lo, hi, True)
        elif lo == 0 and hi == matrix.shape[1]:
            np.copyto(out, matrix, casting="unsafe")
            give_back(matrix, 0, matrix.shape[0], True)
        elif not read_columns(matrix, lo, hi, out):
            np.copyto(out, matrix[:, lo:hi], casting="unsafe")
            give_back(matrix, lo, hi, False)


def _upper_eigvalsh(gram: np.ndarray, subset: list[int] | None = None) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric matrix whose upper triangle ``gram`` holds.

    A subset uses dsyevx (dsyevr, scipy's default, can fail on matrices with many equal
    eigenvalues); if it fails, all eigenvalues by dsyevd and the subset taken from them.
    """
    if subset is None:
        return scipy.linalg.eigvalsh(gram, lower=False, check_finite=False, driver="evd")
    try:
        values = scipy.linalg.eigvalsh(gram, lower=False, subset_by_index=subset,
                                       check_finite=False, driver="evx")
        if values.size == subset[1] - subset[0] + 1:
            return values
    except np.linalg.LinAlgError:
        pass
    return _upper_eigvalsh(gram)[subset[0]:subset[1] + 1]


def _largest_eigenvalue(gram: np.ndarray) -> tuple[float, float]:
    """Largest eigenvalue of a symmetric positive semidefinite matrix (upper triangle used)
    and a bound on its error: Lanczos, then a Cholesky certificate that no eigenvalue lies
    above it (0 error when a dense eigensolver gave the value).

    The Lanczos runs on G scaled by its largest diagonal entry, so ARPACK's stopping test is
    relative for weights of any magnitude, from a seeded random start (a structured start
    such as all ones can be orthogonal to the top eigenvector of a structured weight, e.g.
    mirrored units, and Lanczos then never sees it). Matrix-vector products go through
    scipy's BLAS (dsymv): mixing numpy's and scipy's OpenBLAS thread pools in one loop makes
    them spin against each other on few cores.
    """
    m = gram.shape[0]
    if not np.any(gram):
        return 0.0, 0.0  # a zero weight (zero-initialised layers): ARPACK cannot start on it
    if m <= SVD_MAX_DIM:
        return float(_upper_eigvalsh(gram, [m - 1, m - 1])[0]), 0.0
    # Imported here: ARPACK serves only layers wider than SVD_MAX_DIM, and scipy.sparse.linalg
    # adds about 40 ms to the start of every command.
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    scale = float(np.diagonal(gram).max())  # > 0: a nonzero Gram matrix has a positive diagonal
    start = np.random.default_rng(SIGMA_MAX_SEED).standard_normal(m)
    operator = LinearOperator(
        (m, m), matvec=lambda x: blas.dsymv(1.0 / scale, gram, x.ravel(), lower=0),
        dtype=np.float64)
    try:
        values, vectors = eigsh(operator, k=1, which="LA", v0=start, tol=SIGMA_MAX_RTOL,
                                maxiter=SIGMA_MAX_RESTARTS)
    except (ArpackNoConvergence, ArpackError):
        return float(_upper_eigvalsh(gram, [m - 1, m - 1])[0]), 0.0
    vector = vectors[:, 0] / np.linalg.norm(vectors[:, 0])
    value = float(values[0]) * scale
    residual = float(np.linalg.norm(blas.dsymv(1.0, gram, vector, lower=0) - value * vector))
    bound = value + residual + CERTIFICATE_ROUNDING * m * EPS64 * value
    if not _nothing_above(gram, bound):  # Lanczos missed the top: take it from all of them
        return float(_upper_eigvalsh(gram, [m - 1, m - 1])[0]), 0.0
    # value - residual <= lambda_max <= bound, up to the certificate's own rounding
    return value, bound - value + 2.0 * m * EPS64 * bound


def _nothing_above(gram: np.ndarray, bound: float) -> bool:
    """Whether every eigenvalue of G is below ``bound``: a Cholesky factorisation of
    ``bound * I - G`` succeeds (in float64, for eigenvalues further below than its rounding,
    about m * eps64 * bound)."""
    scratch = _scratch_like(gram)
    np.negative(gram, out=scratch)
    scratch[np.diag_indices(gram.shape[0])] += bound
    _, info = scipy.linalg.lapack.dpotrf(scratch, lower=0, clean=0, overwrite_a=1)
    return int(info) == 0


def _singular_values(blocks: np.ndarray) -> np.ndarray:
    """Float64 singular values of each block: (g, q, p) -> (g, min(q, p))."""
    with np.errstate(invalid="ignore"):  # a signalling NaN: the finite check says so
        as64 = np.asarray(blocks, dtype=np.float64)
    _check_finite(as64)
    return np.linalg.svd(as64, compute_uv=False)


def streams(shape: tuple[int, int]) -> bool:
    """Whether a (q, p) block's SVD streams (``streamed_r``) instead of copying it whole.

    It does when its float64 copy would exceed CHUNK_BYTES and a chunk of CHUNK_BYTES along
    the long side holds at least STREAM_ROWS_PER_WIDTH times as many lines as the short side
    m: each QR stage also carries the m rows of the previous R, at most a quarter more rows
    than the chunk. With 64 MB chunks: m up to 1448 and a long side over 8 Mi / m (every SVD-
    path block, m <= SVD_MAX_DIM, with a float64 copy over 64 MB has a long side >= 128 m).
    """
    m, n = min(shape), max(shape)
    return 8 * m * n > CHUNK_BYTES and \
        CHUNK_BYTES // (8 * max(m, 1)) >= STREAM_ROWS_PER_WIDTH * m


def streamed_r(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """R factor of the block's QR along its long side, streamed in float64 chunks.

    A tall-skinny QR: R is the triangle of the QR of [R; chunk] (LAPACK dtpqrt, which keeps
    R's triangle), chunk by chunk along the long side, each chunk converted to float64 into one
    buffer of at most CHUNK_BYTES (a memory-mapped block is read once, never copied whole). A
    Fortran-ordered matrix (a transposed view) is read as its C-ordered transpose, like
    ``gram_matrix``.

    Args:
        matrix: (q, p) array of any float dtype, possibly a read-only memmap, q, p >= 1.

    Returns:
        (R, chunks): R (m, m) float64 upper triangular, m = min(q, p), with ``R^T R`` the
        smaller-side Gram matrix (``W^T W`` if q >= p, ``W W^T`` if q < p), so R has the
        block's singular values and, if q < p, its left singular vectors are those of R^T;
        and the number of chunks (for ``_streamed_length``).

    Raises:
        FloatingPointError: the weight contains NaN or Inf.
    """
    if matrix.flags.f_contiguous and not matrix.flags.c_contiguous:
        matrix = matrix.T  # same smaller-side Gram matrix; rows of the C-ordered side stream
    tall = matrix.shape[0] >= matrix.shape[1]
    long_side, m = matrix.shape if tall else matrix.shape[::-1]
    step = min(max(1, CHUNK_BYTES // (8 * m)), long_side)
    r = np.zeros((m, m), dtype=np.float64, order="F")
    # One Fortran float64 buffer for every full chunk: a wide matrix's column block, read as
    # its transpose, fills it contiguously; a tall one's rows are transposed as they convert.
    buffer = np.empty((step, m), dtype=np.float64, order="F")
    nb = min(TSQR_BLOCK, m)
    chunks = 0
    for start in range(0, long_side, step):
        part = matrix[start:start + step] if tall else matrix[:, start:start + step].T
        chunk = buffer if part.shape[0] == step else \
            np.empty(part.shape, dtype=np.float64, order="F")
        _read_chunk(matrix, start, start + part.shape[0], tall, chunk if tall else chunk.T)
        _check_finite(chunk)
        r, _, _, info = scipy.linalg.lapack.dtpqrt(0, nb, r, chunk, overwrite_a=1,
                                                   overwrite_b=1)
        if info != 0:
            raise ValueError(f"dtpqrt failed (info {info})")
        chunks += 1
    return np.triu(r), chunks


def _streamed_length(shape: tuple[int, int], chunks: int) -> int:
    """The length the SVD error model counts for a streamed block (``_svd_error``'s n).

    A float64 SVD's values are those of W + E with ||E|| ~ n eps64 sigma_max, n the long side
    (LAPACK's own SVD of a long block is a Householder QR of its n rows, then an SVD of R).
    Each streamed stage is a Householder QR of [R; chunk], m + r_k rows, whose backward error
    (m + r_k) eps64 ||[R; chunk]|| <= (m + r_k) eps64 sigma_max is a perturbation of the rows
    of W it has reduced (R is an orthogonal image of them), so the stages' errors add: n + s m
    over s chunks, and m more for the SVD of the m x m R.
    """
    m, n = min(shape), max(shape)
    return n + (chunks + 1) * m


def _svd_singular_values(blocks: np.ndarray) -> tuple[np.ndarray, int]:
    """Float64 singular values of each block, (g, q, p) -> (g, min(q, p)), and the length
    n of their error model (``_svd_error``): the long side, or ``_streamed_length`` where
    the blocks stream (``streams``). Unstreamed blocks are copied at most CHUNK_BYTES of
    float64 at a time (one block at least); each block's SVD is the same either way."""
    g, qb, pb = blocks.shape
    if streams((qb, pb)):
        values, lengths = [], []
        for k in range(g):
            r, chunks = streamed_r(blocks[k])
            values.append(np.linalg.svd(r, compute_uv=False))
            lengths.append(_streamed_length((qb, pb), chunks))
        return np.stack(values), max(lengths)
    per = max(1, CHUNK_BYTES // (8 * qb * pb))
    if per >= g:
        return _singular_values(blocks), max(qb, pb)
    return np.concatenate([_singular_values(blocks[k:k + per]) for k in range(0, g, per)]), \
        max(qb, pb)


def _block_facts(block: np.ndarray, form: Callable[[np.ndarray], np.ndarray]) -> _BlockFacts:
    """The block's Gram matrix (made by ``form``) and sigma_max (with its error estimate)."""
    gram = form(block)
    if gram.shape[0] <= EIGH_MAX_DIM:  # every eigenvalue: sigma_max and, later, the rank
        eigenvalues = _upper_eigvalsh(gram)
        sigma_max = math.sqrt(max(float(eigenvalues[-1]), 0.0))
        error = root_error(sigma_max, _gram_error(max(block.shape), sigma_max))
        return _BlockFacts(gram, sigma_max, block, error, eigenvalues)
    lam, residual = _largest_eigenvalue(gram)
    sigma_max = math.sqrt(max(lam, 0.0))
    error = root_error(sigma_max, _gram_error(max(block.shape), sigma_max) + residual)
    return _BlockFacts(gram, sigma_max, block, error)


@dataclass(frozen=True)
class _BlockRank:
    rank: int
    kept: float | None
    dropped: float | None
    method: str
    kept_error: float | None = None
    dropped_error: float | None = None


def _rank_from_sigmas(sigmas: np.ndarray, tol: float, method: str,
                      error_of: Callable[[float], float]) -> _BlockRank:
    """Rank from all singular values; ``error_of(s)`` is the error estimate of value s."""
    above = sigmas > tol
    rank = int(np.count_nonzero(above))
    kept = float(sigmas[above].min()) if rank else None
    dropped = float(sigmas[~above].max()) if rank < sigmas.size else None
    return _BlockRank(rank, kept, dropped, method,
                      None if kept is None else error_of(kept),
                      None if dropped is None else error_of(dropped))


def _cholesky_solve(factor: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """X (m, b) -> (R^T R)^{-1} X for an upper Cholesky factor R (two triangular solves)."""

    def solve(block: np.ndarray) -> np.ndarray:
        solution, _ = scipy.linalg.lapack.dpotrs(factor, block, lower=0)
        return solution

    return solve


def _shifted_copy(gram: np.ndarray, shift: float, scratch: np.ndarray) -> np.ndarray:
    """``gram + shift * I`` written into ``scratch`` (an (m, m) Fortran float64 buffer).

    One buffer serves every factorisation of a block: a fresh 100 MB array per attempt costs
    more in page faults than the copy itself.
    """
    np.copyto(scratch, gram)
    scratch[np.diag_indices(gram.shape[0])] += shift
    return scratch


def _cholesky(gram: np.ndarray, shift: float, scratch: np.ndarray) -> tuple[np.ndarray, int]:
    """Upper Cholesky factor of ``gram + shift * I`` (in ``scratch``) and LAPACK's info: 0 on
    success, else the 1-based pivot where it stopped (the leading info - 1 rows and columns
    then hold the factor of a positive definite leading block). Only the upper triangle is
    meaningful."""
    factor, info = scipy.linalg.lapack.dpotrf(_shifted_copy(gram, shift, scratch), lower=0,
                                              clean=0, overwrite_a=1)
    return factor, int(info)


def _scratch_like(gram: np.ndarray) -> np.ndarray:
    return np.empty(gram.shape, dtype=np.float64, order="F")


def _smallest_eigenvalue_from_cholesky(factor: np.ndarray) -> tuple[float, float]:
    """Smallest eigenvalue of R^T R (to KEPT_RTOL) by block Lanczos on its inverse, and the
    Lanczos error estimate of it (0 when a dense eigensolver gave it)."""
    m = factor.shape[0]
    top = top_eigenpairs(_cholesky_solve(factor), m, 1, KEPT_RTOL, values_only=True)
    if top.converged:
        theta = float(top.values[0])
        return 1.0 / theta, float(top.errors[0]) / (theta * theta)
    upper = np.triu(factor)
    return float(_upper_eigvalsh(upper.T @ upper, [0, 0])[0]), 0.0


MAX_DEFLATION = 64  # at most this many eigenvalues below tol^2 are certified by deflation
SCHUR_MAX_DIM = 1024  # a failed Cholesky leaving a Schur complement up to this decides by it
LDL_ERROR_SHARE = 0.01  # ... when its rounding estimate is at most this share of tol^2
LDL_COLUMNS = 240  # Lanczos basis limit for the dropped side (then: fall back) ...
KEPT_COLUMNS = 600  # ... and for the deflated kept side (the Cholesky path's default)
LDL_DEFLATION = 256  # at most this many dropped eigenvectors deflate the kept side


def _smallest_eigenpairs(gram: np.ndarray, shift: float, count: int, scratch: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ``count`` smallest eigenpairs of G by Lanczos on (G + shift I)^{-1}, ascending,
    with the Lanczos error estimate of each value."""
    factor, info = _cholesky(gram, shift, scratch)
    if info != 0:
        return None
    top = top_eigenpairs(_cholesky_solve(factor), gram.shape[0], count, 1e-10)
    if not top.converged:
        return None
    values, vectors = 1.0 / top.values - shift, top.vectors
    errors = top.errors / (top.values * top.values)
    order = np.argsort(values)
    return values[order], vectors[:, order], errors[order]


def _deflated_rank(gram: np.ndarray, tol: float, scratch: np.ndarray, lam_error: float
                   ) -> _BlockRank | None:
    """Rank of a Gram block with a few eigenvalues below tol^2, proved without a full eigh.

    Lanczos finds the smallest eigenpairs (V, theta). Lower bound: with R = G V - V Theta,
    G has as many eigenvalues within ||R|| of the thetas (Rayleigh-Ritz), so at least n below
    tol^2. Upper bound: if G - tol^2 I + 2 tol^2 V V^T is positive definite (Cholesky), then
    G - tol^2 I has at most n non-positive eigenvalues (rank-n interlacing). Together: exactly
    n are dropped. None when either proof fails (the caller falls back to a full eigh).
    ``lam_error`` is the Gram matrix's eigenvalue error scale, for the values' error estimates.
    """
    m, t2 = gram.shape[0], tol * tol
    if m < 2:
        return None  # nothing to deflate against
    count = 8
    while True:
        count = min(count, m - 1)
        pairs = _smallest_eigenpairs(gram, t2, count, scratch)
        if pairs is None:
            return None
        values, vectors, errors = pairs
        below = values < t2
        if not below.all() or count >= min(MAX_DEFLATION, m - 1):
            break
        count *= 2
    if below.all() or not below.any():
        return None
    low_values, low = values[below], np.ascontiguousarray(vectors[:, below])
    if np.abs(low.T @ low - np.eye(low.shape[1])).max() > 1e-12:
        return None  # the bounds below assume orthonormal vectors
    ritz, residual_block = _rayleigh_ritz(gram, low)
    if float(ritz[-1]) + float(np.linalg.norm(residual_block, 2)) >= t2:
        return None
    lifted = blas.dsyrk(2.0 * t2, low, beta=1.0, c=_shifted_copy(gram, -t2, scratch), trans=0,
                        lower=0, overwrite_c=1)
    _, info = scipy.linalg.lapack.dpotrf(lifted, lower=0, overwrite_a=1)
    if info != 0:
        return None
    kept_at = int(np.flatnonzero(~below)[np.argmin(values[~below])])
    dropped_at = int(np.flatnonzero(below)[np.argmax(low_values)])
    kept = math.sqrt(float(values[kept_at]))
    dropped = math.sqrt(max(float(values[dropped_at]), 0.0))
    return _BlockRank(m - int(below.sum()), kept, dropped, "gram-deflated",
                      root_error(kept, lam_error + float(errors[kept_at])),
                      root_error(dropped, lam_error + float(errors[dropped_at])))


def _kept_side(split: SchurSplit, m: int, dropped: np.ndarray) -> tuple[float, float] | None:
    """The largest eigenvalue theta > 0 of ``(G - tol^2 I)^{-1}`` (1 / the distance from tol^2
    to the smallest kept eigenvalue of G) by block Lanczos, and its Lanczos error; None if it
    does not converge within KEPT_COLUMNS.

    ``dropped`` (m, r): the orthonormal eigenvectors of every dropped value, projected out
    first (their large thetas would otherwise stall the kept side's convergence)."""
    def apply(block: np.ndarray) -> np.ndarray:
        return project_out(dropped, split.solve(project_out(dropped, block)))

    top = top_eigenpairs(apply, m, 1, KEPT_RTOL, max_columns=KEPT_COLUMNS, values_only=True)
    theta = float(top.values[0])
    if not top.converged or theta <= 0:
        return None
    return theta, float(top.errors[0])


def _rayleigh_ritz(gram: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (ascending) of G on the span of orthonormal (m, r) ``vectors`` (upper
    triangle of G used), and the residual block ``G V - V (V^T G V)`` (m, r)."""
    applied = blas.dsymm(1.0, gram, vectors, side=0, lower=0)
    projected = blas.dgemm(1.0, vectors, applied, trans_a=1)
    ritz = np.linalg.eigvalsh((projected + projected.T) / 2)
    return ritz, applied - blas.dgemm(1.0, vectors, projected)


def _dropped_side(split: SchurSplit, gram: np.ndarray
                  ) -> tuple[float, float, float, np.ndarray] | None:
    """The dropped side of a Schur split, for at most LDL_DEFLATION dropped values.

    Returns:
        (theta, lam, lam_error, vectors): the largest eigenvalue theta of
        ``-(G - tol^2 I)^{-1}`` (it sets that operator's rounding floor); the largest dropped
        eigenvalue lam of G and its error; the (m, r) eigenvectors of all r dropped values.
        lam is the largest Ritz value of G itself on their span, within the residual norm
        ``||G V - V Theta||`` of an eigenvalue: from theta alone, ``tol^2 - 1 / theta`` would
        cancel for values far below tol, where every dropped value maps to theta ~ 1 / tol^2
        and the Ritz values need not have resolved that cluster (a fuzzed float16 layer then
        printed an upper bound below the true value). None beyond LDL_DEFLATION dropped values
        or if Lanczos does not converge.
    """
    m, r = gram.shape[0], split.negatives
    if r > LDL_DEFLATION:
        return None
    # Vectors to 1e-8 leave at most ~1e-16 of a dropped theta in the deflated operator.
    top = top_eigenpairs(lambda block: -split.solve(block), m, r, 1e-8,
                         max_columns=LDL_COLUMNS)
    if not top.converged or not bool(np.all(top.values > 0)):
        return None
    vectors = np.asfortranarray(top.vectors)
    ritz, residual = _rayleigh_ritz(gram, vectors)
    return float(top.values[0]), float(ritz[-1]), float(np.linalg.norm(residual)), vectors


def _ldl_rank(gram: np.ndarray, sigma_max: float, tol: float, factor: np.ndarray,
              failed_at: int, lam_error: float) -> _BlockRank | None:
    """Rank of a Gram block from the Cholesky factorisation of ``G - tol^2 I`` that failed at
    pivot ``failed_at``: its leading block is positive definite, and the Schur complement of
    that block has as many negative eigenvalues as ``G - tol^2 I`` (``inertia.schur_split``).
    The kept and dropped values nearest tol come from shift-invert Lanczos through the same
    factors. None (the deflated certificate or a full eigh then decides) when the count is not
    resolved at the factorisation's rounding, when that rounding is not small beside tol^2
    (the values near tol would mean nothing), or when Lanczos does not converge."""
    t2, m = tol * tol, gram.shape[0]
    split = schur_split(gram, -t2, sigma_max**2, factor, failed_at)
    if split is None or not split.resolved or split.negatives == 0 \
            or split.error > LDL_ERROR_SHARE * t2:
        return None
    side = _dropped_side(split, gram)
    if side is None:
        return None
    dropped_theta, dropped_lam, dropped_error, dropped_vectors = side
    kept = _kept_side(split, m, dropped_vectors) if split.negatives < m else None
    if kept is None and split.negatives < m:
        return None
    error = lam_error + split.error
    high = high_error = None
    if kept is not None:
        # Applying (G - t2 I)^{-1} rounds at m eps ||(G - t2 I)^{-1}||, and the larger side
        # sets that norm: a dropped value close to tol makes the kept side's floor large.
        theta, lanczos_error = kept
        floor = m * EPS64 * max(dropped_theta, theta)
        high = math.sqrt(max(t2 + 1.0 / theta, 0.0))
        high_error = root_error(high, error + max(lanczos_error, floor) / theta**2)
        # The Ritz value's error is quadratic in the residual over the gap to the rest of
        # the spectrum (the kept side, at high^2 and above; halved for safety).
        gap = 0.5 * (high * high - dropped_lam)
        if gap > 0:
            dropped_error = min(dropped_error, dropped_error**2 / gap)
    low = math.sqrt(max(dropped_lam, 0.0))
    low_error = root_error(low, error + dropped_error)
    return _BlockRank(m - split.negatives, high, low, "gram-ldl", high_error, low_error)


def _largest_diagonal_first(gram: np.ndarray) -> np.ndarray | None:
    """G (upper triangle valid) symmetrically permuted so that its diagonal decreases, as a
    full symmetric Fortran array; None if it decreases already. The eigenvalues are G's."""
    order = np.argsort(-np.diagonal(gram), kind="stable")
    if np.array_equal(order, np.arange(order.size)):
        return None
    full = np.triu(gram)
    full += np.triu(gram, 1).T
    # The permuted matrix is symmetric: its transpose is the same matrix in Fortran order.
    return np.asarray(full[np.ix_(order, order)].T)


def _ldl_after_failure(facts: _BlockFacts, tol: float, factor: np.ndarray, failed_at: int,
                       lam_error: float, scratch: np.ndarray) -> _BlockRank | None:
    """The Schur-complement decision after the Cholesky factorisation of ``G - tol^2 I``
    failed. A failure at the first pivot, or one that leaves a Schur complement wider than
    SCHUR_MAX_DIM (nearly dead units early in a wide layer: tiny rows and columns of G; exact
    zeros were set aside before), is retried once with G permuted so its diagonal decreases,
    which moves them to the end."""
    assert facts.gram is not None
    gram, m = facts.gram, facts.gram.shape[0]
    if failed_at == 1 or m - failed_at + 1 > SCHUR_MAX_DIM:
        permuted = _largest_diagonal_first(gram)
        if permuted is None:
            return None
        gram = permuted
        factor, failed_at = _cholesky(gram, -tol * tol, scratch)
        if failed_at in (0, 1) or m - failed_at + 1 > SCHUR_MAX_DIM:
            return None  # succeeding now only means a value within rounding of tol
    return _ldl_rank(gram, facts.sigma_max, tol, factor, failed_at, lam_error)


def _live_facts(facts: _BlockFacts, live: np.ndarray) -> _BlockFacts:
    """The block without its dead lines: G with the rows and columns of ``live`` (sorted
    indices) only. A zero diagonal entry of G is an all-zero row or column of the weight on
    the Gram side (a sum of squares of float32 or float16 values is 0 only if each is), which
    adds an exact zero singular value and changes nothing else."""
    assert facts.gram is not None
    gram = np.asfortranarray(facts.gram[np.ix_(live, live)])  # upper triangle stays upper
    return _BlockFacts(gram, facts.sigma_max, facts.matrix, facts.sigma_max_error)


def _rank_from_gram(facts: _BlockFacts, tol: float) -> _BlockRank:
    """Rank of one Gram block: dead lines (pruned or unused units) set aside as exact zeros;
    then a Cholesky certificate; where it fails, the Schur complement it leaves; else a
    deflated certificate or a full eigh."""
    assert facts.gram is not None
    dead = np.diagonal(facts.gram) == 0
    if dead.any() and not dead.all():
        live = _rank_of_live_part(_live_facts(facts, np.flatnonzero(~dead)), tol)
        if live.dropped is not None:  # a live value below tol, >= the exact zeros
            return live
        return replace(live, dropped=0.0, dropped_error=0.0)
    return _rank_of_live_part(facts, tol)


def _rank_of_live_part(facts: _BlockFacts, tol: float) -> _BlockRank:
    """``_rank_from_gram`` once dead lines are set aside (a live part of at most
    EIGH_MAX_DIM lines takes the eigenvalues directly)."""
    assert facts.gram is not None
    m = facts.gram.shape[0]
    lam_error = _gram_error(max(facts.matrix.shape), facts.sigma_max)
    if m <= EIGH_MAX_DIM:
        return _rank_from_eigenvalues(facts.gram, tol, lam_error, facts.eigenvalues)
    scratch = _scratch_like(facts.gram)
    factor, failed_at = _cholesky(facts.gram, -tol * tol, scratch)
    if failed_at == 0:
        shifted_min, lanczos_error = _smallest_eigenvalue_from_cholesky(factor)
        kept = math.sqrt(max(tol * tol + shifted_min, 0.0))
        return _BlockRank(m, kept, None, "gram-cholesky",
                          root_error(kept, lam_error + lanczos_error))
    split = _ldl_after_failure(facts, tol, factor, failed_at, lam_error, scratch) \
        if tol > 0 else None
    if split is not None:
        return split
    deflated = _deflated_rank(facts.gram, tol, scratch, lam_error) if tol > 0 else None
    del scratch, factor
    if deflated is not None:
        return deflated
    return _rank_from_eigenvalues(facts.gram, tol, lam_error)


def _rank_from_eigenvalues(gram: np.ndarray, tol: float, lam_error: float,
                           known: np.ndarray | None = None) -> _BlockRank:
    """Rank from all eigenvalues of the Gram matrix (``lam_error``: their error scale;
    ``known``: those eigenvalues, ascending, where already computed)."""
    lam = _upper_eigvalsh(gram) if known is None else known
    sigmas = np.sqrt(np.clip(lam, 0.0, None))[::-1]
    return _rank_from_sigmas(sigmas, tol, "gram-eigh", lambda s: root_error(s, lam_error))


def tolerance_error(rule: ToleranceRule, sigma_max: float, sigma_max_error: float,
                    shape_eps: tuple[int, int, float]) -> float:
    """Error of ``tol`` when sigma_max is known to within ``sigma_max_error`` (0 where an
    ``atol`` that sets tol holds it fixed)."""
    q, p, eps = shape_eps
    return abs(rule.tolerance(sigma_max + sigma_max_error, q, p, eps)
               - rule.tolerance(sigma_max, q, p, eps))


def _close_call(result: _BlockRank, tol: float) -> bool:
    """Whether tol lies within GRAM_TRUST error bars of the kept or the dropped value: only
    then can the Gram matrix's rounding have moved a singular value across tol, and an SVD
    decides again. A margin of 1.004 on a 4096 x 4096 layer is resolved about a thousand
    times over by its Gram matrix (error about 2e-6 of tol) and is not a close call."""
    near_kept = result.kept is not None and \
        result.kept - GRAM_TRUST * (result.kept_error or 0.0) <= tol
    near_dropped = result.dropped is not None and \
        result.dropped + GRAM_TRUST * (result.dropped_error or 0.0) >= tol
    return near_kept or near_dropped


def _gram_pays(q: int, p: int) -> bool:
    """Whether a (q, p) block takes the Gram path (where it is precise enough): blocks wider
    than SVD_MAX_DIM, and narrower ones whose SVD is not cheap (``n m^2`` over SVD_MAX_WORK,
    about 17 million multiply-adds: a 256 x 2304 conv block's SVD cost 27 ms against 5 ms for
    its Gram matrix and eigenvalues). Small blocks keep the float64 SVD, the most precise
    answer, at a cost of milliseconds."""
    m, n = min(q, p), max(q, p)
    return m > SVD_MAX_DIM or n * m * m > SVD_MAX_WORK


def _gram_is_precise(n: int, relative_tol: float) -> bool:
    """Gram eigenvalues resolve singular values down to ~sqrt(n * eps64) * sigma_max."""
    return relative_tol > 0 and math.sqrt(n * EPS64) < 0.01 * relative_tol


def decide_rank(blocks: np.ndarray, eps: float, rule: ToleranceRule | None = None,
                gram: GramEngine | None = None) -> RankDecision:
    """Numerical rank of the block-diagonal matrix diag(blocks[0], ..., blocks[g-1]).

    Args:
        blocks: (g, qb, pb) array (any float dtype; may be a memmap view).
        eps: machine epsilon of the dtype the weight is computed in.
        rule: tolerance rule; the NumPy default when None.
        gram: where the Gram-path blocks' float64 Gram matrices are formed (BLAS on the CPU
            when None); every decision from them runs on the CPU.

    Returns:
        The rank over all blocks with the tolerance, sigma_max, the smallest kept and largest
        dropped singular values, and the method used.

    Raises:
        FloatingPointError: the weight contains NaN or Inf.
    """
    rule = rule or ToleranceRule()
    g, qb, pb = blocks.shape
    q, p = g * qb, g * pb
    if g == 0 or qb == 0 or pb == 0:
        return RankDecision(0, 0.0, 0.0, eps, None, None, "empty")
    default_rel = rule.rtol if rule.rtol is not None else max(q, p) * eps
    # float64 weights always take the SVD: their squares can over- or underflow in a float64
    # Gram matrix, and the default rule's tolerance is below what a Gram matrix resolves.
    big = _gram_pays(qb, pb) and _gram_is_precise(max(qb, pb), default_rel) \
        and np.dtype(blocks.dtype).itemsize < 8
    if not big:
        sigmas, length = _svd_singular_values(blocks)
        sigma_max = float(sigmas.max())
        tol = _checked_tolerance(rule, sigma_max, (q, p, eps))
        error = _svd_error(length, sigma_max)
        decided = _rank_from_sigmas(sigmas.ravel(), tol, "svd", lambda s: error)
        return _combine([decided], sigma_max, error, rule, (q, p, eps))
    form = gram_matrix if gram is None else gram.form
    # Pass 1: sigma_max of every block (it sets tol). Pass 2: decide each block against tol.
    keep = g * min(qb, pb) ** 2 * 8 <= HELD_GRAM_BYTES
    facts = []
    for k in range(g):
        fact = _block_facts(blocks[k], form)
        if not keep:
            fact.gram = None
        facts.append(fact)
    sigma_max = max(f.sigma_max for f in facts)
    sigma_max_error = max(f.sigma_max_error for f in facts)
    tol = _checked_tolerance(rule, sigma_max, (q, p, eps))
    results = []
    for fact in facts:
        if fact.gram is None:
            fact.gram = form(fact.matrix)
        results.append(_decide_block(fact, tol, max(qb, pb), sigma_max))
        fact.gram = None
    return _combine(results, sigma_max, sigma_max_error, rule, (q, p, eps))


def _checked_tolerance(rule: ToleranceRule, sigma_max: float,
                       shape_eps: tuple[int, int, float]) -> float:
    """``tol`` for this sigma_max.

    Raises:
        FloatingPointError: sigma_max overflows float64 (entries near float64's maximum).
        OverflowError: tol does (an ``rtol`` too large for this weight's scale).
    """
    if not math.isfinite(sigma_max):
        raise FloatingPointError("the weight's largest singular value overflows float64")
    tol = rule.tolerance(sigma_max, *shape_eps)
    if not math.isfinite(tol):
        raise OverflowError(f"tol = sigma_max * rtol overflows float64 (sigma_max "
                            f"{sigma_max:.6g}, rtol {rule.rtol:g})")
    return tol


def _decide_block(facts: _BlockFacts, tol: float, n: int, sigma_max: float) -> _BlockRank:
    if tol > facts.sigma_max + facts.sigma_max_error:  # all below tol (tol^2 may overflow)
        return _BlockRank(0, None, facts.sigma_max, "gram-eigh", None, facts.sigma_max_error)
    precise = sigma_max > 0 and _gram_is_precise(n, tol / sigma_max)
    if precise:
        result = _rank_from_gram(facts, tol)
        if not _close_call(result, tol):
            return result
    values, length = _svd_singular_values(facts.matrix[None])
    sigmas = values[0]
    error = _svd_error(length, float(sigmas[0]) if sigmas.size else 0.0)
    return _rank_from_sigmas(sigmas, tol, "svd", lambda s: error)


def _combine(results: list[_BlockRank], sigma_max: float, sigma_max_error: float,
             rule: ToleranceRule, shape_eps: tuple[int, int, float]) -> RankDecision:
    """One decision over all blocks: ranks summed, the extreme kept and dropped values (with
    their blocks' error estimates), tol and its error from sigma_max's."""
    q, p, eps = shape_eps
    tol = rule.tolerance(sigma_max, q, p, eps)
    tol_error = tolerance_error(rule, sigma_max, sigma_max_error, (q, p, eps))
    kept = [(r.kept, r.kept_error) for r in results if r.kept is not None]
    dropped = [(r.dropped, r.dropped_error) for r in results if r.dropped is not None]
    # Blocks' errors differ (each scales with its own sigma_max): the extreme value is the
    # one with the extreme bound, so a noise-floor value is not hidden behind an exact one.
    low = min(kept, key=lambda pair: pair[0] - (pair[1] or 0.0)) if kept else (None, None)
    high = max(dropped, key=lambda pair: pair[0] + (pair[1] or 0.0)) if dropped else (None, None)
    methods = sorted({r.method for r in results})
    return RankDecision(
        rank=sum(r.rank for r in results), sigma_max=sigma_max, tol=tol, eps=eps,
        smallest_kept=low[0], largest_dropped=high[0], method="+".join(methods),
        sigma_max_error=sigma_max_error, tol_error=tol_error, kept_error=low[1],
        dropped_error=high[1],
    )


# ---------------------------------------------------------------- kernel spaces

FULL_BASIS_MAX = 4096  # an explicit orthonormal kernel basis is kept for q up to this


def sign_fixed(vectors: np.ndarray) -> np.ndarray:
    """Flip each row so that its entry of largest magnitude (first such) is positive."""
    if vectors.size == 0:
        return vectors
    lead = np.argmax(np.abs(vectors), axis=1)
    signs = np.sign(vectors[np.arange(vectors.shape[0]), lead])
    signs[signs == 0] = 1.0
    return vectors * signs[:, None]


@dataclass(frozen=True)
class KernelSpace:
    """The left kernel ker(W^T) of one q x p matrix, in R^q.

    Attributes:
        q: input dimension.
        rank: numerical rank of W under ``tol``.
        tol: the tolerance the rank was decided with.
        sigma_max: largest singular value of W.
        range_basis: (q, rank) orthonormal basis of W's column space (float64).
        basis: (nullity, q) orthonormal, sign-fixed kernel basis, or None when q is too large
            to hold one (then random vectors are projections of Gaussian draws).
        tol_error: estimated error of ``tol`` (from the float64 SVD's error in sigma_max).
    """

    q: int
    rank: int
    tol: float
    sigma_max: float
    range_basis: np.ndarray
    basis: np.ndarray | None
    tol_error: float = 0.0

    @property
    def nullity(self) -> int:
        """dim ker(W^T)."""
        return self.q - self.rank

    def vector(self, index: int) -> np.ndarray:
        """The ``index``-th orthonormal kernel basis vector, shape (q,).

        Raises:
            IndexError: ``index`` is not below the nullity, or no explicit basis is held.
        """
        if self.basis is None:
            raise IndexError(f"no explicit kernel basis is kept for q = {self.q}")
        if not 0 <= index < self.nullity:
            raise IndexError(f"kernel basis index {index} is not in [0, {self.nullity})")
        return np.asarray(self.basis[index])

    def random_vector(self, rng: np.random.Generator) -> np.ndarray:
        """A unit vector drawn uniformly from the kernel (Gaussian, projected), shape (q,)."""
        if self.nullity == 0:
            raise IndexError("the kernel is trivial")
        if self.basis is not None:
            mixed = rng.standard_normal(self.nullity) @ self.basis
        else:
            draw = rng.standard_normal(self.q)
            mixed = draw - self.range_basis @ (self.range_basis.T @ draw)
        return np.asarray(mixed / np.linalg.norm(mixed))


def kernel_space(matrix: np.ndarray, eps: float, rule: ToleranceRule | None = None,
                 sigma_max: float | None = None, q_total: int | None = None,
                 p_total: int | None = None) -> KernelSpace:
    """ker(W^T) of a (q, p) matrix by a float64 SVD, with the audit's tolerance rule.

    A wide matrix that streams (``streams``: q small, p long) takes the SVD of R^T, R from
    ``streamed_r`` (``W W^T = R^T R``: the same left singular vectors and values), not of a
    float64 copy of W. The right singular vectors are never formed (a full SVD of a wide W
    would hold a p x p one).

    Args:
        matrix: (q, p) weight rows (possibly a subset of a layer's rows).
        eps: machine epsilon of the compute dtype.
        rule: tolerance rule (NumPy default when None).
        sigma_max: use this sigma_max for the tolerance (the whole layer's), else the matrix's.
        q_total, p_total: the whole layer's dims for the default rule, else the matrix's.
    """
    rule = rule or ToleranceRule()
    q, p = matrix.shape
    full = q <= FULL_BASIS_MAX
    length = max(q, p)
    if q == 0 or p == 0:
        u, sigmas = np.eye(q), np.zeros(0)
    elif q < p and streams((q, p)):
        r, chunks = streamed_r(matrix)
        u, sigmas, _ = np.linalg.svd(r.T)
        length = _streamed_length((q, p), chunks)
    else:
        # Full u only where it is wider than the reduced one (q > p); with q <= p the reduced
        # SVD gives the same u (LAPACK computes it the same way) without a p x p vh.
        u, sigmas, _ = np.linalg.svd(np.asarray(matrix, dtype=np.float64),
                                     full_matrices=full and q > p)
    top = float(sigmas[0]) if sigmas.size else 0.0
    ref = top if sigma_max is None else sigma_max
    tol = rule.tolerance(ref, q_total or q, p_total or p, eps)
    rank = int(np.count_nonzero(sigmas > tol))
    basis = sign_fixed(u[:, rank:].T.copy()) if full else None
    tol_error = tolerance_error(rule, ref, _svd_error(length, ref),
                                (q_total or q, p_total or p, eps))
    return KernelSpace(q, rank, tol, ref, np.ascontiguousarray(u[:, :rank]), basis, tol_error)
