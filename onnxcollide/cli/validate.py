"""`onnxcollide validate`: do two inputs collide? W1 residual, outputs, a random baseline."""

from __future__ import annotations

import json
import sys

import click

from onnxcollide.cli.options import (
    image_options,
    input_options,
    parse_shapes,
    run_guarded,
    tell_notices,
)
from onnxcollide.collide.inputs import (
    ImageOptions,
    check_image_options,
    is_image,
    parse_assignments,
    read_inputs,
)
from onnxcollide.collide.search import w1_output_name
from onnxcollide.graph.load import load_model
from onnxcollide.report.collide_format import render_validation_table
from onnxcollide.report.files import write_stdout
from onnxcollide.runtime.session import ModelRunner, resolve_device
from onnxcollide.runtime.validate import Tolerances, validate_pair, validation_dict


@click.command()
@click.argument("model", type=click.Path())
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
@click.option("--layer", help="Tensor to compare as W1's output (default: W1's output).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]),
              default="table", show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@input_options
def validate(model: str, first: str, second: str, layer: str | None, fmt: str,
             debug: bool, input_shapes: tuple[str, ...], resize: str | None, layout: str,
             scale: float, mean: str | None, std: str | None, device: str,
             precision: str, seed: int) -> None:
    """Check whether two inputs (files) collide: W1 residual, outputs, random baseline."""

    def run() -> None:
        resolve_device(device)  # ONNX Runtime present, CUDA where asked: before any work
        options = image_options(resize, layout, scale, mean, std)
        shapes = parse_shapes(input_shapes)
        loaded = load_model(model)
        files_a = parse_assignments((first,), "FIRST")
        files_b = parse_assignments((second,), "SECOND")
        check_image_options(options, [*files_a.values(), *files_b.values()], model)

        def image_of(files: dict[str | None, str]) -> ImageOptions:
            return options if any(is_image(f) for f in files.values()) else ImageOptions()

        feeds_a, records_a = read_inputs(loaded, files_a, shapes, seed, image_of(files_a),
                                         option="FIRST")
        feeds_b, records_b = read_inputs(loaded, files_b, shapes, seed, image_of(files_b),
                                         option="SECOND")
        tell_notices(records_a, records_b)
        target = layer or w1_output_name(model, feeds_a)
        runner = ModelRunner(model, extra_outputs=[target] if target else [],
                             device=device, precision=precision)
        check = validate_pair(runner, feeds_a, feeds_b, target, seed,
                              Tolerances.for_run(runner, target))
        data = {**validation_dict(check), "inputs": {"first": records_a,
                                                     "second": records_b}}
        write_stdout(json.dumps(data, indent=2, allow_nan=False) + "\n" if fmt == "json"
                     else render_validation_table(data))
        sys.exit(0 if data.get("passed") else 1)

    run_guarded(run, debug)
