"""`onnxcollide validate`: do two inputs collide? W1 residual, outputs, a random baseline.

``validate MODEL FIRST SECOND`` checks one pair of input files; ``validate MODEL
collisions.npz`` checks every colliding input ``collide`` saved against its original.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import numpy as np

from onnxcollide.cli.options import (
    apply_max_memory,
    image_options,
    input_options,
    max_memory_option,
    parse_shapes,
    progress_steps,
    run_guarded,
    tell_notices,
)
from onnxcollide.collide.inputs import (
    ImageOptions,
    check_image_options,
    check_input_file,
    file_record,
    is_image,
    parse_assignments,
    read_inputs,
)
from onnxcollide.collide.saved import SavedCollisions, is_saved_collisions, read_saved_collisions
from onnxcollide.collide.search import w1_output_name
from onnxcollide.errors import UsageError
from onnxcollide.graph.load import LoadedModel, load_model
from onnxcollide.report.collide_format import render_saved_validations, render_validation_table
from onnxcollide.report.files import write_stdout
from onnxcollide.runtime.collisions import validate_moved
from onnxcollide.runtime.session import ModelRunner, resolve_device
from onnxcollide.runtime.validate import Tolerances, validate_pair, validation_dict


@click.command()
@click.argument("model", type=click.Path())
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path(), required=False)
@click.option("--layer", help="Tensor to compare as W1's output (default: W1's output).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]),
              default="table", show_default=True,
              help="A table, or the same facts as JSON on standard output.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@max_memory_option
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@input_options
def validate(model: str, first: str, second: str | None, layer: str | None, fmt: str,
             progress: bool | None, max_memory: str | None, debug: bool,
             input_shapes: tuple[str, ...], resize: str | None, layout: str, scale: float,
             mean: str | None, std: str | None, device: str, precision: str,
             seed: int) -> None:
    """Check whether two inputs collide (FIRST and SECOND files), or every colliding input in
    collide's collisions.npz (FIRST alone): W1 residual, outputs, random baseline."""

    def run() -> None:
        apply_max_memory(max_memory)
        resolve_device(device)  # ONNX Runtime present, CUDA where asked: before any work
        options = image_options(resize, layout, scale, mean, std)
        shapes = parse_shapes(input_shapes)
        if second is None:
            data = _validate_saved(model, first, options, shapes, layer, device, precision,
                                   seed, progress)
            passed = all(v["passed"] for v in data["validations"])
            write_stdout(_json(data) if fmt == "json" else render_saved_validations(data))
        else:
            data = _validate_pair(model, first, second, options, shapes, layer, device,
                                  precision, seed)
            passed = bool(data["passed"])
            write_stdout(_json(data) if fmt == "json" else render_validation_table(data))
        sys.exit(0 if passed else 1)

    run_guarded(run, debug)


def _validate_pair(model: str, first: str, second: str, options: ImageOptions,
                   shapes: dict[str, tuple[int, ...]], layer: str | None, device: str,
                   precision: str, seed: int) -> dict[str, Any]:
    """One pair of input files: the validation dict and how each input was made."""
    loaded = load_model(model)
    _check_layer(loaded, layer)
    files_a = parse_assignments((first,), "FIRST")
    files_b = parse_assignments((second,), "SECOND")
    check_image_options(options, [*files_a.values(), *files_b.values()], model)

    def image_of(files: dict[str | None, str]) -> ImageOptions:
        return options if any(is_image(f) for f in files.values()) else ImageOptions()

    feeds_a, records_a = read_inputs(loaded, files_a, shapes, seed, image_of(files_a),
                                     option="FIRST", precision=precision)
    feeds_b, records_b = read_inputs(loaded, files_b, shapes, seed, image_of(files_b),
                                     option="SECOND", precision=precision)
    tell_notices(records_a, records_b)
    target = layer or w1_output_name(model, feeds_a)
    runner = ModelRunner(model, extra_outputs=[target] if target else [],
                         device=device, precision=precision)
    check = validate_pair(runner, feeds_a, feeds_b, target, seed,
                          Tolerances.for_run(runner, target))
    return {**validation_dict(check), "inputs": {"first": records_a, "second": records_b}}


def _check_layer(model: LoadedModel, layer: str | None) -> None:
    """``--layer`` names a tensor both inputs can move: not empty, not a graph input (the
    inputs themselves), and one that depends on them (a weight, or a tensor computed from
    weights alone, is the same for both inputs: a residual of 0 says nothing). Unknown names
    are refused where the tensor is made an output.

    Raises:
        UsageError: one of those.
    """
    if layer is None:
        return
    graph = model.proto.graph
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    if not layer:
        why = "is empty"
    elif layer in inputs:
        why = "is a model input, not a layer's output"
    elif layer not in _moved_by(graph, inputs) and _is_tensor(graph, layer):
        why = "does not depend on the model's inputs (a weight, or computed from weights " \
              "alone), so it is the same for both inputs"
    else:
        return
    raise UsageError(f"--layer '{layer}' {why}", model.path,
                     "name a node output, such as W1's (the default when --layer is left out)")


def _moved_by(graph: Any, inputs: set[str]) -> set[str]:
    """The main graph's tensors that depend on ``inputs`` (nodes are in topological order;
    a node holding a subgraph counts as depending on them, as its body may read them)."""
    moved = set(inputs)
    for node in graph.node:
        holds_graph = any(a.HasField("g") or a.graphs for a in node.attribute)
        if holds_graph or any(name in moved for name in node.input):
            moved.update(node.output)
    return moved


def _is_tensor(graph: Any, name: str) -> bool:
    """Whether ``name`` is a node output or an initializer of the main graph."""
    return any(name in node.output for node in graph.node) or \
        any(i.name == name for i in graph.initializer)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def _validate_saved(model: str, path: str, options: ImageOptions,
                    shapes: dict[str, tuple[int, ...]], layer: str | None, device: str,
                    precision: str, seed: int, progress: bool | None) -> dict[str, Any]:
    """Every colliding input of collide's ``collisions.npz`` against its original.

    Raises:
        UsageError: FIRST is not such a file, or options that a saved file makes moot.
    """
    check_input_file(path)  # not found, a folder, a pipe (is_zipfile would block on one)
    if not is_saved_collisions(path):
        raise UsageError("with one input file, FIRST must be the collisions.npz that "
                         "onnxcollide collide wrote (arrays 'original' and 'colliding')", path,
                         "give two input files: validate MODEL FIRST SECOND")
    if options != ImageOptions() or shapes:
        raise UsageError("image options and --input-shape do not apply to a saved "
                         "collisions.npz (it holds the arrays as collide fed them)", path,
                         "drop the image options and --input-shape")
    loaded = load_model(model)
    _check_layer(loaded, layer)
    saved = read_saved_collisions(path, loaded)
    _tell_precision(saved, precision)
    target = layer or w1_output_name(model, saved.feeds)
    with progress_steps(progress, "validating") as step:
        checks, runtime = validate_moved(model, saved.feeds, saved.input_name,
                                         list(saved.colliding), target, device, precision,
                                         seed, step)
    if runtime["notice"]:
        click.echo(f"notice: {runtime['notice']}", err=True)
    return {"source": file_record(path, "collisions"), "input": saved.input_name,
            "runtime": runtime, "validations": checks}


def _tell_precision(saved: SavedCollisions, precision: str) -> None:
    """A float64 collision validated in float32 is rounded first: say so."""
    if saved.colliding.dtype == np.float64 and precision != "float64":
        click.echo(f"notice: {saved.path} holds float64 colliding inputs (collide "
                   "--precision float64); a float32 run rounds them: pass --precision "
                   "float64 to check them as they were proven", err=True)
