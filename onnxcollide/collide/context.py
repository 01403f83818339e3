"""The model facts one search rests on: W1, its path from the input, shapes, the weight."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from onnxcollide.audit.layers import ConvConvention, LinearLayer, build_layer
from onnxcollide.collide.results import SearchSettings
from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.input_path import NOT_APPLICABLE, FirstLayerPath, trace_input
from onnxcollide.graph.linear_ops import LinearSite, find_linear_ops
from onnxcollide.graph.linear_path import PathOperator, build_path_operator, path_nodes
from onnxcollide.graph.load import LoadedModel, load_model
from onnxcollide.graph.shapes import TensorInfo, infer_shapes, is_float_input, model_inputs
from onnxcollide.graph.tensors import is_external, tensor_to_array


@dataclass(frozen=True)
class SearchContext:
    """What one search needs: the model, its shapes, W1 and the path from the input.

    ``operator`` is the path as one sparse operator on a sample where the path is not a chain
    that ``graph.path_map`` inverts node by node, or holds a Pad (whose constant elements the
    search must keep still); None otherwise.
    """

    model: LoadedModel
    infos: dict[str, TensorInfo]
    shapes: dict[str, tuple[int, ...]]
    route: FirstLayerPath
    site: LinearSite
    layer: LinearLayer
    resolver: ConstantResolver
    operator: PathOperator | None = None


def _exact_shapes(infos: dict[str, TensorInfo]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in infos.items():
        dims = info.shape
        if dims is not None and all(d is not None for d in dims):
            shapes[name] = tuple(int(d) for d in dims if d is not None)
    return shapes


def _choose_route(model: LoadedModel, infos: dict[str, TensorInfo], sites: list[LinearSite],
                  resolver: ConstantResolver, wanted: str | None) -> FirstLayerPath:
    nodes = list(model.proto.graph.node)
    main = {s.topo_index: s for s in sites if s.scope == "main"}
    inputs = [i for i in model_inputs(model) if wanted is None or i.name == wanted]
    if wanted is not None and not inputs:
        raise UsageError(f"the model has no input '{wanted}'", model.path)
    try:
        routes = [trace_input(i.name, nodes, main, infos, resolver, model.opset)
                  for i in inputs]
    except OnnxCollideError as exc:
        raise exc.in_file(model.path) from exc
    if wanted is not None and routes[0].site is None:
        others = [r.input for r in (trace_input(i.name, nodes, main, infos, resolver,
                                                model.opset) for i in model_inputs(model))
                  if r.site is not None]
        raise UsageError(f"--input-name '{wanted}': that input reaches no linear op with a "
                         "constant weight", model.path,
                         f"use {' or '.join(repr(o) for o in others)}" if others else "")
    for route in routes:
        if route.site is not None and (wanted or is_float_input(
                next(i for i in inputs if i.name == route.input))):
            return route
    reached = next((r for r in routes if r.site is not None), None)
    if reached is not None:
        raise UnsupportedModelError(f"the Null-space search does not apply: {reached.reason}",
                                    model.path)
    raise UnsupportedModelError("no input reaches a linear op with a constant weight",
                                model.path, "the Null-space search needs a continuous input")


FINITE_CHUNK = 1 << 22  # elements of a weight checked for NaN/Inf at once


# Model files (absolute path, SHA-256) whose weights passed check_weights in this process: one
# command asks several times (collide: before loading inputs and in the search; validate).
_CHECKED_MODELS: set[tuple[str, str]] = set()


def check_weights(model: LoadedModel, sites: list[LinearSite]) -> None:
    """Every external data tensor is readable and every linear weight finite, as the audit
    requires (before any shape advice: a missing data file leaves shapes unknown). Each
    weight is read once per model file and process; a failure is raised every time.

    Raises:
        ModelLoadError: an external data file is missing, truncated or outside the folder.
        UnsupportedModelError: a linear weight holds NaN or Inf (names node and weight).
    """
    key = (os.path.abspath(model.path), model.sha256)
    if key in _CHECKED_MODELS:
        return
    _check_weights(model, sites)
    _CHECKED_MODELS.add(key)


def _check_weights(model: LoadedModel, sites: list[LinearSite]) -> None:
    for tensor in model.proto.graph.initializer:
        if is_external(tensor):
            try:
                tensor_to_array(tensor, model.base_dir)
            except OnnxCollideError as exc:
                raise exc.in_file(model.path) from exc
    for site in sites:
        weight = np.asarray(site.resolver.value(site.weight_name)).reshape(-1)
        if weight.dtype.kind not in "fc":
            continue
        for lo in range(0, weight.size, FINITE_CHUNK):
            if not np.all(np.isfinite(weight[lo:lo + FINITE_CHUNK])):
                raise UnsupportedModelError(
                    "weight contains NaN or Inf",
                    f"{model.path}, node '{site.label}' ({site.op_type}), weight "
                    f"'{site.weight_name}'", "the model's weights are corrupt")


def build_context(path: str, feeds: dict[str, np.ndarray], settings: SearchSettings
                  ) -> SearchContext:
    model = load_model(path)
    sites, _ = find_linear_ops(model)
    check_weights(model, sites)
    known = {i.name for i in model_inputs(model)}
    missing = sorted(known - set(feeds))
    if missing:
        raise UsageError(f"no value for input(s) {', '.join(missing)}", path,
                         "give each input a value or a shape")
    infos = infer_shapes(model, {n: tuple(v.shape) for n, v in feeds.items() if n in known})
    scope = Scope.of_graph(model.proto.graph, "main", None)
    resolver = ConstantResolver(scope, model.base_dir, list(model.proto.opset_import))
    route = _choose_route(model, infos, sites, resolver, settings.input_name)
    if route.exactness == NOT_APPLICABLE or route.site is None:
        raise UnsupportedModelError(f"the Null-space search does not apply: {route.reason}",
                                    path)
    layer = build_layer(route.site, infos, ConvConvention.GROUPED)
    shapes = _exact_shapes(infos)
    operator = _path_operator(model, route, shapes, infos, resolver)
    if operator is not None and route.site.data_input not in shapes and route.input in shapes:
        # shape inference cannot size W1's input after a Compress; the path operator can
        shapes[route.site.data_input] = (shapes[route.input][0], *operator.data_shape)
    return SearchContext(model, infos, shapes, route, route.site, layer, resolver, operator)


def _path_operator(model: LoadedModel, route: FirstLayerPath, shapes: dict[str, tuple[int, ...]],
                   infos: dict[str, TensorInfo], resolver: ConstantResolver
                   ) -> PathOperator | None:
    """The route's path operator; built here for a chain with a constant Pad (the search
    then knows which elements of W1's input are padding without a --region)."""
    if route.operator is not None or route.site is None:
        return route.operator
    if not any(n.op_type == "Pad" for n in route.nodes) or route.input not in shapes:
        return None
    nodes = path_nodes(route.input, route.site.data_input, list(model.proto.graph.node),
                       route.site.topo_index)
    return build_path_operator(route.input, shapes[route.input], route.site.data_input, nodes,
                               resolver, infos, model.opset)


def check_applicable(path: str, shapes: dict[str, tuple[int, ...]],
                     input_name: str | None = None) -> str:
    """Raise when the search cannot apply to this model, before any input is loaded; return
    the name of the input it will perturb.

    Raises:
        UnsupportedModelError: W1 is not reached through affine ops from a float input.
    """
    model = load_model(path)
    sites, _ = find_linear_ops(model)
    check_weights(model, sites)
    infos = infer_shapes(model, shapes)
    scope = Scope.of_graph(model.proto.graph, "main", None)
    resolver = ConstantResolver(scope, model.base_dir, list(model.proto.opset_import))
    route = _choose_route(model, infos, sites, resolver, input_name)
    if route.exactness == NOT_APPLICABLE:
        raise UnsupportedModelError(f"the Null-space search does not apply: {route.reason}",
                                    path)
    return route.input
