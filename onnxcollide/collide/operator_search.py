"""Collisions for an overlapping first conv, from the whole conv operator at the real size.

A tiled per-patch kernel vector is not a collision when windows share pixels. The question
is whether the operator A (one sample of W1's input -> W1's output) has singular values at or
below the tolerance; linalg.conv_operator finds its smallest singular values and vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from onnxcollide.collide.context import SearchContext
from onnxcollide.collide.path_operator import (
    broadcast_to_input,
    folded_conv,
    path_kernel_words,
    w1_matrix,
)
from onnxcollide.collide.perturb import make_collision
from onnxcollide.collide.results import CollisionSet, SearchSettings
from onnxcollide.errors import UsageError
from onnxcollide.graph.linear_ops import conv_geometry, transposed_output_spatial
from onnxcollide.graph.path_map import pull_delta
from onnxcollide.limits import ResourceLimitError
from onnxcollide.linalg.conv_operator import (
    ConvSpec,
    OperatorSpectrum,
    output_shape,
    smallest_singular,
    transposed_smallest_singular,
)
from onnxcollide.linalg.matrix_operator import sparse_smallest_singular
from onnxcollide.linalg.spectral import EPS_OF, ToleranceRule, resolved


def conv_spec(ctx: SearchContext, data_shape: tuple[int, ...]) -> ConvSpec:
    """The W1 conv as a ConvSpec on one sample of its real input shape (float64 weight)."""
    weight_shape = ctx.site.weight_shape()
    geometry = conv_geometry(ctx.site, weight_shape)
    blocks = np.asarray(ctx.layer.load_blocks(), dtype=np.float64)  # (g, C/g*K, O/g)
    out_channels, kernel = weight_shape[0], weight_shape[2:]
    weight = blocks.transpose(0, 2, 1).reshape(out_channels, weight_shape[1], *kernel)
    pairs = geometry.pads_for(data_shape[2:])
    pads = tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)
    return ConvSpec(weight=weight, strides=geometry.strides, dilations=geometry.dilations,
                    pads=pads, groups=geometry.groups, input_shape=tuple(data_shape[1:]))


def transposed_spec(ctx: SearchContext, data_shape: tuple[int, ...]) -> ConvSpec | None:
    """A ConvTranspose W1 as the conv it is the adjoint of, on its real output shape; None
    where its output geometry is not explicit (auto_pad, output_shape) or does not fit."""
    weight_shape = ctx.site.weight_shape()
    geometry = conv_geometry(ctx.site, weight_shape)
    spatial = transposed_output_spatial(ctx.site, geometry, tuple(data_shape[2:]))
    if spatial is None:
        return None
    blocks = np.asarray(ctx.layer.load_blocks(), dtype=np.float64)  # (g, C_in/g, C_out/g*K)
    weight = blocks.reshape(weight_shape)
    spec = ConvSpec(weight=weight, strides=geometry.strides, dilations=geometry.dilations,
                    pads=geometry.pads, groups=geometry.groups,
                    input_shape=(weight_shape[1] * geometry.groups, *spatial))
    if min(spatial) < 1 or output_shape(spec) != tuple(data_shape[1:]):
        return None
    return spec


def operator_dict(spectrum: OperatorSpectrum, spec: ConvSpec | None,
                  input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The operator facts as plain data (for reports); ``input_shape`` is the operator's
    per-sample input shape (default the conv's; required without ``spec``)."""
    shape = input_shape if input_shape is not None else spec.input_shape if spec else ()
    sigma_max, sigma_max_digits = resolved(spectrum.sigma_max, spectrum.sigma_max_error)
    tol, tol_digits = resolved(spectrum.tol, spectrum.tol_error)
    return {
        "input_shape": list(shape), "sigma_max": sigma_max,
        "sigma_max_digits": sigma_max_digits, "tol": tol, "tol_digits": tol_digits,
        "exact": int(spectrum.exact), "null_space_dim": spectrum.null_dim,
        "null_space_at_least": int(spectrum.null_at_least),
        "sigmas": [float(v) for v in spectrum.sigmas],
        "relative": [float(v) for v in spectrum.relative],
        "residuals": [float(v) for v in spectrum.residuals],
        "iterations": int(spectrum.iterations), "method": spectrum.method,
        "seed": int(spectrum.seed),
    }


@dataclass(frozen=True)
class _Directions:
    """The operator directions colliding inputs are drawn from.

    Attributes:
        vectors: (n, size) orthonormal right singular vectors.
        relative: (n,) their relative singular values.
        exact: True where every one is an exact collision (at or below float32 rounding).
        distinct: True where each of the first n colliding inputs takes one vector (the
            approximate directions); False where inputs are random combinations of all.
    """

    vectors: np.ndarray
    relative: np.ndarray
    exact: bool
    distinct: bool

    def draw(self, k: int, basis: int | None, rng: np.random.Generator
             ) -> tuple[np.ndarray, float]:
        """Colliding input ``k``'s unit direction and its relative singular value
        (``sqrt(sum w_i^2 r_i^2)`` for a combination with unit weights ``w``).

        Raises:
            UsageError: a basis index not below the number of directions.
        """
        n = self.vectors.shape[0]
        if basis is not None:
            if basis >= n:
                raise UsageError(f"basis index {basis} is not below the {n} direction(s) "
                                 "found", hint=f"use an index below {n}")
            weights = np.eye(n)[basis]
        elif self.distinct and k < n:
            weights = np.eye(n)[k]
        else:
            weights = rng.standard_normal(n)
            weights /= np.linalg.norm(weights)
        return np.asarray(weights @ self.vectors), float(np.sqrt(np.sum((weights *
                                                                        self.relative) ** 2)))


def _directions(spectrum: OperatorSpectrum, float_level: float, mode: str
                ) -> _Directions | None:
    """The directions to draw from: the exact ones (relative singular value at or below
    ``float_level``, float32 rounding of this layer); else those under a looser --rtol or,
    with ``mode="approximate"``, every direction found, labelled approximate; None where
    there are none."""
    count = int(spectrum.relative.size)
    vectors = spectrum.vectors[:count].reshape(count, -1)
    truly = int(np.count_nonzero(spectrum.relative[:spectrum.exact] <= float_level))
    if truly:
        return _Directions(vectors[:truly], spectrum.relative[:truly], True, False)
    if spectrum.exact > 0:
        used = int(spectrum.exact)
        return _Directions(vectors[:used], spectrum.relative[:used], False, True)
    if mode == "approximate" and count:
        return _Directions(vectors, spectrum.relative, False, True)
    return None


@dataclass(frozen=True)
class _Analysed:
    """One whole-operator analysis: its spectrum, the facts for the report, its name, how a
    vector of its input space becomes a model-input perturbation, and notes."""

    spectrum: OperatorSpectrum
    facts: dict[str, Any]
    name: str
    to_input: Callable[[np.ndarray], np.ndarray]
    notes: tuple[str, ...] = ()


def _operator(ctx: SearchContext, data_shape: tuple[int, ...], x_shape: tuple[int, ...],
              settings: SearchSettings) -> _Analysed | None:
    """The smallest singular values of W1's whole operator (composed with the path where it
    is not a chain) at the real input size; None for a ConvTranspose the dense analysis
    cannot take (too large, or an output geometry that is not explicit)."""
    eps = EPS_OF.get(ctx.layer.compute_dtype, EPS_OF["float"])
    # Four directions are enough: distinct colliding inputs are random combinations of the
    # exact ones found; only an explicit basis index asks for more.
    wanted = max(4, max(settings.basis) + 1 if settings.basis else 0)
    # The operator's exactness threshold is the layer's own (per-patch q, p, as in the audit):
    # max(n_in, n_out) * eps of the whole operator would be ~0.1 sigma_max at 224x224 and call
    # near-collisions exact that validation then rejects.
    rtol = settings.rule.rtol
    if rtol is None:  # an --atol alone only adds a floor to this relative part
        rtol = max(ctx.layer.q, ctx.layer.p) * eps
    transposed = ctx.site.op_type == "ConvTranspose"
    conv = None if transposed or ctx.site.op_type not in ("Conv", "ConvInteger",
                                                          "QLinearConv") else \
        conv_spec(ctx, data_shape)
    if ctx.operator is not None:
        folded = None if conv is None else folded_conv(conv, ctx.operator, x_shape)
        if folded is None:
            return _composed(ctx, data_shape, x_shape, settings, conv, wanted,
                             ToleranceRule(rtol, settings.rule.atol), eps)
        spec, to_input, border = folded
        spectrum = smallest_singular(spec, k=wanted, seed=settings.seed, rtol=rtol,
                                     atol=settings.rule.atol, eps=eps)
        name = f"conv operator at {list(spec.input_shape)}" + (
            " (the path's constant border as its zero padding)" if border else
            " (through the path's permutation of the input)")
        return _Analysed(spectrum, operator_dict(spectrum, spec), name, to_input)

    def through_path(vector: np.ndarray) -> np.ndarray:
        flat = np.broadcast_to(vector.reshape(data_shape[1:]), data_shape)
        return pull_delta(ctx.route.nodes, ctx.route.input, np.array(flat), ctx.shapes,
                          ctx.resolver, ctx.model.opset)

    if transposed:
        tspec = transposed_spec(ctx, data_shape)
        whole = None if tspec is None else transposed_smallest_singular(
            tspec, wanted, rtol, settings.rule.atol, eps)
        if tspec is None or whole is None:
            return None
        shape = tuple(data_shape[1:])
        return _Analysed(whole, operator_dict(whole, tspec, shape),
                         f"ConvTranspose operator at {list(shape)}", through_path)
    assert conv is not None
    spectrum = smallest_singular(conv, k=wanted, seed=settings.seed, rtol=rtol,
                                 atol=settings.rule.atol, eps=eps)
    return _Analysed(spectrum, operator_dict(spectrum, conv),
                     f"conv operator at {list(conv.input_shape)}", through_path)


def _composed(ctx: SearchContext, data_shape: tuple[int, ...], x_shape: tuple[int, ...],
              settings: SearchSettings, conv: ConvSpec | None, wanted: int,
              rule: ToleranceRule, eps: float) -> _Analysed:
    """``A = W1 o path`` as one sparse matrix on a model-input sample, analysed whole."""
    operator = ctx.operator
    assert operator is not None
    transposed = transposed_spec(ctx, data_shape) if ctx.site.op_type == "ConvTranspose" \
        else None
    composed = (w1_matrix(ctx, data_shape, conv, transposed) @ operator.matrix).tocsr()
    spectrum = sparse_smallest_singular(composed, operator.input_shape, wanted, rule,
                                        ctx.layer.q, ctx.layer.p, eps, settings.seed)
    facts = operator_dict(spectrum, None, operator.input_shape)
    kernel = path_kernel_words(operator)
    name = f"W1 o path operator at {list(operator.input_shape)}"
    return _Analysed(spectrum, facts, name, lambda v: broadcast_to_input(v, x_shape),
                     (kernel,) if kernel else ())


def exact_count_words(spectrum: OperatorSpectrum) -> str:
    """How many exact directions the operator has, honestly: its null space's dimension where
    the whole spectrum was computed, else a lower bound (only the smallest few are sought)."""
    if spectrum.null_dim is not None:
        return f"null space of dimension {spectrum.null_dim} (every singular value computed)"
    return (f"at least {spectrum.null_at_least} exact direction(s) (a lower bound: only the "
            f"{spectrum.sigmas.size} smallest singular values are computed)")


def overlapping_collisions(ctx: SearchContext, x: np.ndarray, data_shape: tuple[int, ...],
                           settings: SearchSettings) -> CollisionSet | None:
    """Exact collisions from the operator's kernel, the strongest approximate one on request,
    or none (with the smallest relative singular value) for an overlapping W1; None for a
    ConvTranspose whose operator cannot be analysed here (the caller falls back)."""
    if settings.region is not None:
        raise UsageError("--region is not supported for an overlapping first conv",
                         hint="the operator's singular vectors span the whole input")
    try:
        analysed = _operator(ctx, data_shape, tuple(x.shape), settings)
    except ResourceLimitError as exc:  # the operator's arrays, sized by W1 and the input
        raise exc.at(f"W1 node '{ctx.site.label}'") from None
    if analysed is None:
        return None
    spectrum, facts, name = analysed.spectrum, analysed.facts, analysed.name
    r = float(spectrum.relative[0]) if spectrum.relative.size else float("nan")
    float_level = max(ctx.layer.q, ctx.layer.p) * EPS_OF["float"]
    directions = _directions(spectrum, float_level, settings.mode)
    if directions is None:
        return CollisionSet(
            model=ctx.model.path, input_name=ctx.route.input, feeds={}, w1_node=ctx.site.label,
            w1_output=str(ctx.site.node.output[0]), exactness=ctx.route.exactness,
            method=(f"no exact collision at this layer: smallest relative singular value of "
                    f"the {name} is {r:.3g}"),
            exact=False, units=0, kernel_dims=(0, 0), tol=float(spectrum.tol), collisions=(),
            operator=facts, notes=("use --mode approximate for the strongest approximate "
                                   "collision, or --mode tiled for the paper's tiling",
                                   *analysed.notes),
            settings=settings, tol_error=spectrum.tol_error)
    method, notes = _method_and_notes(spectrum, directions, name, float_level, settings)
    notes.extend(analysed.notes)
    collisions = []
    for k in range(settings.count):
        rng = np.random.default_rng([settings.seed, k])
        basis = settings.basis[k % len(settings.basis)] if settings.basis else None
        vector, relative = directions.draw(k, basis, rng)
        unit_delta = analysed.to_input(vector)
        collision, note = make_collision(k, x, unit_delta, None, settings, basis)
        if not directions.exact:
            collision = replace(collision, approximate=True, relative_sigma=relative)
        collisions.append(collision)
        if note:
            notes.append(note)
    usable = int(directions.vectors.shape[0])
    return CollisionSet(
        model=ctx.model.path, input_name=ctx.route.input, feeds={}, w1_node=ctx.site.label,
        w1_output=str(ctx.site.node.output[0]), exactness=ctx.route.exactness, method=method,
        exact=directions.exact, units=data_shape[0], kernel_dims=(usable, usable),
        tol=float(spectrum.tol), collisions=tuple(collisions), operator=facts,
        notes=tuple(notes), settings=settings, tol_error=spectrum.tol_error)


def _method_and_notes(spectrum: OperatorSpectrum, directions: _Directions, name: str,
                      float_level: float, settings: SearchSettings) -> tuple[str, list[str]]:
    """How the directions were found, in words, and what the user should know of them."""
    count = int(directions.vectors.shape[0])
    shown = ", ".join(f"{v:.3g}" for v in directions.relative)
    if directions.exact:
        return f"{name}: {exact_count_words(spectrum)}", []
    notes = [f"{count} distinct approximate direction(s) (relative singular values {shown}); "
             f"colliding inputs 0 to {count - 1} take one each, later ones random "
             "combinations of them"]
    if spectrum.exact > 0:
        method = (f"{name}: {spectrum.exact} direction(s) at or below the tolerance "
                  f"{settings.rule.describe()}, but above float32 rounding of this layer "
                  f"(relative {float_level:.3g}): approximate")
        notes.append("a smaller --rtol (or none) keeps only directions that collide exactly")
        return method, notes
    method = (f"{name}: no exact collision; approximate directions, smallest relative "
              f"singular value {float(spectrum.relative[0]):.3g}")
    return method, notes
