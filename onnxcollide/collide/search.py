"""The Null-space search on the model's real input space (Definition 4 and Eq. 7, extended).

A colliding input is ``x + beta * d``, with ``d`` built at W1's data input from kernel vectors of
W1 and mapped back to the model input through the path ops (graph.path_map). How ``d`` is
built depends on W1's class (DESIGN.md):

- dense / patchify: unit by unit (one input row or token, one conv window, one ConvTranspose
  position). A unit reads positions S of W1's input (in bounds, not padding, inside the
  region); its perturbation is a vector of ker(W_S^T), W_S the rows of W for S. Units never
  share a position, so every colliding input is an exact collision of W1.
- overlapping: the whole conv operator at the real input size decides (linalg.conv_operator):
  exact directions where its smallest singular values are at or below tol, otherwise the
  strongest approximate collision on request. ``mode="tiled"`` reproduces the paper's tiling of
  a per-patch kernel vector, which is not a collision; validation reports how far off it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from onnxcollide.collide.context import SearchContext, build_context, check_weights
from onnxcollide.collide.operator_search import overlapping_collisions
from onnxcollide.collide.path_operator import positions_at_input, pull_to_input
from onnxcollide.collide.perturb import (
    check_start,
    in_range,
    inside,
    make_collision,
    range_bounds,
    range_text,
)
from onnxcollide.collide.results import MODES, CollisionSet, SearchSettings
from onnxcollide.collide.units import block_diagonal, dense_units
from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.input_path import (
    DENSE,
    OVERLAPPING,
    input_read_counts,
)
from onnxcollide.graph.linear_ops import (
    ConvGeometry,
    conv_geometry,
    find_linear_ops,
)
from onnxcollide.graph.load import load_model
from onnxcollide.limits import check_allocation
from onnxcollide.linalg.conv_operator import TRANSPOSED_DENSE_MAX_DIM
from onnxcollide.linalg.spectral import EPS_OF, KernelSpace, ToleranceRule, kernel_space

# ------------------------------------------------------------------ units


def _window_units(geometry: ConvGeometry, shape: tuple[int, ...]) -> np.ndarray:
    """(N * windows, C * prod k) flat positions read by each conv window; -1 for padding."""
    n, spatial = shape[0], shape[2:]
    axes = len(spatial)
    index = np.arange(int(np.prod(shape))).reshape(shape)
    padded = np.pad(index, [(0, 0), (0, 0), *geometry.pads_for(spatial)], constant_values=-1)
    views = padded
    for a in range(axes):
        extent = (geometry.kernel[a] - 1) * geometry.dilations[a] + 1
        views = np.lib.stride_tricks.sliding_window_view(views, extent, axis=2 + a)
    # views: (N, C, *out_full, *extent); take strides and dilations
    take = [slice(None), slice(None)]
    take += [slice(None, None, geometry.strides[a]) for a in range(axes)]
    take += [slice(None, None, geometry.dilations[a]) for a in range(axes)]
    windows = views[tuple(take)]
    out_axes = list(range(2, 2 + axes))
    order = [0, *out_axes, 1, *range(2 + axes, 2 + 2 * axes)]
    return np.ascontiguousarray(windows.transpose(order)).reshape(n * int(
        np.prod(windows.shape[2:2 + axes])), -1)


def _position_units(shape: tuple[int, ...]) -> np.ndarray:
    """ConvTranspose: (N * positions, C_in) flat positions of each input position's channels."""
    index = np.arange(int(np.prod(shape))).reshape(shape[0], shape[1], -1)
    return np.ascontiguousarray(index.transpose(0, 2, 1)).reshape(-1, shape[1])


# ------------------------------------------------------------------ region


def _region_mask(region: str | None, input_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask over the model input (all samples) that a region slice selects."""
    mask = np.zeros(input_shape, dtype=bool)
    if region is None:
        mask[...] = True
        return mask
    def misfit() -> UsageError:
        return UsageError(f"--region '{region}' does not fit an input of per-sample shape "
                          f"{input_shape[1:]}", hint="write numpy slices within those sizes, "
                          "e.g. :,8:24,8:24")

    try:
        parts = [p.strip() for p in region.split(",")]
        slices = [slice(*[int(v) if v.strip() else None for v in p.split(":")]) if ":" in p
                  else int(p) for p in parts]
        mask[(slice(None), *slices)] = True
    except (ValueError, IndexError, TypeError) as exc:
        raise misfit() from exc
    trailing = input_shape[1:len(slices) + 1]  # fewer slices than axes: the rest are whole
    if not all(_bounds_inside(s, d) for s, d in zip(slices, trailing, strict=True)):
        raise misfit()  # numpy would clip 0:112 to an axis of 32: not what was asked for
    if not mask.any():
        raise UsageError(f"--region '{region}' selects no element")
    return mask


def _bounds_inside(part: slice | int, size: int) -> bool:
    """Whether a slice's start and stop lie within an axis of ``size`` (-size..size), as
    numpy reads them; an int index numpy has already checked."""
    if isinstance(part, int):
        return True
    return all(-size <= v <= size for v in (part.start, part.stop) if v is not None)


def _data_mask(ctx: SearchContext, x: np.ndarray, data_shape: tuple[int, ...],
               settings: SearchSettings) -> np.ndarray:
    """Which W1 data-input elements may change (flat bool mask).

    Those that some model-input element becomes (not padding a Pad node adds), inside the
    region, and, with a valid range, not sitting on one of its bounds (such an element can
    move only one way, which would force its unit's beta to 0).
    """
    size = int(np.prod(data_shape))
    positions = positions_at_input(ctx, data_shape)
    movable = _region_mask(settings.region, x.shape) & (positions >= 0)
    movable &= inside(x, range_bounds(settings, x.ndim), strictly=True)
    mask = np.zeros(size, dtype=bool)
    mask[positions[movable]] = True
    return mask


# ------------------------------------------------------------------ directions


@dataclass
class _UnitKernels:
    """Kernel spaces of W_S for each distinct set S of usable taps (cached)."""

    matrix: np.ndarray
    eps: float
    rule: ToleranceRule
    sigma_max: float
    cache: dict[bytes, KernelSpace] = field(default_factory=dict)

    def space(self, taps: np.ndarray) -> KernelSpace:
        key = taps.tobytes()
        if key not in self.cache:
            q, p = self.matrix.shape
            self.cache[key] = kernel_space(self.matrix[taps], self.eps, self.rule,
                                           sigma_max=self.sigma_max, q_total=q, p_total=p)
        return self.cache[key]


def _unit_direction(units: np.ndarray, allowed: np.ndarray, kernels: _UnitKernels,
                    rng: np.random.Generator, basis: int | None, size: int, owner: np.ndarray
                    ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Sum over units of one unit-norm kernel vector each: flat (size,) float64.

    ``owner`` (size,) is filled with the unit index of every position a unit changes.
    """
    delta = np.zeros(size)
    used, dims = 0, []
    for number, positions in enumerate(units):
        usable = (positions >= 0) & allowed[np.maximum(positions, 0)]
        taps = np.flatnonzero(usable)
        if taps.size == 0:
            continue
        space = kernels.space(taps)
        if space.nullity == 0:
            continue
        if basis is not None and space.basis is not None and basis < space.nullity:
            vector = space.vector(basis)
        elif basis is not None:
            continue
        else:
            vector = space.random_vector(rng)
        delta[positions[taps]] += vector
        owner[positions[taps]] = number
        used += 1
        dims.append(space.nullity)
    return delta, used, (min(dims), max(dims)) if dims else (0, 0)


def find_collisions(path: str, feeds: dict[str, np.ndarray],
                    settings: SearchSettings | None = None,
                    on_phase: Callable[[str], None] | None = None) -> CollisionSet:
    """Make ``settings.count`` inputs that collide with ``feeds`` at W1 (Null-space search).

    Args:
        path: the ONNX model.
        feeds: a value for every graph input; the float input reaching W1 is perturbed.
        settings: count, beta, basis, seed, region, range, mode.
        on_phase: told, in words, when a long phase starts (the kernel of W1, the analysis
            of a whole conv operator), for a progress display.

    Raises:
        UsageError: settings that do not fit the model (region, input name, range).
        UnsupportedModelError: the search does not apply (not applicable W1, no exact
            collision where one was required, an op on the path that cannot be inverted).
    """
    settings = settings or SearchSettings()
    if settings.mode not in MODES:
        raise UsageError(f"unknown mode '{settings.mode}'", hint=f"use one of {MODES}")
    try:
        return _find_collisions(path, feeds, settings, on_phase or (lambda text: None))
    except OnnxCollideError as exc:
        raise exc.in_file(path) from exc


def _find_collisions(path: str, feeds: dict[str, np.ndarray], settings: SearchSettings,
                     tell: Callable[[str], None]) -> CollisionSet:
    """find_collisions without naming the model file in its errors."""
    ctx = build_context(path, feeds, settings)
    x = np.asarray(feeds[ctx.route.input])
    check_allocation(settings.count * x.size * 16, f"{settings.count} colliding inputs of "
                     f"{x.size} values (each with its perturbation, in float64)", path,
                     option="--count")
    check_start(x, ctx.route.input, settings, path)
    if not in_range(x, settings):
        raise UsageError(f"the input '{ctx.route.input}' is not inside --range "
                         f"{range_text(settings)}", path, "rescale the input or widen the range")
    data_shape = ctx.shapes.get(ctx.site.data_input)
    if data_shape is None:
        raise UnsupportedModelError(f"the shape of W1's input '{ctx.site.data_input}' is "
                                    "unknown although every model input's is known", path,
                                    "an op between the input and W1 hides it from ONNX shape "
                                    "inference: please report the model")
    found = None
    if ctx.route.exactness == OVERLAPPING and settings.mode != "tiled":
        tell(f"analysing W1's whole operator ({ctx.site.label}) at its input size")
        found = overlapping_collisions(ctx, x, data_shape, settings)
    if found is None:  # patchify, dense, tiled, or a ConvTranspose too large to analyse whole
        tell(f"the kernel of W1 ({ctx.site.label}) unit by unit")
        found = _unit_collisions(ctx, x, data_shape, settings)
    return replace(found, feeds=dict(feeds))


def _units_for(ctx: SearchContext, data_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    if ctx.route.exactness == DENSE:
        return dense_units(ctx.site, data_shape, ctx.layer.q), "kernel of W1 per input vector"
    geometry = conv_geometry(ctx.site, ctx.site.weight_shape())
    if geometry.transposed:
        return _position_units(data_shape), "kernel of W1 per input position (ConvTranspose)"
    return _window_units(geometry, data_shape), "kernel of W1 per conv window"


def _unit_collisions(ctx: SearchContext, x: np.ndarray, data_shape: tuple[int, ...],
                     settings: SearchSettings) -> CollisionSet:
    if ctx.layer.groups > 1 and ctx.layer.op in ("MatMul", "QLinearMatMul", "MatMulInteger"):
        raise UnsupportedModelError("W1 is a stack of matrices applied block by block",
                                    f"node '{ctx.site.label}'", "not supported by the search yet")
    if settings.region is not None and ctx.route.exactness == OVERLAPPING:
        raise UsageError("--region is not supported with --mode tiled",
                         hint="the paper's tiling repeats one vector over the whole input")
    units, method = _units_for(ctx, data_shape)
    matrix = block_diagonal(np.asarray(ctx.layer.load_blocks(), dtype=np.float64))
    eps = EPS_OF.get(ctx.layer.compute_dtype, EPS_OF["float"])
    whole = kernel_space(matrix, eps, settings.rule)  # the layer's sigma_max and tolerance
    kernels = _UnitKernels(matrix, eps, settings.rule, whole.sigma_max)
    kernels.cache[np.arange(matrix.shape[0]).tobytes()] = whole
    transposed = ctx.site.op_type == "ConvTranspose"
    tiled = ctx.route.exactness == OVERLAPPING and not transposed
    if whole.nullity == 0 and not tiled:
        blind = _blind_collisions(ctx, x, settings, whole)
        if blind is not None:
            return blind
    coarse = _coarse_kernel_note(matrix, whole, eps, ctx.layer.compute_dtype, settings.rule)
    if tiled:
        method = "tiled per-patch kernel vector (the paper's repetition; not a collision of " \
                 "the whole operator)"
    allowed = _data_mask(ctx, x, data_shape, settings)
    size = int(np.prod(data_shape))
    collisions, notes = [], []
    used, dims = 0, (0, 0)
    for k in range(settings.count):
        rng = np.random.default_rng([settings.seed, k])
        basis = settings.basis[k % len(settings.basis)] if settings.basis else None
        owner = np.full(size, -1, dtype=np.int64)
        if tiled:
            flat, _, dims = _tiled_direction(ctx, data_shape, kernels, rng, basis)
            used = len(units)  # every window sees the tiled vector (shifted where it overlaps)
        else:
            flat, used, dims = _unit_direction(units, allowed, kernels, rng, basis, size, owner)
        if used == 0:
            raise _no_unit_error(ctx, kernels, basis, settings)
        unit_delta = pull_to_input(ctx, flat.reshape(data_shape))
        unit_of = None if tiled else _owners_at_input(ctx, owner, data_shape)
        collision, note = make_collision(k, x, unit_delta, unit_of, settings, basis)
        if coarse:
            collision = replace(collision, approximate=True, relative_sigma=coarse[1])
        collisions.append(collision)
        if note:
            notes.append(note)
    rounding = any(n.op_type == "QuantizeLinear" for n in ctx.route.nodes)
    if rounding:
        notes.append("QuantizeLinear on the path rounds the input: the colliding inputs "
                      "collide at W1 only up to that rounding, so they are not exact")
    if coarse:
        notes.append(coarse[0])
        overridden = settings.rule.rtol is not None or settings.rule.atol is not None
        method += " at the given tolerance (approximate)" if overridden else \
            f" at its {ctx.layer.compute_dtype} tolerance (approximate)"
    if ctx.route.exactness == OVERLAPPING and transposed:
        notes.append(_per_position_note(settings))
    elif settings.mode != "auto" and not tiled:
        notes.append(f"mode '{settings.mode}' applies to an overlapping first conv only; W1 "
                     f"is {ctx.route.exactness}, so the collisions are exact")
    return CollisionSet(
        model=ctx.model.path, input_name=ctx.route.input, feeds={}, w1_node=ctx.site.label,
        w1_output=str(ctx.site.node.output[0]), exactness=ctx.route.exactness, method=method,
        exact=not tiled and not rounding and not coarse, units=used, kernel_dims=dims,
        tol=whole.tol,
        collisions=tuple(collisions), operator=None, notes=tuple(notes), settings=settings,
        tol_error=whole.tol_error)


def _coarse_kernel_note(matrix: np.ndarray, whole: KernelSpace, eps: float, dtype: str,
                        rule: ToleranceRule) -> tuple[str, float] | None:
    """Why W1's kernel vectors are approximate, with the largest relative singular value the
    kernel holds; None where they are exact.

    The kernel at a tolerance above float32 rounding of the layer holds singular values
    above that rounding, so ``W^T v`` of a kernel vector is not 0 and validation need not
    pass. That happens for a W1 that computes in float16 or bfloat16 (its tolerance is
    ``max(q, p) * eps`` of that type, often a large fraction of sigma_max) and for a looser
    ``--rtol`` or ``--atol``. Such vectors are labelled approximate.

    Args:
        matrix: (q, p) W1 (all blocks, float64).
    """
    overridden = rule.rtol is not None or rule.atol is not None
    if whole.nullity == 0 or (eps <= EPS_OF["float"] and not overridden):
        return None
    q, p = matrix.shape
    sigmas = np.linalg.svd(matrix, compute_uv=False)
    dropped = sigmas[sigmas <= whole.tol]
    largest = float(dropped.max()) if dropped.size else 0.0
    if largest <= whole.sigma_max * max(q, p) * EPS_OF["float"]:
        return None
    cause = f"W1 computes in {dtype}: its kernel at that type's tolerance" \
        if eps > EPS_OF["float"] and not overridden else \
        f"the tolerance {rule.describe()} is above float32 rounding: the kernel"
    return (f"{cause} (tol {whole.tol:.3g}) holds singular values up to {largest:.3g} "
            f"({largest / whole.sigma_max:.3g} of sigma_max), so W^T v is not 0 and these "
            "collisions are approximate; a smaller --rtol (e.g. 1e-6) gives a smaller kernel "
            "whose vectors collide exactly"), largest / whole.sigma_max


def _blind_mask(ctx: SearchContext, x: np.ndarray, settings: SearchSettings) -> np.ndarray | None:
    """Model-input elements no window of W1 reads that may move (inside the region, off the
    range's bounds), all samples: bool like ``x``; None where the reads cannot be followed."""
    counts = input_read_counts(ctx.route, ctx.infos, ctx.resolver, ctx.model.opset)
    if counts is None or counts.shape != x.shape[1:]:
        return None
    movable = np.broadcast_to(counts == 0, x.shape) & _region_mask(settings.region, x.shape)
    movable &= inside(x, range_bounds(settings, x.ndim), strictly=True)
    return movable


def _blind_collisions(ctx: SearchContext, x: np.ndarray, settings: SearchSettings,
                      whole: KernelSpace) -> CollisionSet | None:
    """Collisions that move only blind input elements (each its own unit, +-beta), for a W1
    whose per-unit kernel is trivial; None where there is no movable blind element.

    Raises:
        UsageError: a basis index other than 0 (a blind element's kernel is 1-dimensional).
    """
    movable = _blind_mask(ctx, x, settings)
    if movable is None or not movable.any():
        return None
    if any(b != 0 for b in settings.basis):
        raise UsageError("W1's only exact collisions move blind input elements, whose kernel "
                         "is 1-dimensional", hint="use --basis 0 or --basis random")
    where = np.flatnonzero(movable)
    unit_of = np.full(x.size, -1, dtype=np.int64)
    unit_of[where] = np.arange(where.size)
    collisions, notes = [], []
    for k in range(settings.count):
        rng = np.random.default_rng([settings.seed, k])
        signs = np.ones(where.size) if settings.basis else rng.choice([-1.0, 1.0], where.size)
        unit_delta = np.zeros(x.size)
        unit_delta[where] = signs
        collision, note = make_collision(k, x, unit_delta.reshape(x.shape),
                                          unit_of.reshape(x.shape), settings,
                                          0 if settings.basis else None)
        collisions.append(collision)
        if note:
            notes.append(note)
    return CollisionSet(
        model=ctx.model.path, input_name=ctx.route.input, feeds={}, w1_node=ctx.site.label,
        w1_output=str(ctx.site.node.output[0]), exactness=ctx.route.exactness,
        method=(f"W1's kernel is trivial; {where.size} blind input element(s) (no window "
                "reads them) moved by +-beta each"),
        exact=True, units=int(where.size), kernel_dims=(1, 1), tol=whole.tol,
        collisions=tuple(collisions), operator=None, notes=tuple(notes), settings=settings,
        tol_error=whole.tol_error)


def _owners_at_input(ctx: SearchContext, owner: np.ndarray, data_shape: tuple[int, ...]
                     ) -> np.ndarray:
    """The unit owning each model-input element (-1 for none), via the path's positions."""
    positions = positions_at_input(ctx, data_shape)
    return np.where(positions >= 0, owner[np.maximum(positions, 0)], -1)


def _per_position_note(settings: SearchSettings) -> str:
    """Why an overlapping ConvTranspose got per-position kernel vectors."""
    if settings.mode == "tiled":
        return ("mode 'tiled': per-position kernel vectors of the ConvTranspose, which lift "
                "exactly; combinations across overlapping positions are not sought")
    return ("the whole ConvTranspose operator was not analysed (more than "
            f"{TRANSPOSED_DENSE_MAX_DIM} inputs, or no explicit output geometry): these are "
            "per-position kernel vectors, which lift exactly; the operator may have more "
            "null directions")


def _trivial_kernel_error(ctx: SearchContext, whole: KernelSpace, p: int, mode: str
                          ) -> OnnxCollideError:
    """W1's per-unit kernel is trivial: no exact collision where that settles it (dense, a
    patchify conv, an uncropped patchify ConvTranspose); otherwise say what is not known."""
    where = f"{ctx.model.path}: W1 node '{ctx.site.label}'"
    rank = f"W1 ({whole.q} x {p}) has rank {whole.rank}: its kernel is trivial (tol " \
           f"{whole.tol:.3g})"
    transposed = ctx.site.op_type == "ConvTranspose"
    if ctx.route.blind_elements and ctx.route.exactness != OVERLAPPING:
        return UsageError(f"{rank}; its {ctx.route.blind_elements} blind input element(s) per "
                          "sample (no window reads them) are its only exact collisions, and "
                          "none of them may move inside --region and --range", where,
                          "widen the region or the range")
    if ctx.route.exactness == OVERLAPPING and (mode == "tiled" or not transposed):
        return UnsupportedModelError(f"{rank}, so --mode tiled has nothing to tile", where,
                                     "use --mode auto to analyse the whole operator")
    cropped = transposed and any(conv_geometry(ctx.site, ctx.site.weight_shape()).pads)
    if ctx.route.exactness == OVERLAPPING or cropped:
        n_in = int(np.prod(ctx.shapes.get(ctx.site.data_input, (0, 0))[1:]))
        n_out = int(np.prod(ctx.shapes.get(str(ctx.site.node.output[0]), (0, 0))[1:]))
        bound = (f"; it maps {n_in} values to {n_out}, so it has at least {n_in - n_out} null "
                 "directions" if 0 < n_out < n_in else "")
        return UnsupportedModelError(
            f"{rank} per input position, but the whole ConvTranspose operator (outputs overlap "
            f"or are cropped) may still have exact collisions{bound}; this search analyses it "
            f"only up to {TRANSPOSED_DENSE_MAX_DIM} inputs with explicit pads", where,
            "give a smaller --input-shape to have the whole operator analysed")
    return UnsupportedModelError(f"{rank}, so no exact collision exists at W1", where,
                                 "collisions may still exist at later layers, which this "
                                 "search does not build")


def _no_unit_error(ctx: SearchContext, kernels: _UnitKernels, basis: int | None,
                   settings: SearchSettings) -> OnnxCollideError:
    """Why no unit could be perturbed, with what to do."""
    whole = kernels.space(np.arange(kernels.matrix.shape[0]))
    where = f"{ctx.model.path}: W1 node '{ctx.site.label}'"
    if whole.nullity == 0:
        return _trivial_kernel_error(ctx, whole, kernels.matrix.shape[1], settings.mode)
    if basis is not None:
        return UsageError(f"basis index {basis} is not below the kernel dimension of any unit",
                          where, f"use an index below {whole.nullity}")
    if settings.region is not None:
        return UsageError("no unit inside the region has a non-trivial kernel", where,
                          "choose a larger region")
    held = "padding a Pad node adds" + (", elements on a bound of --range"
                                        if settings.valid_range is not None else "")
    return UsageError(f"no unit has a non-trivial kernel once the elements that cannot move "
                      f"({held}) are left out", where,
                      "widen --range" if settings.valid_range is not None else "")


def _tiled_direction(ctx: SearchContext, data_shape: tuple[int, ...], kernels: _UnitKernels,
                     rng: np.random.Generator, basis: int | None
                     ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """The paper's repetition: one per-patch kernel vector (C, k...) tiled over the input.

    Tiles have the kernel's size and start where the first window starts (at minus the
    begin pads), as in the paper's Figure 1 and the supplementary's Figure 1. Windows overlap,
    so this is not a collision of the whole operator; validation reports its residual.
    """
    space = kernels.space(np.arange(kernels.matrix.shape[0]))
    size = int(np.prod(data_shape))
    if space.nullity == 0:
        return np.zeros(size), 0, (0, 0)
    vector = space.vector(basis) if basis is not None else space.random_vector(rng)
    geometry = conv_geometry(ctx.site, ctx.site.weight_shape())
    spatial = data_shape[2:]
    axes = len(spatial)
    patch = vector.reshape(data_shape[1], *geometry.kernel)
    begins = [begin for begin, _ in geometry.pads_for(spatial)]
    index = np.ix_(*[(np.arange(spatial[a]) + begins[a]) % geometry.kernel[a]
                     for a in range(axes)])
    tiled = patch[(slice(None), *index)]  # type: ignore[arg-type]
    delta = np.broadcast_to(tiled, data_shape).reshape(-1).copy()
    return delta, data_shape[0], (space.nullity, space.nullity)


def w1_output_name(path: str, feeds: dict[str, np.ndarray]) -> str | None:
    """Name of W1's output tensor for these inputs, None where the search does not apply.

    Raises:
        OnnxCollideError: the weights cannot be read or are not finite.
    """
    model = load_model(path)
    check_weights(model, find_linear_ops(model)[0])
    try:
        return str(build_context(path, feeds, SearchSettings()).site.node.output[0])
    except UnsupportedModelError:
        return None


def first_layer_kernel(path: str, feeds: dict[str, np.ndarray], settings: SearchSettings
                       ) -> tuple[np.ndarray, tuple[int, ...] | None, np.ndarray]:
    """W1's kernel basis (nullity, q), for a conv W1 the patch shape (C, k...) of a vector
    (else None), and each vector's ``||W^T v||`` (nullity,): its singular value, 0 up to
    rounding for the structural kernel.

    Raises:
        UnsupportedModelError: q is too large to hold an explicit basis.
    """
    ctx = build_context(path, feeds, settings)
    matrix = block_diagonal(np.asarray(ctx.layer.load_blocks(), dtype=np.float64))
    space = kernel_space(matrix, EPS_OF.get(ctx.layer.compute_dtype, EPS_OF["float"]),
                         settings.rule)
    if space.basis is None:
        raise UnsupportedModelError(f"W1 reads {space.q} values: too many for an explicit "
                                    "kernel basis", path)
    patch = None
    if ctx.layer.geometry is not None and not ctx.layer.geometry.transposed:
        weight_shape = ctx.site.weight_shape()
        channels = weight_shape[1] * ctx.layer.geometry.groups
        patch = (channels, *weight_shape[2:])
    sigmas = np.linalg.norm(space.basis @ matrix, axis=1)
    return space.basis, patch, sigmas
