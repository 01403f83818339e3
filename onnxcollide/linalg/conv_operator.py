"""The whole convolution as one linear operator on the real input space, and its smallest singulars.

A first-layer convolution ``A: R^{C x H x W} -> R^{O x H' x W'}`` (zero padding, no bias) whose
windows overlap has, in general, no kernel even when every per-patch weight matrix does: the
honest collision question is ``sigma_min(A)`` at the real input size. This module gives

- :func:`conv_forward` / :func:`conv_adjoint`: ``A`` and its exact adjoint (im2col by strided
  slices, one BLAS matmul per group, float64), 1-D, 2-D and 3-D, any stride, dilation, padding
  and groups;
- :func:`smallest_singular`: the ``k`` smallest singular values of ``A`` and their right singular
  vectors (input space), for the true zero-padded operator, each with its residual
  ``||A^T A v - s^2 v||``.

Method (iterative path). ``A^T A`` is applied by FFT, exactly up to float64 rounding
(:class:`_Gram`): every window that reads the input forms a stride-1 conv on the ``C s^D``
polyphase components, whose Gram is one ``C s^D x C s^D`` matrix per frequency of a grid large
enough for a linear (not circular) convolution; the windows that are not outputs of the conv
(a frame a few windows wide) are subtracted by im2col. A block LOBPCG on ``A^T A`` finds its
smallest eigenpairs, preconditioned by a multiplicative Schwarz method built from two cheap
exact pieces:

- the *circular* model: a stride-``s`` conv is a stride-1 conv from the ``C s^D`` polyphase
  components of the input; with periodic boundaries it block-diagonalises under the DFT into
  one ``O x C s^D`` matrix per frequency, so ``(A_c^T A_c - shift)^{-1}`` costs two FFTs. It is
  exact in the interior, wrong within a kernel width of the border;
- *boundary patches*: overlapping boxes (about two kernel extents) along the border. The block
  of ``A^T A`` from a patch to the box its windows reach is gathered from the
  translation-invariant Gram of all windows (less the windows that are not outputs) and kept
  per distinct geometry with the eigendecomposition of its patch block. Patches are coloured so
  that one colour never couples through ``A^T A``: a colour is one batched solve and residual
  update (two GEMMs), the same result as patch by patch.

One preconditioner application is a sweep over the patches (each solved against the running
residual) and the circular solve on what is left. On trained stems
the smallest singular vectors are edge and corner modes well below anything the circular model
has (3x lower on UltraFace's 3x3/2 stem), so the patches are what makes the method converge in
tens of iterations instead of hundreds. The shift ``0.9 * lambda_min`` estimate (once it has
settled) turns the preconditioner into an approximate shift-invert.

Start block: unit vectors on blind inputs (``diag(A^T A) == 0``, exact collisions), the lowest
local modes of the patches, the smallest circular modes (plain and under a sine window) and two
random vectors, reduced by one Rayleigh-Ritz step. ``sigma_max`` comes from Lanczos started at
the top circular mode. The final values come from a Rayleigh-Ritz step on ``A V`` itself (an SVD
of ``A V``), so each returned vector has ``||A v|| = sigma`` exactly (a certificate: the values
are upper bounds of the true ones, equal once converged) and tiny singular values keep their
accuracy instead of being square roots of rounding errors. Groups are independent blocks and
are solved one by one; small operators use a dense SVD.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.sparse

from onnxcollide.errors import UsageError
from onnxcollide.limits import ResourceLimitError, check_allocation, current_limit
from onnxcollide.linalg.spectral import EPS64, ToleranceRule, root_error

EPS32 = 2.0**-23
DENSE_MAX_DIM = 1536  # a group with at most this many inputs uses a dense SVD ...
DENSE_MAX_ENTRIES = 8 << 20  # ... if its dense matrix has at most this many entries
CHUNK_BYTES = 64 << 20  # float64 bytes of im2col columns / outputs built at once
RESIDUAL_RTOL = 1e-9  # converged when ||A^T A v - s^2 v|| <= this * sigma_max^2
MAX_ITERATIONS = 400  # LOBPCG iterations at most
EXTRA = 8  # LOBPCG block size is k + max(k, EXTRA)
SHIFT_FACTOR = 0.9  # preconditioner shift: this times the settled lambda_min estimate
SHIFT_RTOL = 1e-9  # ... minus this * sigma_max^2 (keeps the shifted operator definite)
LANCZOS_STEPS = 80  # at most this many Lanczos steps for sigma_max
LANCZOS_RTOL = 1e-6  # Lanczos residual tolerance for sigma_max (its error is ~ the square)
CIRCULAR_MAX_BYTES = 512 << 20  # skip the circular model when its blocks would exceed this
COUPLING_MAX_BYTES = 512 << 20  # batched patch sweeps keep their coupling matrices up to this
LOCAL_MAX_DIM = 2000  # a boundary patch has at most this many inputs (dense local problem)
PATCH_WANT = 16  # patches are at least this many pixels wide (and two kernel extents)
LOG: Callable[[int, np.ndarray, np.ndarray], None] | None = None  # debugging hook (iteration,
# Ritz values, residual norms)


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """One convolution (zero padding, no bias) at a fixed per-sample input shape.

    Attributes:
        weight: ``(O, C/groups, k1[, k2[, k3]])`` float weights.
        strides: one stride per spatial axis.
        dilations: one dilation per spatial axis.
        pads: ONNX order, all begins then all ends (``auto_pad`` already resolved).
        groups: number of groups (``C`` and ``O`` divisible by it).
        input_shape: ``(C, *spatial)``, one sample, no batch dimension.
    """

    weight: np.ndarray
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    groups: int
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Geometry:
    """Validated shapes of a :class:`ConvSpec`."""

    d: int  # spatial rank
    c: int
    o: int
    g: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pad_begin: tuple[int, ...]
    pad_end: tuple[int, ...]
    spatial: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def n_in(self) -> int:
        """Input dimension ``C * prod(spatial)``."""
        return self.c * math.prod(self.spatial)

    @property
    def n_out(self) -> int:
        """Output dimension ``O * prod(out)``."""
        return self.o * math.prod(self.out)

    @property
    def padded(self) -> tuple[int, ...]:
        """Spatial shape after zero padding."""
        return tuple(n + b + e for n, b, e in zip(self.spatial, self.pad_begin, self.pad_end,
                                                  strict=True))

    def embed_slices(self) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """``(into padded, from input)`` slices that place the input in the padded array; a
        negative pad (internal local problems only) crops input elements no window reads."""
        dst: list[slice] = []
        src: list[slice] = []
        for n, b, size in zip(self.spatial, self.pad_begin, self.padded, strict=True):
            lo, hi = max(b, 0), min(b + n, size)
            dst.append(slice(lo, max(hi, lo)))
            src.append(slice(lo - b, max(hi, lo) - b))
        return tuple(dst), tuple(src)

    @functools.cached_property
    def taps(self) -> list[tuple[slice, ...]]:
        """``tap_slices`` of every kernel tap, in ``np.ndindex`` order."""
        return [self.tap_slices(tap) for tap in np.ndindex(*self.kernel)]

    def tap_slices(self, tap: tuple[int, ...]) -> tuple[slice, ...]:
        """Slices of the padded input read by kernel tap ``tap`` at every output position."""
        return tuple(
            slice(t * dl, t * dl + s * (m - 1) + 1, s)
            for t, dl, s, m in zip(tap, self.dilations, self.strides, self.out, strict=True)
        )


def _geometry(spec: ConvSpec) -> _Geometry:
    """Check ``spec`` and return its shapes; raises :class:`UsageError` on a mismatch."""
    w = np.asarray(spec.weight)
    d = w.ndim - 2
    if d not in (1, 2, 3):
        raise UsageError(f"conv weight must have 3 to 5 dimensions, got shape {w.shape}")
    g = int(spec.groups)
    o, cg, *kernel = (int(v) for v in w.shape)
    if len(spec.input_shape) != d + 1:
        raise UsageError(f"input shape {spec.input_shape} does not fit a {d}-D conv weight "
                         f"of shape {w.shape}", hint="give (C, *spatial) without the batch axis")
    c = int(spec.input_shape[0])
    spatial = tuple(int(v) for v in spec.input_shape[1:])
    if g < 1 or c != cg * g or o % g:
        raise UsageError(f"groups={g} does not fit weight {w.shape} and {c} input channels")
    strides, dilations, pads = tuple(spec.strides), tuple(spec.dilations), tuple(spec.pads)
    if len(strides) != d or len(dilations) != d or len(pads) != 2 * d:
        raise UsageError(f"strides {strides}, dilations {dilations}, pads {pads} do not fit "
                         f"a {d}-D conv")
    if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0 or min(spatial) < 1:
        raise UsageError(f"strides {strides} and dilations {dilations} must be positive, "
                         f"pads {pads} non-negative, spatial size {spatial} positive")
    out = tuple(
        (n + pads[i] + pads[i + d] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i, n in enumerate(spatial)
    )
    if min(out) < 1:
        raise UsageError(f"the conv kernel {tuple(kernel)} does not fit the padded input "
                         f"{spatial} (output size {out})")
    # A stride past the last window's start changes nothing (one window on that axis): keep it
    # no larger, so that the polyphase grid (stride^D phases) stays the input's size.
    strides = tuple(min(int(st), n + pads[i] + pads[i + d] - dilations[i] * (kernel[i] - 1))
                    for i, (st, n) in enumerate(zip(strides, spatial, strict=True)))
    return _Geometry(d, c, o, g, tuple(kernel), tuple(int(v) for v in strides),
                     tuple(int(v) for v in dilations), tuple(int(v) for v in pads[:d]),
                     tuple(int(v) for v in pads[d:]), spatial, out)


def _operator_geometry(spec: ConvSpec) -> _Geometry:
    """``_geometry`` for an entry point that applies the operator: also refuses one whose
    application to one vector would not fit the memory limit, before anything is allocated
    (its float64 output ``(O, *out)``, zero-padded input ``(C, *padded)`` and im2col columns
    ``(C, prod(kernel), *out)`` are each allocated for a single vector; huge pads or a huge
    input make them that large).

    Raises:
        UsageError: as ``_geometry``.
        ResourceLimitError: one of those arrays is over the limit in force.
    """
    geo = _geometry(spec)
    padded = tuple(n + geo.pad_begin[i] + geo.pad_end[i] for i, n in enumerate(geo.spatial))
    try:
        check_allocation(8 * _largest_image(geo, padded, geo.out),
                         f"applying the conv operator to one vector (output {geo.o} x "
                         f"{'x'.join(map(str, geo.out))}, padded input {geo.c} x "
                         f"{'x'.join(map(str, padded))}, kernel "
                         f"{'x'.join(map(str, geo.kernel))}, in float64)")
    except ResourceLimitError as exc:
        # The input's size is to blame where its arrays would be too large without the pads.
        unpadded = tuple(max(1, (n - dl * (k - 1) - 1) // st + 1) for n, dl, k, st in
                         zip(geo.spatial, geo.dilations, geo.kernel, geo.strides, strict=True))
        exc.input_sized = 8 * _largest_image(geo, geo.spatial, unpadded) > current_limit().bytes
        raise
    return geo


def _largest_image(geo: _Geometry, padded: tuple[int, ...], out: tuple[int, ...]) -> int:
    """Elements of the largest array that applying the operator to one vector allocates:
    the output ``(O, *out)``, the padded input ``(C, *padded)`` or the im2col columns
    ``(C, prod(kernel), *out)``."""
    size = math.prod(out)
    return max(geo.o * size, geo.c * math.prod(padded), geo.c * math.prod(geo.kernel) * size)


def output_shape(spec: ConvSpec) -> tuple[int, ...]:
    """Return ``(O, *out_spatial)`` of ``spec``."""
    geo = _geometry(spec)
    return (geo.o, *geo.out)


def _chunk(geo: _Geometry, m: int) -> int:
    """How many vectors to push through im2col at once so the columns stay near CHUNK_BYTES."""
    per = geo.c * math.prod(geo.kernel) * math.prod(geo.out) * 8
    return max(1, min(m, CHUNK_BYTES // max(per, 1)))


def _forward_batch(geo: _Geometry, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the conv to a batch: ``x (m, C, *spatial) -> (m, O, *out)``, float64."""
    m = x.shape[0]
    kk, p = math.prod(geo.kernel), math.prod(geo.out)
    wg = w.reshape(geo.g, geo.o // geo.g, (geo.c // geo.g) * kk)
    y = np.empty((m, geo.o, *geo.out))
    dst, src = geo.embed_slices()
    step = _chunk(geo, m)
    for lo in range(0, m, step):
        hi = min(m, lo + step)
        xp = np.zeros((geo.c, hi - lo, *geo.padded))
        xp[(slice(None), slice(None), *dst)] = np.swapaxes(x[(slice(lo, hi), slice(None),
                                                                *src)], 0, 1)
        cols = np.empty((geo.c, kk, hi - lo, *geo.out))
        for i, where in enumerate(geo.taps):
            cols[:, i] = xp[(slice(None), slice(None), *where)]
        cols2 = cols.reshape(geo.g, (geo.c // geo.g) * kk, (hi - lo) * p)
        out = np.matmul(wg, cols2)  # (g, O/g, m p)
        y[lo:hi] = np.swapaxes(out.reshape(geo.o, hi - lo, *geo.out), 0, 1)
    return y


def _adjoint_batch(geo: _Geometry, w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Apply the exact adjoint to a batch: ``y (m, O, *out) -> (m, C, *spatial)``, float64."""
    m = y.shape[0]
    kk, p = math.prod(geo.kernel), math.prod(geo.out)
    wgt = np.swapaxes(w.reshape(geo.g, geo.o // geo.g, (geo.c // geo.g) * kk), 1, 2)
    x = np.zeros((m, geo.c, *geo.spatial))
    dst, src = geo.embed_slices()
    step = _chunk(geo, m)
    for lo in range(0, m, step):
        hi = min(m, lo + step)
        yt = np.ascontiguousarray(np.swapaxes(y[lo:hi], 0, 1)).reshape(
            geo.g, geo.o // geo.g, (hi - lo) * p)
        cols = np.matmul(wgt, yt).reshape(geo.c, kk, hi - lo, *geo.out)
        xp = np.zeros((geo.c, hi - lo, *geo.padded))
        for i, where in enumerate(geo.taps):
            xp[(slice(None), slice(None), *where)] += cols[:, i]
        x[(slice(lo, hi), slice(None), *src)] = np.swapaxes(xp[(slice(None), slice(None), *dst)],
                                                            0, 1)
    return x


def _weight64(spec: ConvSpec) -> np.ndarray:
    """The weight as a C-contiguous float64 array."""
    return np.ascontiguousarray(np.asarray(spec.weight, dtype=np.float64))


def conv_forward(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """Apply the conv (zero padding, no bias) in float64.

    Args:
        spec: the convolution.
        x: ``(C, *spatial)`` input, ``spatial`` as in ``spec.input_shape``.

    Returns:
        ``(O, *out_spatial)`` output.
    """
    geo = _operator_geometry(spec)
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (geo.c, *geo.spatial):
        raise UsageError(f"input of shape {x.shape} does not fit conv input {spec.input_shape}")
    return _forward_batch(geo, _weight64(spec), x[None])[0]


def conv_adjoint(spec: ConvSpec, y: np.ndarray) -> np.ndarray:
    """Apply the exact adjoint (transpose) of :func:`conv_forward` in float64.

    Args:
        spec: the convolution.
        y: ``(O, *out_spatial)`` output-space array.

    Returns:
        ``(C, *spatial)`` input-space array.
    """
    geo = _operator_geometry(spec)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (geo.o, *geo.out):
        raise UsageError(f"array of shape {y.shape} does not fit conv output {(geo.o, *geo.out)}")
    return _adjoint_batch(geo, _weight64(spec), y[None])[0]


def conv_matrix(spec: ConvSpec) -> scipy.sparse.csr_matrix:
    """The conv as a sparse ``(n_out, n_in)`` matrix (rows ``(O, *out)``, columns ``(C, *spatial)``
    in C order); for tests and moderate sizes (``n_out * C/g * prod(k)`` stored entries)."""
    geo = _operator_geometry(spec)
    w = _weight64(spec)
    og, cg = geo.o // geo.g, geo.c // geo.g
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    grids = np.meshgrid(*(np.arange(m) for m in geo.out), indexing="ij")
    out_flat = np.ravel_multi_index(tuple(grids), geo.out).ravel()
    for tap in np.ndindex(*geo.kernel):
        pos = [st * gj + t * dl - pb for st, gj, t, dl, pb in
               zip(geo.strides, grids, tap, geo.dilations, geo.pad_begin, strict=True)]
        ok = np.logical_and.reduce([(u >= 0) & (u < n) for u, n in zip(pos, geo.spatial,
                                                                       strict=True)])
        j_ok = out_flat[ok.ravel()]
        u_ok = np.ravel_multi_index(tuple(u[ok] for u in pos), geo.spatial)
        for gi in range(geo.g):
            o_idx = np.arange(gi * og, (gi + 1) * og)
            c_idx = np.arange(gi * cg, (gi + 1) * cg)
            r = (o_idx[:, None, None] * math.prod(geo.out) + j_ok[None, None, :])
            c = (c_idx[None, :, None] * math.prod(geo.spatial) + u_ok[None, None, :])
            v = w[(slice(gi * og, (gi + 1) * og), slice(None), *tap)][:, :, None]
            shape = (og, cg, j_ok.size)
            rows.append(np.broadcast_to(r, shape).ravel())
            cols.append(np.broadcast_to(c, shape).ravel())
            vals.append(np.broadcast_to(v, shape).ravel())
    mat = scipy.sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(geo.n_out, geo.n_in))
    return mat.tocsr()


def _local_geometry(geo: _Geometry, start: tuple[int, ...],
                    size: tuple[int, ...]) -> _Geometry | None:
    """The conv restricted to inputs in the box ``[start, start + size)``: a small conv whose
    outputs are exactly the windows of ``geo`` that overlap the box (so the Rayleigh quotient of
    a box-supported vector is the same in both). Pads may come out negative. ``None`` when no
    window overlaps the box."""
    pb_l: list[int] = []
    pe_l: list[int] = []
    out_l: list[int] = []
    for a, p, st, dl, k, pb, m in zip(start, size, geo.strides, geo.dilations, geo.kernel,
                                      geo.pad_begin, geo.out, strict=True):
        ext = dl * (k - 1) + 1
        j_lo = max(0, -((ext - 1 - a - pb) // st))  # ceil((a - ext + 1 + pb) / st)
        j_hi = min(m - 1, (a + p - 1 + pb) // st)
        if j_lo > j_hi:
            return None
        b = a + pb - st * j_lo
        pb_l.append(b)
        pe_l.append(st * (j_hi - j_lo) + ext - p - b)
        out_l.append(j_hi - j_lo + 1)
    return _Geometry(geo.d, geo.c, geo.o, geo.g, geo.kernel, geo.strides, geo.dilations,
                     tuple(pb_l), tuple(pe_l), tuple(size), tuple(out_l))


class _Circular:
    """The circular (periodic) polyphase model of a conv, block-diagonal under the DFT.

    Per spatial axis the input of size ``n`` is embedded (zeros appended) into a period
    ``N = s * ceil(n / s)``; the stride-``s`` conv becomes a stride-1 conv from ``q = (C/g) s^D``
    phase channels per group, i.e. one ``(O/g) x q`` complex matrix per group and frequency of the
    ``(N/s)^D`` grid. ``lam[g, f]`` are the eigenvalues of their Gram matrices (squared circular
    singular values, ascending), ``vec[g, f]`` the eigenvectors; frequencies are the
    ``rfftn`` half grid.
    """

    def __init__(self, geo: _Geometry, w: np.ndarray) -> None:
        self.geo = geo
        d, g = geo.d, geo.g
        s = geo.strides
        self.m = tuple(-(-n // st) for n, st in zip(geo.spatial, s, strict=True))
        self.period = tuple(mm * st for mm, st in zip(self.m, s, strict=True))
        og, cg = geo.o // g, geo.c // g
        self.q = cg * math.prod(s)
        places: list[tuple[tuple[slice | int, ...], tuple[slice | int, ...]]] = []
        for tap in np.ndindex(*geo.kernel):
            index: list[int] = []
            phase: list[int] = []
            for t, dl, st, pb, mm in zip(tap, geo.dilations, s, geo.pad_begin, self.m,
                                         strict=True):
                a, r = divmod(t * dl - pb, st)
                index.append(a % mm)
                phase.append(r)
            places.append(((slice(None), slice(None), *tap),
                           (slice(None), slice(None), *phase, *index)))
        spatial_axes = tuple(range(-d, 0))
        self.half = (*self.m[:-1], self.m[-1] // 2 + 1)
        nf = math.prod(self.half)
        gram = np.zeros((g, nf, self.q, self.q), dtype=complex)
        step = max(1, (64 << 20) // (16 * self.q * nf))  # output channels per FFT chunk
        for lo in range(0, geo.o, step):
            hi = min(geo.o, lo + step)
            grid = np.zeros((hi - lo, cg, *s, *self.m))  # the polyphase kernel, periodised
            for tap, where in places:
                grid[where] += w[tap][lo:hi]
            blocks = np.conj(np.fft.rfftn(grid, axes=spatial_axes))
            blocks = blocks.reshape(hi - lo, self.q, nf)
            for gi in range(max(0, lo // og), min(g, -(-hi // og))):
                a, b = max(lo, gi * og) - lo, min(hi, (gi + 1) * og) - lo
                part = blocks[a:b].transpose(2, 0, 1)  # (F, o, q)
                gram[gi] += np.matmul(np.conj(np.swapaxes(part, -1, -2)), part)
        self.lam, self.vec = np.linalg.eigh(gram)  # (g, F, q), (g, F, q, q)
        # multiplicity of each half-grid frequency in the full grid (conjugate pairs count twice)
        last = self.m[-1]
        mult_last = np.full(self.half[-1], 2)
        mult_last[0] = 1
        if last % 2 == 0:
            mult_last[-1] = 1
        self.mult = np.broadcast_to(mult_last, self.half).reshape(nf)

    def smallest(self, k: int) -> np.ndarray:
        """The ``k`` smallest circular singular values, with multiplicity, ascending."""
        lam = np.maximum(self.lam, 0.0)
        order = np.argsort(lam, axis=None, kind="stable")
        out: list[float] = []
        for flat in order:
            gi, f, j = np.unravel_index(flat, lam.shape)
            out.extend([math.sqrt(lam[gi, f, j])] * int(self.mult[f]))
            if len(out) >= k:
                break
        return np.asarray(out[:k])

    def largest(self) -> float:
        """The largest circular singular value."""
        return math.sqrt(max(float(self.lam.max()), 0.0))

    def _phase_split(self, x: np.ndarray) -> np.ndarray:
        """``(m, C, *period) -> (m, g, q, *self.m)``: polyphase components per group."""
        geo = self.geo
        d, nb = geo.d, x.shape[0]
        shape: list[int] = [nb, geo.g, geo.c // geo.g]
        for mm, st in zip(self.m, geo.strides, strict=True):
            shape += [mm, st]
        x = x.reshape(shape)
        perm = [0, 1, 2, *(4 + 2 * i for i in range(d)), *(3 + 2 * i for i in range(d))]
        return x.transpose(perm).reshape(nb, geo.g, self.q, *self.m)

    def _phase_merge(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`_phase_split`: ``(m, g, q, *self.m) -> (m, C, *period)``."""
        geo = self.geo
        d, nb = geo.d, x.shape[0]
        x = x.reshape(nb, geo.g, geo.c // geo.g, *geo.strides, *self.m)
        perm = [0, 1, 2]
        for i in range(d):
            perm += [3 + d + i, 3 + i]
        return x.transpose(perm).reshape(nb, geo.c, *self.period)

    def precondition(self, r: np.ndarray, shift: float) -> np.ndarray:
        """Apply ``E^T (A_c^T A_c - shift I)^{-1} E`` to ``r (m, C, *spatial)``; needs
        ``shift < min(lam)``. ``E`` embeds the input into the period."""
        geo = self.geo
        d, nb = geo.d, r.shape[0]
        x = np.zeros((nb, geo.c, *self.period))
        x[(slice(None), slice(None), *(slice(0, n) for n in geo.spatial))] = r
        spec = np.fft.rfftn(self._phase_split(x), axes=tuple(range(-d, 0)))
        nf = math.prod(self.half)
        spec = spec.reshape(nb, geo.g, self.q, nf).transpose(1, 3, 2, 0)  # (g, F, q, m)
        coef = np.matmul(np.conj(np.swapaxes(self.vec, -1, -2)), spec)
        coef /= (self.lam - shift)[..., None]
        spec = np.matmul(self.vec, coef)
        spec = spec.transpose(3, 0, 2, 1).reshape(nb, geo.g, self.q, *self.half)
        x = np.fft.irfftn(spec, s=self.m, axes=tuple(range(-d, 0)))
        x = self._phase_merge(x)
        return x[(slice(None), slice(None), *(slice(0, n) for n in geo.spatial))]

    def modes(self, count: int, largest: bool = False) -> np.ndarray:
        """Real input-space vectors ``(<= 2 count, C, *spatial)`` from the ``count`` smallest
        (or largest) circular modes (real and imaginary parts of each plane wave), cropped to
        the real input size."""
        geo = self.geo
        d = geo.d
        order = np.argsort(self.lam, axis=None, kind="stable")
        if largest:
            order = order[::-1]
        out: list[np.ndarray] = []
        for flat in order[:count]:
            gi, f, j = (int(v) for v in np.unravel_index(flat, self.lam.shape))
            fidx = np.unravel_index(f, self.half)
            wave = np.ones((1,) * d, dtype=complex)
            for ax, (fi, mm) in enumerate(zip(fidx, self.m, strict=True)):
                shape = [1] * d
                shape[ax] = mm
                wave = wave * np.exp(2j * np.pi * fi * np.arange(mm) / mm).reshape(shape)
            z = self.vec[gi, f, :, j]
            field = np.zeros((1, geo.g, self.q, *self.m), dtype=complex)
            field[0, gi] = z.reshape((self.q,) + (1,) * d) * wave
            for part in (field.real, field.imag):
                x = self._phase_merge(np.ascontiguousarray(part))[0]
                x = x[(slice(None), *(slice(0, n) for n in geo.spatial))]
                if np.linalg.norm(x) > 1e-6 * np.linalg.norm(field):
                    out.append(x)
        if not out:
            return np.zeros((0, geo.c, *geo.spatial))
        return np.stack(out)


def _phase_split(x: np.ndarray, strides: tuple[int, ...], m: tuple[int, ...]) -> np.ndarray:
    """``(mb, C, *(m * s)) -> (mb, C * prod(s), *m)``: polyphase components, channel-major."""
    d, mb, c = len(m), x.shape[0], x.shape[1]
    shape: list[int] = [mb, c]
    for mm, st in zip(m, strides, strict=True):
        shape += [mm, st]
    perm = [0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d))]
    return x.reshape(shape).transpose(perm).reshape(mb, c * math.prod(strides), *m)


def _phase_merge(x: np.ndarray, c: int, strides: tuple[int, ...], m: tuple[int, ...]
                 ) -> np.ndarray:
    """Inverse of :func:`_phase_split`: ``(mb, C * prod(s), *m) -> (mb, C, *(m * s))``."""
    d, mb = len(m), x.shape[0]
    perm = [0, 1]
    for i in range(d):
        perm += [2 + d + i, 2 + i]
    x = x.reshape(mb, c, *strides, *m).transpose(perm)
    return x.reshape(mb, c, *(mm * st for mm, st in zip(m, strides, strict=True)))


def _frame_slabs(geo: _Geometry, full: list[tuple[int, int]]
                 ) -> list[tuple[_Geometry, tuple[slice, ...]]]:
    """The windows in the box ``full`` (per axis ``[lo, hi)``, window indices) that are not
    outputs of ``geo``, as disjoint slabs: per slab a conv geometry (its windows, read from the
    input box it touches) and that box's slices. Slab ``i`` is outside the output range on axis
    ``i``, inside it on the axes before and anywhere in ``full`` on those after."""
    inner = [(max(lo, 0), min(hi, m)) for (lo, hi), m in zip(full, geo.out, strict=True)]
    if any(lo >= hi for lo, hi in inner):  # no output window touches the input
        boxes = [list(full)]
    else:
        boxes = []
        for i in range(geo.d):
            for side in ((full[i][0], inner[i][0]), (inner[i][1], full[i][1])):
                if side[0] < side[1]:
                    boxes.append([*inner[:i], side, *full[i + 1:]])
    slabs = []
    for box in boxes:
        lo_in, hi_in, pb, pe = [], [], [], []
        for (j0, j1), st, dl, k, p, n in zip(box, geo.strides, geo.dilations, geo.kernel,
                                            geo.pad_begin, geo.spatial, strict=True):
            u0, u1 = st * j0 - p, st * (j1 - 1) + dl * (k - 1) - p + 1
            lo_in.append(max(0, u0))
            hi_in.append(min(n, u1))
            pb.append(lo_in[-1] - u0)
            pe.append(u1 - hi_in[-1])
        if any(lo >= hi for lo, hi in zip(lo_in, hi_in, strict=True)):
            continue
        slab = _Geometry(geo.d, geo.c, geo.o, 1, geo.kernel, geo.strides, geo.dilations,
                         tuple(pb), tuple(pe), tuple(h - lo for lo, h in
                                                     zip(lo_in, hi_in, strict=True)),
                         tuple(j1 - j0 for j0, j1 in box))
        slabs.append((slab, tuple(slice(lo, h) for lo, h in zip(lo_in, hi_in, strict=True))))
    return slabs


class _Gram:
    """``A^T A`` of one group's conv (``g == 1``), exact up to float64 rounding, by FFT.

    ``A_full``, every window that reads the input (``A``'s outputs and those the output box
    leaves out), is a stride-1 conv from the ``q = C s^D`` polyphase channels (grid
    ``m = ceil(n / s)`` per axis, polyphase kernel offsets ``e_min..e_max``), so
    ``A_full^T A_full`` is one ``q x q`` Hermitian matrix per frequency of a grid of
    ``N >= m + e_max - e_min`` points per axis (a linear convolution: nothing wraps around).
    The left-out windows ``B`` (a frame of slabs a few windows wide around the output box) are
    subtracted by im2col: ``A^T A = A_full^T A_full - B^T B``. One application costs ``2 q``
    FFTs per vector instead of im2col over all ``O`` output channels.
    """

    def __init__(self, geo: _Geometry, w: np.ndarray) -> None:
        self.geo, self.w = geo, w
        s = geo.strides
        self.m = tuple(-(-n // st) for n, st in zip(geo.spatial, s, strict=True))
        e_min = [(-pb) // st for pb, st in zip(geo.pad_begin, s, strict=True)]
        e_max = [(dl * (k - 1) - pb) // st for k, dl, pb, st in
                 zip(geo.kernel, geo.dilations, geo.pad_begin, s, strict=True)]
        self.n_fft = tuple(scipy.fft.next_fast_len(mm + hi - lo, real=True)
                           for mm, lo, hi in zip(self.m, e_min, e_max, strict=True))
        self.q = geo.c * math.prod(s)
        self.half = (*self.n_fft[:-1], self.n_fft[-1] // 2 + 1)
        self.gram = self._blocks(e_min)
        # windows that read a real input element: u = s j + dl t - pb in [0, n) for some t
        full = [(max(-hi, -((dl * (k - 1) - pb) // st)), min(mm - lo, (n - 1 + pb) // st + 1))
                for lo, hi, mm, k, dl, pb, st, n in
                zip(e_min, e_max, self.m, geo.kernel, geo.dilations, geo.pad_begin, s,
                    geo.spatial, strict=True)]
        self.slabs = _frame_slabs(geo, full)

    def _blocks(self, e_min: list[int]) -> np.ndarray:
        """``(F, q, q)`` Gram matrices ``H(f)^H H(f)`` of the polyphase kernel per frequency
        of the half grid (``F = prod(half)``)."""
        geo, s = self.geo, self.geo.strides
        nf = math.prod(self.half)
        axes = tuple(range(-geo.d, 0))
        try:  # the frequencies grow with the input's size
            check_allocation(nf * self.q * self.q * 16, "the conv operator's Gram matrices "
                             f"per frequency ({nf} of {self.q} x {self.q})")
        except ResourceLimitError as exc:
            exc.input_sized = True
            raise
        gram = np.zeros((nf, self.q, self.q), dtype=complex)
        step = max(1, (64 << 20) // (16 * self.q * nf))  # output channels per FFT chunk
        for lo in range(0, geo.o, step):
            hi = min(geo.o, lo + step)
            grid = np.zeros((hi - lo, geo.c, *s, *self.n_fft))  # polyphase kernel, e mod N
            for tap in np.ndindex(*geo.kernel):
                place = [divmod(t * dl - pb, st) for t, dl, pb, st in
                         zip(tap, geo.dilations, geo.pad_begin, s, strict=True)]
                where = (*(r for _, r in place), *(e % nn for (e, _), nn in
                                                   zip(place, self.n_fft, strict=True)))
                grid[(slice(None), slice(None), *where)] += self.w[(slice(lo, hi), slice(None),
                                                                   *tap)]
            fk = scipy.fft.rfftn(grid, axes=axes).reshape(hi - lo, self.q, nf).transpose(2, 0, 1)
            gram += np.matmul(np.swapaxes(fk, 1, 2), np.conj(fk))  # sum_o F[o,a] conj(F[o,b])
        return gram

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``A^T A`` on rows: ``(mb, n_in) -> (mb, n_in)``."""
        geo = self.geo
        mb, axes = x.shape[0], tuple(range(-geo.d, 0))
        xs = x.reshape(mb, geo.c, *geo.spatial)
        period = tuple(mm * st for mm, st in zip(self.m, geo.strides, strict=True))
        inside = (slice(None), slice(None), *(slice(0, n) for n in geo.spatial))
        xp = np.zeros((mb, geo.c, *period))
        xp[inside] = xs
        spec = scipy.fft.rfftn(_phase_split(xp, geo.strides, self.m), s=self.n_fft, axes=axes)
        spec = np.matmul(self.gram, spec.reshape(mb, self.q, -1).transpose(2, 1, 0))
        spec = np.ascontiguousarray(spec.transpose(2, 1, 0)).reshape(mb, self.q, *self.half)
        z = scipy.fft.irfftn(spec, s=self.n_fft, axes=axes, overwrite_x=True)
        z = z[(slice(None), slice(None), *(slice(0, mm) for mm in self.m))]
        out = np.ascontiguousarray(_phase_merge(z, geo.c, geo.strides, self.m)[inside])
        for slab, box in self.slabs:
            where = (slice(None), slice(None), *box)
            out[where] -= _adjoint_batch(slab, self.w, _forward_batch(slab, self.w, xs[where]))
        return out.reshape(mb, -1)


def _patch_size(geo: _Geometry) -> tuple[int, ...]:
    """Patch size per axis: a stride multiple of about two kernel extents (at least 4 strides),
    shrunk until ``C * prod(size) <= LOCAL_MAX_DIM``; never above the input size."""
    size = []
    for n, st, dl, k in zip(geo.spatial, geo.strides, geo.dilations, geo.kernel, strict=True):
        want = max(2 * (dl * (k - 1) + 1), 4 * st, PATCH_WANT)
        size.append(min(n, st * -(-want // st)))
    while geo.c * math.prod(size) > LOCAL_MAX_DIM:
        i = int(np.argmax([p / st for p, st in zip(size, geo.strides, strict=True)]))
        if size[i] <= geo.strides[i]:
            size[i] = max(1, size[i] - 1)
        else:
            size[i] -= geo.strides[i]
        if math.prod(size) == 1:
            break
    return tuple(size)


def _patch_starts(n: int, p: int, st: int) -> list[int]:
    """Patch starts along one axis: every half patch (a stride multiple), the last flush."""
    step = max(st, st * ((p // 2) // st))
    starts = list(range(0, max(n - p, 0) + 1, step))
    if starts[-1] != n - p:
        starts.append(max(n - p, 0))
    return starts


@dataclass(frozen=True)
class _Patch:
    """One boundary patch: where it sits, its local problem, and the larger box its
    ``A^T A`` reaches (for residual updates)."""

    box: tuple[slice, ...]  # the patch in (m, C, *spatial) arrays
    key: tuple  # local geometry key (patches with equal keys share an eigendecomposition)
    local: _Geometry  # the conv restricted to the patch (the windows that overlap it)
    back: _Geometry  # the same windows, read from the patch grown by the kernel extent
    reach_box: tuple[slice, ...]  # that grown box in (m, C, *spatial) arrays


class _Patches:
    """Boundary patches (a frame of overlapping boxes along the image border) with the dense
    eigendecomposition of the conv restricted to each (cached per local geometry: all patches
    that see the same windows share one)."""

    def __init__(self, geo: _Geometry, w: np.ndarray) -> None:
        self.geo = geo
        self.w = w
        self.size = _patch_size(geo)
        starts = [_patch_starts(n, p, st) for n, p, st in
                  zip(geo.spatial, self.size, geo.strides, strict=True)]
        self.patches: list[_Patch] = []
        self.cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        reach = [dl * (k - 1) for dl, k in zip(geo.dilations, geo.kernel, strict=True)]
        every = slice(None)
        for start in np.ndindex(*(len(s) for s in starts)):
            a = tuple(starts[i][j] for i, j in enumerate(start))
            if not any(j in (0, len(starts[i]) - 1) for i, j in enumerate(start)):
                continue  # interior: the circulant model covers it
            local = _local_geometry(geo, a, self.size)
            if local is None:
                continue
            key = (local.pad_begin, local.pad_end, local.out)
            lo = [max(0, s - r) for s, r in zip(a, reach, strict=True)]
            hi = [min(n, s + p + r) for s, p, r, n in
                  zip(a, self.size, reach, geo.spatial, strict=True)]
            pb = [b - (s - g) for b, s, g in zip(local.pad_begin, a, lo, strict=True)]
            pe = [st * (o - 1) + dl * (k - 1) + 1 - (h - g) - b for st, o, dl, k, h, g, b in
                  zip(geo.strides, local.out, geo.dilations, geo.kernel, hi, lo, pb,
                      strict=True)]
            back = _Geometry(geo.d, geo.c, geo.o, geo.g, geo.kernel, geo.strides,
                             geo.dilations, tuple(pb), tuple(pe),
                             tuple(h - g for h, g in zip(hi, lo, strict=True)), local.out)
            self.patches.append(_Patch(
                box=(every, every, *(slice(s, s + p) for s, p in zip(a, self.size,
                                                                     strict=True))),
                key=key, local=local, back=back,
                reach_box=(every, every, *(slice(b, h) for b, h in zip(lo, hi, strict=True)))))
        self.free = _free_gram(geo, w)
        self.coupled = self._prepare()

    def seeds(self, count: int) -> np.ndarray:
        """The lowest local modes over all boundary patches, placed in the image, lowest local
        eigenvalue first (equal to their global Rayleigh quotient): ``(count, C, *spatial)``."""
        geo = self.geo
        cand = sorted((float(self.cache[p.key][0][j]), i, j) for i, p in enumerate(self.patches)
                      for j in range(min(count, self.cache[p.key][0].size)))
        out = np.zeros((min(count, len(cand)), geo.c, *geo.spatial))
        for row, (_, i, j) in enumerate(cand[:count]):
            patch = self.patches[i]
            out[(slice(row, row + 1), *patch.box[1:])] = \
                self.cache[patch.key][1][:, j].reshape(1, geo.c, *self.size)
        return out

    def lowest(self) -> float:
        """The smallest local eigenvalue (an upper bound of ``lambda_min(A^T A)``)."""
        return min(float(lam[0]) for lam, _ in self.cache.values())

    def _prepare(self) -> bool:
        """Per local problem the eigendecomposition of ``A^T A`` on the patch; for the batched
        sweep also ``[V^T | V^T K_ring]`` (``K_ring``: ``A^T A`` from the patch to the ring of
        inputs around it that its windows reach) and the colouring of the patches (one colour
        never couples through ``A^T A``). Returns False, and keeps no coupling, when those
        matrices would exceed COUPLING_MAX_BYTES (then the sweep runs patch by patch)."""
        geo = self.geo
        flat = np.arange(geo.n_in).reshape(geo.c, *geo.spatial)
        keys = [(p.key, p.back.pad_begin, p.back.pad_end, p.back.spatial) for p in self.patches]
        first = {k: p for k, p in zip(keys, self.patches, strict=True)}
        coupled = 8 * sum(p.local.n_in * (p.local.n_in + p.back.n_in)
                          for p in first.values()) <= COUPLING_MAX_BYTES
        self.right: dict[tuple, np.ndarray] = {}
        self.where: list[tuple[tuple, np.ndarray, np.ndarray]] = []  # (key, box idx, ring idx)
        for key, patch in zip(keys, self.patches, strict=True):
            ring = self._ring(patch)
            if key not in self.right:
                k_mat = self._reach_gram(patch)  # (n_box, n_reach)
                if patch.key not in self.cache:
                    local = k_mat[:, ~ring]
                    self.cache[patch.key] = np.linalg.eigh((local + local.T) / 2)
                vec = self.cache[patch.key][1]
                self.right[key] = np.hstack([vec.T, vec.T @ k_mat[:, ring]]) if coupled \
                    else np.zeros((0, 0))
            self.where.append((key, flat[patch.box[1:]].ravel(),
                               flat[patch.reach_box[1:]].ravel()[ring]))
        if not coupled:
            self.right.clear()
            self.where.clear()
        self.colours = _colour([p.box[2:] for p in self.patches],
                               [p.reach_box[2:] for p in self.patches])
        return coupled

    def _ring(self, patch: _Patch) -> np.ndarray:
        """Boolean mask over the reach box ``(C * prod(reach))``: True outside the patch."""
        inner = np.zeros(patch.back.spatial, dtype=bool)
        inner[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in
                    zip(patch.box[2:], patch.reach_box[2:], strict=True))] = True
        return ~np.broadcast_to(inner, (self.geo.c, *inner.shape)).ravel()

    def _reach_gram(self, patch: _Patch) -> np.ndarray:
        """``(A^T A)[patch, reach box]`` as a dense ``(C * prod(size), C * prod(reach))`` matrix:
        gathered from the translation-invariant Gram of all windows (:func:`_free_gram`), less
        the windows that touch the patch but are not outputs of the conv."""
        geo = self.geo
        d, c = geo.d, geo.c
        ext = [dl * (k - 1) for dl, k in zip(geo.dilations, geo.kernel, strict=True)]
        index: list[np.ndarray] = [np.arange(c).reshape((c,) + (1,) * (2 * d + 1))]
        valid = np.ones((1,) * (2 * d + 2), dtype=bool)
        deltas = []
        for ax, (b, r, e, st, pb) in enumerate(zip(patch.box[2:], patch.reach_box[2:], ext,
                                                    geo.strides, geo.pad_begin, strict=True)):
            u = np.arange(b.start, b.stop)
            v = np.arange(r.start, r.stop)
            shape = [1] * (2 * d + 2)
            shape[1 + ax] = u.size
            index.append(((u + pb) % st).reshape(shape))
            shape[2 + d + ax] = v.size
            delta = (v[None, :] - u[:, None] + e).reshape(shape)
            valid = valid & (delta >= 0) & (delta <= 2 * e)
            deltas.append(np.clip(delta, 0, 2 * e))
        index.append(np.arange(c).reshape((1,) * (d + 1) + (c,) + (1,) * d))
        k_mat = np.where(valid, self.free[tuple(index + deltas)], 0.0)
        self._subtract_missing(k_mat, patch)
        n_box = c * math.prod(b.stop - b.start for b in patch.box[2:])
        return k_mat.reshape(n_box, -1)

    def _subtract_missing(self, k_mat: np.ndarray, patch: _Patch) -> None:
        """Subtract from ``k_mat (C, *box, C, *reach)`` the terms ``W_j^T W_j`` of the windows
        ``j`` that touch the patch but are not outputs of the conv (beyond the output box)."""
        geo = self.geo
        ext = [dl * (k - 1) for dl, k in zip(geo.dilations, geo.kernel, strict=True)]
        ranges = [range(-((e - b.start - pb) // st), (b.stop - 1 + pb) // st + 1)
                  for b, e, st, pb in zip(patch.box[2:], ext, geo.strides, geo.pad_begin,
                                          strict=True)]
        flat_w = self.w.reshape(geo.o, -1)
        wmat = (flat_w.T @ flat_w).reshape(geo.c, *geo.kernel, geo.c, *geo.kernel)
        for j in itertools.product(*ranges):
            if all(0 <= jj < m for jj, m in zip(j, geo.out, strict=True)):
                continue
            taps_b, taps_r, at_b, at_r = [], [], [], []
            for jj, b, r, st, dl, k, pb in zip(j, patch.box[2:], patch.reach_box[2:],
                                               geo.strides, geo.dilations, geo.kernel,
                                               geo.pad_begin, strict=True):
                base = st * jj - pb
                tb, ub = _taps_in(base, dl, k, b)
                tr, ur = _taps_in(base, dl, k, r)
                taps_b.append(tb)
                taps_r.append(tr)
                at_b.append(ub)
                at_r.append(ur)
            every = slice(None)
            k_mat[(every, *at_b, every, *at_r)] -= wmat[(every, *taps_b, every, *taps_r)]

    def sweep(self, r: np.ndarray, shift: float, backward: bool) -> tuple[np.ndarray,
                                                                           np.ndarray]:
        """One multiplicative Schwarz sweep over the patches for ``(A^T A - shift) x = r``:
        solve each patch exactly against the running residual, colour by colour (patches of
        one colour do not couple, so each colour is one batched solve: the same result as
        patch by patch), in order (or reversed).

        Args:
            r: ``(m, C, *spatial)`` right-hand sides.
            shift: below every local eigenvalue.
            backward: sweep in reverse order (the adjoint sweep).

        Returns:
            ``(x, r - (A^T A - shift) x)``.
        """
        if not self.coupled:
            return self._sweep_im2col(r, shift, backward)
        m = r.shape[0]
        rr = r.reshape(m, -1).copy()
        x = np.zeros_like(rr)
        for colour in (reversed(self.colours) if backward else self.colours):
            groups: dict[tuple, list[int]] = {}
            for i in colour:
                groups.setdefault(self.where[i][0], []).append(i)
            for key, members in groups.items():
                lam, _ = self.cache[key[0]]
                nl = lam.size
                blk = np.concatenate([rr[:, self.where[i][1]] for i in members])
                coef = (blk @ self.cache[key[0]][1]) / (lam - shift)
                out = (coef @ self.right[key]).reshape(len(members), m, -1)
                for i, o in zip(members, out, strict=True):
                    _, box, ring = self.where[i]
                    x[:, box] += o[:, :nl]
                    rr[:, box] = 0.0  # the local solve is exact on the patch
                    rr[:, ring] -= o[:, nl:]
        return x.reshape(r.shape), rr.reshape(r.shape)

    def _sweep_im2col(self, r: np.ndarray, shift: float, backward: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sweep` patch by patch, the residual updated by im2col (no stored matrices).

        Args:
            r: ``(m, C, *spatial)`` right-hand sides.
            shift: below every local eigenvalue.
            backward: sweep in reverse order (the adjoint sweep).

        Returns:
            ``(x, r - (A^T A - shift) x)``.
        """
        x = np.zeros_like(r)
        rr = r.copy()
        m = r.shape[0]
        order = reversed(self.patches) if backward else iter(self.patches)
        for patch in order:
            lam, vec = self.cache[patch.key]
            blk = rr[patch.box].reshape(m, -1)
            d = (((blk @ vec) / (lam - shift)) @ vec.T).reshape(m, *rr[patch.box].shape[1:])
            x[patch.box] += d
            rr[patch.reach_box] -= _adjoint_batch(patch.back, self.w,
                                                  _forward_batch(patch.local, self.w, d))
            rr[patch.box] += shift * d
        return x, rr


def _taps_in(base: int, dl: int, k: int, box: slice) -> tuple[slice, slice]:
    """Of the taps ``t`` of a window reading ``base + dl * t``, those inside ``box``: their
    slice, and the slice of their positions relative to ``box.start``."""
    lo = max(0, -((base - box.start) // dl))  # ceil((box.start - base) / dl)
    hi = min(k, (box.stop - 1 - base) // dl + 1)
    hi = max(hi, lo)
    start = base + dl * lo - box.start
    return slice(lo, hi), slice(start, start + dl * (hi - lo) if hi > lo else start, dl)


def _free_gram(geo: _Geometry, w: np.ndarray) -> np.ndarray:
    """The Gram of all windows (no output box), translation invariant by strides:
    ``T[c, *rho, c', *delta]`` = ``(A_full^T A_full)[(c, u), (c', u + delta - E)]`` for an input
    ``u`` with ``(u + pad_begin) % s == rho`` (``E = dl (k - 1)``, ``delta`` in ``[0, 2E]``).
    Computed once by im2col on a small free-space conv, one unit input per ``(c, rho)``."""
    ext = [dl * (k - 1) for dl, k in zip(geo.dilations, geo.kernel, strict=True)]
    n0 = tuple(2 * e + st for e, st in zip(ext, geo.strides, strict=True))
    pe0 = tuple(e + st for e, st in zip(ext, geo.strides, strict=True))
    out0 = tuple((n + 2 * e + st - e - 1) // st + 1
                 for n, e, st in zip(n0, ext, geo.strides, strict=True))
    free = _Geometry(geo.d, geo.c, geo.o, 1, geo.kernel, geo.strides, geo.dilations,
                     tuple(ext), pe0, n0, out0)
    phases = list(np.ndindex(geo.c, *geo.strides))
    units = np.zeros((len(phases), geo.c, *n0))
    spots = []
    for row, (c, *rho) in enumerate(phases):
        u0 = tuple(e + (r - 2 * e) % st for e, r, st in zip(ext, rho, geo.strides,
                                                             strict=True))
        units[(row, c, *u0)] = 1.0
        spots.append(u0)
    cols = _adjoint_batch(free, w, _forward_batch(free, w, units))
    table = np.empty((geo.c, *geo.strides, geo.c, *(2 * e + 1 for e in ext)))
    for row, ((c, *rho), u0) in enumerate(zip(phases, spots, strict=True)):
        window: tuple[int | slice, ...] = (row, slice(None), *(
            slice(u - e, u + e + 1) for u, e in zip(u0, ext, strict=True)))
        table[(c, *rho)] = cols[window]
    return table


def _colour(boxes: list[tuple[slice, ...]], reach: list[tuple[slice, ...]]) -> list[list[int]]:
    """Greedy colouring of patches (in order): two patches share a colour only if neither's
    reach box meets the other's box (then ``A^T A`` does not couple them)."""
    def meet(a: tuple[slice, ...], b: tuple[slice, ...]) -> bool:
        return all(u.start < v.stop and v.start < u.stop for u, v in zip(a, b, strict=True))

    colours: list[list[int]] = []
    for i, box in enumerate(boxes):
        for colour in colours:
            if not any(meet(reach[i], boxes[j]) or meet(reach[j], box) for j in colour):
                colour.append(i)
                break
        else:
            colours.append([i])
    return colours


# ---------------------------------------------------------------------------------------------
# the eigensolver


def _orthonormal(w: np.ndarray, drop: float = 1e-10) -> np.ndarray:
    """Orthonormal rows spanning the rows of ``w (m, n)``; nearly dependent rows are dropped
    (eigenvalues of the Gram of the normalised rows below ``drop``). SVQB twice (BLAS-3)."""
    if w.shape[0] == 0:
        return w
    norms = np.linalg.norm(w, axis=1)
    w = w[norms > 0] / norms[norms > 0, None]
    for i in range(2):
        if w.shape[0] == 0:
            break
        gram = w @ w.T
        lam, vec = np.linalg.eigh((gram + gram.T) / 2)
        good = lam > (drop * lam[-1] if i == 0 else 0.5)
        w = (vec[:, good] / np.sqrt(lam[good])).T @ w
    return w


def _lobpcg(
    op: Callable[[np.ndarray], np.ndarray],
    prec: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    start: tuple[np.ndarray, np.ndarray],
    k: int,
    tol: float,
    maxiter: int,
    deadline: float,
    log: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Block LOBPCG for the smallest eigenpairs of the SPD operator ``op`` (rows are vectors:
    ``(m, n) -> (m, n)``).

    ``start = (X0, op(X0))`` with orthonormal rows. ``prec(R, theta, res)`` maps the residual
    rows ``R`` of the unconverged columns to search directions, given all Ritz values and
    residual norms. Basis ``[X; W; P]`` with a Rayleigh-Ritz step each iteration; ``P`` is
    formed in coefficient space, orthogonal to the new ``X`` (Hetmaniuk-Lehoucq), so ``op`` runs
    once per iteration, on the preconditioned residuals. Stops when the first ``k`` residual
    norms are ``<= tol``, after ``maxiter`` iterations or at ``deadline``.

    Returns:
        ``(theta (m,), X (m, n), iterations, why)``, ``why`` in ``converged``, ``iterations``,
        ``time``, ``stalled``.
    """
    x, ax = start
    h = x @ ax.T
    theta, z = np.linalg.eigh((h + h.T) / 2)
    x, ax = z.T @ x, z.T @ ax
    m = x.shape[0]
    p = np.zeros((0, x.shape[1]))
    ap = p
    it = 0
    while True:
        r = ax - theta[:, None] * x
        res = np.linalg.norm(r, axis=1)
        if log is not None:
            log(it, theta, res)
        if np.all(res[:k] <= tol):
            return theta, x, it, "converged"
        if it >= maxiter:
            return theta, x, it, "iterations"
        if time.perf_counter() > deadline:
            return theta, x, it, "time"
        it += 1
        active = res > tol
        w = prec(r[active], theta, res)
        for _ in range(2):
            w -= (w @ x.T) @ x
            if p.shape[0]:
                w -= (w @ p.T) @ p
        w = _orthonormal(w)
        if w.shape[0] == 0:
            return theta, x, it, "stalled"
        aw = op(w)
        s = np.vstack([x, w, p])
        a_s = np.vstack([ax, aw, ap])
        h = s @ a_s.T
        b = s @ s.T
        evals, zz = scipy.linalg.eigh((h + h.T) / 2, (b + b.T) / 2)
        zx = zz[:, :m]
        zp = zx.copy()
        zp[:m] = 0.0
        for _ in range(2):
            zp -= zx @ (zx.T @ (b @ zp))
        gram = zp.T @ b @ zp
        lam, vec = np.linalg.eigh((gram + gram.T) / 2)
        good = lam > 1e-12 * max(float(lam[-1]), 1e-300)
        zp = zp @ (vec[:, good] / np.sqrt(lam[good]))
        x, ax = zx.T @ s, zx.T @ a_s
        p, ap = zp.T @ s, zp.T @ a_s
        theta = evals[:m]


def _lanczos_max(op: Callable[[np.ndarray], np.ndarray], v0: np.ndarray, steps: int
                 ) -> tuple[float, float]:
    """Largest eigenvalue of the SPD ``op`` by Lanczos with full reorthogonalisation (a lower
    bound, from below) and the residual norm of its Ritz pair (an eigenvalue lies within it).
    Stops when that residual ``beta * |s_last|`` drops below ``LANCZOS_RTOL`` times the value
    (the eigenvalue error is at most that, usually its square) or after ``steps`` steps."""
    basis = np.empty((steps + 1, v0.size))
    basis[0] = v0 / np.linalg.norm(v0)
    alpha: list[float] = []
    beta: list[float] = []
    top, residual = 0.0, math.inf
    for j in range(steps):
        z = op(basis[j][None])[0]
        alpha.append(float(basis[j] @ z))
        q = basis[:j + 1]
        before = float(np.linalg.norm(z))
        z -= (q @ z) @ q
        if np.linalg.norm(z) < 0.5 * before:  # cancellation: once more ("twice is enough")
            z -= (q @ z) @ q
        beta.append(float(np.linalg.norm(z)))
        tri = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
        vals, vecs = np.linalg.eigh(tri)
        top, residual = float(vals[-1]), beta[-1] * abs(float(vecs[-1, -1]))
        if residual <= LANCZOS_RTOL * top or beta[-1] <= 1e-14 * top:
            break
        basis[j + 1] = z / beta[-1]
    return top, residual


# ---------------------------------------------------------------------------------------------
# the public result and driver



@dataclass(frozen=True, eq=False)
class OperatorSpectrum:
    """The smallest singular values of a whole conv operator and their input-space vectors.

    Attributes:
        sigmas: ``(k,)`` smallest singular values, ascending.
        vectors: ``(k, C, *spatial)`` unit-norm right singular vectors, sign-fixed (largest
            absolute entry positive).
        sigma_max: largest singular value.
        tol: decision threshold (``sigma_max * max(n_in, n_out) * eps`` unless overridden).
        exact: how many of ``sigmas`` are ``<= tol``: exact collision directions.
        relative: ``sigmas / sigma_max``.
        residuals: ``||A^T A v - s^2 v||`` per vector.
        iterations: eigensolver iterations (0 for the dense and blind paths; summed over groups).
        method: how the numbers were obtained, in words.
        seed: the seed of the random start vectors.
        circular: ``(k,)`` smallest singular values of the circular (periodic) model of the same
            conv: a cheap estimate that ignores the image border.
        converged: every residual is ``<= RESIDUAL_RTOL * sigma_max^2``.
        blind: number of input elements no window reads (each an exact collision direction).
        sigma_max_error, tol_error: estimated errors of sigma_max (its Lanczos residual, or
            the dense SVD's rounding) and of tol.
        null_dim: the dimension of the operator's null space under ``tol`` where the whole
            spectrum was computed (dense SVD of every group), None otherwise (then ``exact``
            and ``blind`` are only lower bounds of it).
        wide: ``max(0, n_in - n_out)``, a lower bound of the null space's dimension
            (rank-nullity).
    """

    sigmas: np.ndarray
    vectors: np.ndarray
    sigma_max: float
    tol: float
    exact: int
    relative: np.ndarray
    residuals: np.ndarray
    iterations: int
    method: str
    seed: int
    circular: np.ndarray = field(default_factory=lambda: np.zeros(0))
    converged: bool = True
    blind: int = 0
    sigma_max_error: float = 0.0
    tol_error: float = 0.0
    null_dim: int | None = None
    wide: int = 0

    @property
    def null_at_least(self) -> int:
        """A lower bound of the null space's dimension (its dimension where known)."""
        if self.null_dim is not None:
            return self.null_dim
        return max(self.exact, self.blind, self.wide)


@dataclass
class _Part:
    """The result for one group (before merging and the tolerance decision)."""

    sigmas: np.ndarray
    vectors: np.ndarray  # (k, C_group * prod(spatial))
    residuals: np.ndarray
    sigma_max: float
    iterations: int
    method: str
    circular: np.ndarray
    converged: bool
    sigma_max_error: float = 0.0  # estimated error of sigma_max
    spectrum: np.ndarray | None = None  # every singular value (dense SVD), else None


def blind_inputs(spec: ConvSpec) -> np.ndarray:
    """Boolean ``(C, *spatial)`` mask of input elements that no window reads with a non-zero
    weight (stride above the kernel, remainder rows and columns, dilation gaps): each is an
    exact collision direction."""
    geo = _operator_geometry(spec)
    return _blind(geo, _weight64(spec))


def _blind(geo: _Geometry, w: np.ndarray) -> np.ndarray:
    """``diag(A^T A) == 0`` computed as the adjoint of the squared weights applied to ones."""
    diag = _adjoint_batch(geo, w * w, np.ones((1, geo.o, *geo.out)))[0]
    return diag == 0.0


def _normal_op(geo: _Geometry, w: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``A^T A`` on rows: ``(m, n_in) -> (m, n_in)``, in chunks whose output-space arrays stay
    near CHUNK_BYTES."""
    shape = (geo.c, *geo.spatial)
    step = max(1, CHUNK_BYTES // (8 * geo.n_out))

    def op(x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], geo.n_in))
        for lo in range(0, x.shape[0], step):
            y = _forward_batch(geo, w, x[lo:lo + step].reshape(-1, *shape))
            out[lo:lo + step] = _adjoint_batch(geo, w, y).reshape(-1, geo.n_in)
        return out

    return op


def _sign_fixed(v: np.ndarray) -> np.ndarray:
    """Flip each row so that its entry of largest magnitude (first one) is positive."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.where(v[np.arange(v.shape[0]), idx] < 0, -1.0, 1.0)
    return v * signs[:, None]


def _circular_model(geo: _Geometry, w: np.ndarray) -> _Circular | None:
    """The circular model, or ``None`` when its per-frequency blocks would be too large."""
    m = [-(-n // s) for n, s in zip(geo.spatial, geo.strides, strict=True)]
    nf = math.prod(m[:-1]) * (m[-1] // 2 + 1)
    q = (geo.c // geo.g) * math.prod(geo.strides)
    if geo.g * nf * q * q * 16 * 3 > CIRCULAR_MAX_BYTES:  # Gram, eigenvectors, workspace
        return None
    return _Circular(geo, w)


def _dense_part(geo: _Geometry, w: np.ndarray, k: int, circ: _Circular | None) -> _Part:
    """All singular values of a small conv from a dense SVD of its matrix."""
    n = geo.n_in
    at = _forward_batch(geo, w, np.eye(n).reshape(n, geo.c, *geo.spatial)).reshape(n, -1)
    u, s, _ = np.linalg.svd(at, full_matrices=geo.n_out < n)
    sig = np.zeros(n)
    sig[: s.size] = s
    order = np.arange(n)[::-1][:k]  # s is descending; zeros (if any) are last
    vec = u[:, order].T
    sigmas = sig[order]
    res = np.linalg.norm(_normal_op(geo, w)(vec) - (sigmas**2)[:, None] * vec, axis=1)
    smax = float(sig[0]) if n else 0.0
    est = circ.smallest(k) if circ is not None else np.zeros(0)
    return _Part(sigmas, vec, res, smax, 0, "dense SVD", est, True,
                 max(n, geo.n_out) * EPS64 * smax, sig)


def _seeds(geo: _Geometry, circ: _Circular | None, patches: _Patches, blind: np.ndarray,
           m: int, rng: np.random.Generator) -> np.ndarray:
    """Candidate start vectors (rows): blind unit vectors, the lowest boundary-patch modes
    (their Rayleigh quotient is their local eigenvalue), the smallest circular modes (plain
    and under a sine window that vanishes at the border) and two random vectors."""
    n = geo.n_in
    rows: list[np.ndarray] = []
    for idx in np.flatnonzero(blind.ravel())[:m]:
        e = np.zeros(n)
        e[idx] = 1.0
        rows.append(e)
    rows.extend(patches.seeds(m).reshape(-1, n))
    if circ is not None:
        modes = circ.modes(max(2, m // 2))
        rows.extend(modes.reshape(modes.shape[0], n))
        rows.extend((modes * _window(geo)[None]).reshape(modes.shape[0], n))
    rows.extend(rng.standard_normal((2, n)))
    return np.array(rows)


def _iterative_part(geo: _Geometry, w: np.ndarray, k: int, rng: np.random.Generator,
                    deadline: float, circ: _Circular | None) -> _Part:
    """Smallest singular triplets of a large conv (one group) by preconditioned LOBPCG."""
    n = geo.n_in
    shape = (geo.c, *geo.spatial)
    op = _Gram(geo, w)
    blind = _blind(geo, w)
    # sigma_max: Lanczos from the top circular mode under a sine window, plus a little noise
    start = rng.standard_normal(n) * 1e-3
    if circ is not None:
        top = circ.modes(1, largest=True)
        if top.shape[0]:
            start += (top[0] * _window(geo)[0]).ravel()
    lam_max, lam_residual = _lanczos_max(op, start, LANCZOS_STEPS)
    smax = math.sqrt(max(lam_max, 0.0))
    smax_error = root_error(smax, lam_residual + n * EPS64 * max(lam_max, 0.0))
    est = circ.smallest(k) if circ is not None else np.zeros(0)
    if lam_max <= 0.0:  # all-zero weights: everything collides
        vec = np.zeros((k, n))
        vec[np.arange(k), np.arange(k)] = 1.0
        return _Part(np.zeros(k), vec, np.zeros(k), 0.0, 0, "all weights are zero", est, True)
    n_blind = int(blind.sum())
    if n_blind >= k:
        vec = np.zeros((k, n))
        vec[np.arange(k), np.flatnonzero(blind.ravel())[:k]] = 1.0
        return _Part(np.zeros(k), vec, np.zeros(k), smax, 0,
                     f"{n_blind} blind input elements (unit vectors, exact)", est, True,
                     smax_error)
    patches = _Patches(geo, w)
    m = k + max(k, EXTRA)
    floor = patches.lowest()
    if circ is not None:
        floor = min(floor, float(circ.lam.min()))
    history = [math.inf]

    def prec(r: np.ndarray, theta: np.ndarray, res: np.ndarray) -> np.ndarray:
        """Multiplicative Schwarz for ``A^T A - shift``: one sweep over the boundary patches,
        then the circulant model on the remaining residual (the backward sweep of the
        symmetric variant cost a sweep and an ``A^T A`` per iteration and saved none on the
        benchmarks: 11 and 9 iterations either way). The shift
        must stay below lambda_min: it is SHIFT_FACTOR times the smallest Ritz value (an upper
        bound) once that Ritz pair looks settled (residual under a tenth of it, change under
        5%), never above the circulant's smallest eigenvalue; before that, zero."""
        settled = res[0] <= 0.1 * theta[0] and abs(history[-1] - theta[0]) <= 0.05 * theta[0]
        history.append(float(theta[0]))
        lowest = min(float(theta[0]), floor) if settled else 0.0
        shift = SHIFT_FACTOR * max(lowest, 0.0) - SHIFT_RTOL * lam_max
        rb = r.reshape(-1, *shape)
        x1, r1 = patches.sweep(rb, shift, backward=False)
        mid = circ.precondition(r1, shift) if circ is not None else r1 / (lam_max - shift)
        return (x1 + mid).reshape(r.shape[0], n)

    seeds = _orthonormal(_seeds(geo, circ, patches, blind, m, rng))
    a_seeds = op(seeds)
    h = seeds @ a_seeds.T
    _, z = np.linalg.eigh((h + h.T) / 2)
    x0, ax0 = z[:, :m].T @ seeds, z[:, :m].T @ a_seeds
    del seeds, a_seeds
    tol_res = RESIDUAL_RTOL * lam_max
    _, x, iterations, why = _lobpcg(op, prec, (x0, ax0), k, tol_res, MAX_ITERATIONS, deadline,
                                    LOG)
    # final Rayleigh-Ritz on A X itself: small singular values keep their relative accuracy
    b = _forward_batch(geo, w, x.reshape(-1, geo.c, *geo.spatial)).reshape(x.shape[0], -1)
    r_factor = np.linalg.qr(b.T, mode="r")  # (A X^T) = Q R, R: (min(n_out, m), m)
    # The full V keeps the directions of X that A maps to zero where A has fewer outputs than
    # X has vectors (a thin SVD dropped them, and with them the null space sought).
    _, s, vt = np.linalg.svd(r_factor, full_matrices=True)
    s = np.concatenate([s, np.zeros(vt.shape[0] - s.size)])
    vec = (vt[::-1] @ x)[:k]
    sigmas = s[::-1][:k]
    res = np.linalg.norm(op(vec) - (sigmas**2)[:, None] * vec, axis=1)
    converged = bool(np.all(res <= tol_res))
    how = {"converged": "converged", "iterations": "stopped at the iteration limit",
           "time": "stopped at the time limit", "stalled": "stalled"}[why]
    if why == "converged" and not converged:
        how = "converged in the eigensolver, final residuals above tolerance"
    pieces = ("circulant model" if circ is not None else "Richardson") + \
        f" + {len(patches.patches)} boundary patches"
    method = (f"LOBPCG on A^T A (Schwarz preconditioner: {pieces}): {how} after {iterations} "
              f"iterations")
    return _Part(sigmas, vec, res, smax, iterations, method, est, converged, smax_error)


def _window(geo: _Geometry) -> np.ndarray:
    """Product of sine windows over the spatial axes, shape ``(1, *spatial)``."""
    window = np.ones((1,) * geo.d)
    for ax, size in enumerate(geo.spatial):
        shape = [1] * geo.d
        shape[ax] = size
        window = window * np.sin(np.pi * (np.arange(size) + 1) / (size + 1)).reshape(shape)
    return window[None]


def smallest_singular(
    spec: ConvSpec,
    k: int = 4,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    eps: float = EPS32,
    max_seconds: float | None = None,
) -> OperatorSpectrum:
    """The ``k`` smallest singular values of the whole conv operator and their vectors.

    ``A: R^{C x spatial} -> R^{O x out}`` is the true zero-padded conv at the real input size.
    Groups are independent blocks and are solved one by one. Operators with at most
    DENSE_MAX_DIM inputs per group use a dense SVD; larger ones a preconditioned LOBPCG on
    ``A^T A`` (see the module docstring), finished by a Rayleigh-Ritz SVD of ``A V``.

    Args:
        spec: the convolution and its input shape.
        k: how many singular values (clipped to the input dimension).
        seed: seed of the random start vectors.
        rtol: if set, ``tol = rtol * sigma_max`` replaces ``max(n_in, n_out) * eps * sigma_max``.
        atol: if set, ``tol = max(atol, relative tol)``.
        eps: machine epsilon of the dtype the model computes in (float32 by default).
        max_seconds: time budget for the eigensolver; when it runs out the best vectors so far
            are returned with ``converged=False`` and their residuals.

    Returns:
        An :class:`OperatorSpectrum`; ``exact`` counts only among the ``k`` values returned.
    """
    geo = _operator_geometry(spec)
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    w = _weight64(spec)
    if not np.all(np.isfinite(w)):
        raise UsageError("the conv weight holds NaN or infinite values")
    k = min(int(k), geo.n_in)
    start = time.perf_counter()
    deadline = math.inf if max_seconds is None else start + float(max_seconds)
    rng = np.random.default_rng(seed)
    og, cg = geo.o // geo.g, geo.c // geo.g
    sub = _Geometry(geo.d, cg, og, 1, geo.kernel, geo.strides, geo.dilations, geo.pad_begin,
                    geo.pad_end, geo.spatial, geo.out)
    parts: list[_Part] = []
    for gi in range(geo.g):
        wg = np.ascontiguousarray(w[gi * og:(gi + 1) * og])
        circ = _circular_model(sub, wg)
        if sub.n_in <= DENSE_MAX_DIM and sub.n_in * sub.n_out <= DENSE_MAX_ENTRIES:
            parts.append(_dense_part(sub, wg, min(k, sub.n_in), circ))
        else:
            parts.append(_iterative_part(sub, wg, min(k, sub.n_in), rng, deadline, circ))
    return _merge(geo, parts, k, seed, rtol, atol, eps, int(_blind(geo, w).sum()))


def _merge(geo: _Geometry, parts: list[_Part], k: int, seed: int, rtol: float | None,
           atol: float | None, eps: float, blind: int) -> OperatorSpectrum:
    """Merge the groups' results, pick the ``k`` smallest, apply the tolerance rule."""
    cg = geo.c // geo.g
    sig = np.concatenate([p.sigmas for p in parts])
    owner = np.concatenate([np.full(p.sigmas.size, i) for i, p in enumerate(parts)])
    local = np.concatenate([np.arange(p.sigmas.size) for p in parts])
    order = np.argsort(sig, kind="stable")[:k]
    vectors = np.zeros((order.size, geo.c, *geo.spatial))
    for row, idx in enumerate(order):
        gi, j = int(owner[idx]), int(local[idx])
        vectors[row, gi * cg:(gi + 1) * cg] = parts[gi].vectors[j].reshape(cg, *geo.spatial)
    vectors = _sign_fixed(vectors.reshape(order.size, -1)).reshape(vectors.shape)
    sigmas = sig[order]
    residuals = np.concatenate([p.residuals for p in parts])[order]
    smax = max(p.sigma_max for p in parts)
    smax_high = max(p.sigma_max + p.sigma_max_error for p in parts)
    tol, tol_high = _tolerances((smax, smax_high), geo.n_in, geo.n_out, rtol, atol, eps)
    circular = np.sort(np.concatenate([p.circular for p in parts]))[:k]
    methods = sorted({p.method for p in parts})
    method = methods[0] if len(methods) == 1 else "; ".join(methods)
    if geo.g > 1:
        method = f"{geo.g} groups solved separately: {method}"
    spectra = [p.spectrum for p in parts]
    null_dim = None if any(v is None for v in spectra) else \
        int(sum(np.count_nonzero(v <= tol) for v in spectra if v is not None))
    return OperatorSpectrum(
        sigmas=sigmas, vectors=vectors, sigma_max=smax, tol=tol,
        exact=int(np.sum(sigmas <= tol)),
        relative=sigmas / smax if smax > 0 else np.zeros_like(sigmas),
        residuals=residuals, iterations=sum(p.iterations for p in parts), method=method,
        seed=seed, circular=circular, converged=all(p.converged for p in parts), blind=blind,
        sigma_max_error=smax_high - smax, tol_error=tol_high - tol, null_dim=null_dim,
        wide=max(0, geo.n_in - geo.n_out))


def _tolerances(smax: tuple[float, float], q: int, p: int, rtol: float | None,
                atol: float | None, eps: float) -> tuple[float, float]:
    """``tol`` for sigma_max and for sigma_max at the top of its error bar (``smax``: both),
    by the audit's rule for a (q, p) operator."""
    rule = ToleranceRule(rtol, None if atol is None else float(atol))
    return rule.tolerance(smax[0], q, p, eps), rule.tolerance(smax[1], q, p, eps)


TRANSPOSED_DENSE_MAX_DIM = 4096  # a ConvTranspose with more inputs is not analysed


def transposed_smallest_singular(spec: ConvSpec, k: int = 4, rtol: float | None = None,
                                 atol: float | None = None, eps: float = EPS32
                                 ) -> OperatorSpectrum | None:
    """The ``k`` smallest singular values of a ConvTranspose, the adjoint of ``spec``'s conv.

    A ConvTranspose with weight ``(C_in, C_out/g, k...)`` is the exact adjoint of the conv
    with the same weight, strides, dilations, pads and groups on its output shape:
    ``T = A^T: R^{C_in x n} -> R^{C_out x spatial}`` with ``spec.input_shape = (C_out,
    *spatial)``. Its whole spectrum comes from a dense SVD of ``A`` (the right singular
    vectors of ``T`` are the left ones of ``A``), so ``null_dim`` is exact.

    Returns:
        An :class:`OperatorSpectrum` whose ``vectors`` are ``(k, C_in, *n)`` (T's input space),
        or None when T has more than TRANSPOSED_DENSE_MAX_DIM inputs or its dense matrix
        more than DENSE_MAX_ENTRIES entries.
    """
    geo = _operator_geometry(spec)
    if not np.all(np.isfinite(_weight64(spec))):
        raise UsageError("the conv weight holds NaN or infinite values")
    m, n = geo.n_out, geo.n_in  # T: R^m -> R^n
    if m > TRANSPOSED_DENSE_MAX_DIM or m * n > DENSE_MAX_ENTRIES:
        return None
    a = conv_matrix(spec).toarray()  # (m, n) = T^T
    u, s, _ = np.linalg.svd(a, full_matrices=m > n)  # u: (m, m)
    full = np.zeros(m)
    full[: s.size] = s
    k = max(1, min(int(k), m))
    vectors = _sign_fixed(u[:, ::-1][:, :k].T)
    sigmas = full[::-1][:k]
    residuals = np.linalg.norm(vectors @ a @ a.T - (sigmas**2)[:, None] * vectors, axis=1)
    smax = float(full[0]) if m else 0.0
    error = max(m, n) * EPS64 * smax
    tol, tol_high = _tolerances((smax, smax + error), m, n, rtol, atol, eps)
    blind = int(np.count_nonzero(~np.abs(a).any(axis=1)))
    return OperatorSpectrum(
        sigmas=sigmas, vectors=vectors.reshape(k, geo.o, *geo.out), sigma_max=smax, tol=tol,
        exact=int(np.sum(sigmas <= tol)),
        relative=sigmas / smax if smax > 0 else np.zeros_like(sigmas), residuals=residuals,
        iterations=0, method="dense SVD of the ConvTranspose (the adjoint conv)", seed=0,
        blind=blind, sigma_max_error=error, tol_error=tol_high - tol,
        null_dim=int(np.count_nonzero(full <= tol)), wide=max(0, m - n))
