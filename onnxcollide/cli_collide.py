"""`onnxcollide collide` and `onnxcollide validate`: make colliding inputs, prove them in ORT."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import click
import numpy as np

from onnxcollide.artifacts import (
    basis_png,
    image_layout,
    save_npz,
    strip_png,
    write_stdout,
    write_text,
)
from onnxcollide.cli_types import ANY_FINITE, NON_NEGATIVE, POSITIVE, SEED
from onnxcollide.errors import UsageError
from onnxcollide.graph.load import load_model
from onnxcollide.inputs import (
    ImageOptions,
    check_image_options,
    is_image,
    parse_assignments,
    read_inputs,
)
from onnxcollide.output_set import Writer, check_output_set_folder, write_output_set
from onnxcollide.report.collide_format import (
    collide_dict,
    render_json,
    render_table,
    render_validation_table,
    settings_dict,
)
from onnxcollide.search import MODES, CollisionSet, SearchSettings, find_collisions
from onnxcollide.spectral import ToleranceRule


def _floats(text: str | None, option: str, count: int | None = None) -> tuple[float, ...] | None:
    """``"0.5,0.25"`` -> (0.5, 0.25); every value must be a finite number.

    Raises:
        UsageError: not numbers, not finite (nan, inf), or not ``count`` of them.
    """
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise UsageError(f"{option} '{text}' is not a comma-separated list of numbers") from exc
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option} '{text}' holds a value that is not a finite number",
                         hint=f"give {option} finite numbers")
    if count is not None and len(values) != count:
        raise UsageError(f"{option} '{text}' needs {count} numbers")
    return values


def _shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from onnxcollide.cli import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise UsageError(f"--input-shape sets input '{name}' twice",
                             hint="give one --input-shape per input")
        shapes[name] = dims
    return shapes


def _resize(text: str | None) -> tuple[int, int] | None:
    """``"224x224"`` -> (224, 224): two positive integers.

    Raises:
        UsageError: not HxW, or a zero size.
    """
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise UsageError(f"--resize '{text}' is not HxW", hint="e.g. --resize 224x224")
    height, width = int(parts[0]), int(parts[1])
    if height == 0 or width == 0:
        raise UsageError(f"--resize '{text}': height and width must be at least 1",
                         hint="e.g. --resize 224x224")
    return height, width


def _image_options(resize: str | None, layout: str, scale: float, mean: str | None,
                   std: str | None) -> ImageOptions:
    """ImageOptions from the option texts (the counts of --mean/--std are checked per image).

    Raises:
        UsageError: a bad --resize, --mean or --std (a std of 0 or below).
    """
    stds = _floats(std, "--std")
    if stds is not None and min(stds) <= 0:
        raise UsageError(f"--std '{std}' holds a value that is not positive",
                         hint="every standard deviation must be above 0")
    return ImageOptions(_resize(resize), layout, scale, _floats(mean, "--mean"), stds)


def _basis(text: str) -> tuple[int, ...]:
    """``random`` -> (), ``"0,3"`` -> (0, 3): non-negative kernel basis indices.

    Raises:
        UsageError: neither ``random`` nor non-negative integers.
    """
    if text == "random":
        return ()
    try:
        indices = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise UsageError(f"--basis '{text}' is neither 'random' nor indices like 0,3,7") from exc
    if min(indices) < 0:
        raise UsageError(f"--basis '{text}' holds a negative index",
                         hint="kernel basis indices start at 0, e.g. --basis 0,3")
    return indices


def input_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by commands that read model inputs."""
    options = [
        click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                     help="Shape for a random draw or a dynamic input, e.g. x=1x3x224x224."),
        click.option("--resize", metavar="HxW", help="Resize image inputs."),
        click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto",
                     show_default=True, help="Layout of image inputs."),
        click.option("--scale", type=POSITIVE, default=1.0 / 255.0, show_default=True,
                     help="Multiply image pixel values (0..255) by this."),
        click.option("--mean", metavar="M1,M2,M3", help="Subtract per-channel means (images)."),
        click.option("--std", metavar="S1,S2,S3", help="Divide by per-channel stds (images)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="ONNX Runtime execution provider."),
        click.option("--precision", type=click.Choice(["float32", "float64"]),
                     default="float32", show_default=True,
                     help="float64 runs a float64 copy of the model (Section 6)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Seeds every random draw."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _outputs(out: str, found: CollisionSet, report_settings: dict[str, Any],
             basis: tuple[np.ndarray, tuple[int, ...]] | None
             ) -> tuple[dict[str, str], dict[str, Writer]]:
    """What a run writes: {kind: final path} for the report, {file name: writer} for
    ``write_output_set`` (nothing is written here)."""
    files: dict[str, str] = {}
    writers: dict[str, Writer] = {}
    x = found.feeds[found.input_name]
    if found.collisions:
        arrays = {"original": x,
                  "colliding": np.stack([c.value for c in found.collisions]),
                  "delta": np.stack([c.delta for c in found.collisions]),
                  "beta": np.array([c.beta for c in found.collisions]),
                  "beta_min": np.array([c.beta_min for c in found.collisions])}
        files["inputs"] = os.path.join(out, "collisions.npz")
        writers["collisions.npz"] = partial(save_npz, arrays=arrays, settings=report_settings)
        layout = image_layout(tuple(x.shape))
        if layout:
            for c in found.collisions:
                name = f"strip-{c.index}.png"
                files[f"strip {c.index}"] = os.path.join(out, name)
                writers[name] = partial(strip_png, original=x, colliding=c.value,
                                        layout=layout)
    if basis is not None:
        files["basis images"] = os.path.join(out, "basis.png")
        writers["basis.png"] = partial(basis_png, vectors=basis[0], patch_shape=basis[1])
    return files, writers


def _basis_vectors(found: CollisionSet, count: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """W1's first ``count`` kernel basis vectors and their patch shape (checked before any
    file is written)."""
    from onnxcollide.search import first_layer_kernel

    vectors, patch_shape = first_layer_kernel(found.model, found.feeds, found.settings)
    if patch_shape is None:
        raise UsageError("--basis-images needs a conv first layer (per-patch kernel vectors)")
    if vectors.shape[0] == 0:
        raise UsageError("--basis-images: W1's kernel is trivial, there is nothing to draw")
    return vectors[:count], patch_shape


def _search_settings(count: int, beta: float, basis: str, seed: int, region: str | None,
                     valid_range: str | None, mode: str, input_name: str | None,
                     rule: ToleranceRule) -> SearchSettings:
    """SearchSettings from collide's options.

    Raises:
        UsageError: a bad --range, --basis, or --beta 0 (which moves nothing).
    """
    bounds = _floats(valid_range, "--range", 2)
    if bounds and bounds[0] >= bounds[1]:
        raise UsageError(f"--range {valid_range}: LO must be below HI")
    if beta == 0:
        raise UsageError("--beta 0 does not move the input, so it makes no colliding input",
                         hint="give a non-zero --beta, e.g. --beta 1")
    return SearchSettings(count, beta, _basis(basis), seed, region,
                          (bounds[0], bounds[1]) if bounds else None, mode, input_name, rule)


def _validate(found: CollisionSet, enabled: bool, device: str, precision: str, seed: int
              ) -> tuple[list[dict[str, Any] | None], dict[str, Any] | None]:
    """Validation dicts (None where not validated) and the runtime facts (None if none)."""
    if not enabled or not found.collisions:
        return [None] * len(found.collisions), None
    from onnxcollide.validation import validate_collisions

    done, runtime = validate_collisions(found, device, precision, seed)
    if runtime["notice"]:
        click.echo(f"notice: {runtime['notice']}", err=True)
    return list(done), runtime


def _write_outputs(out: str, found: CollisionSet,
                   drawing: tuple[np.ndarray, tuple[int, ...]] | None,
                   validations: list[dict[str, Any] | None],
                   runtime: dict[str, Any] | None,
                   inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write the whole output set (report.json included) into ``out``; return the report.
    ``inputs``: how each model input was made (``read_inputs``' records)."""
    files, writers = _outputs(out, found, settings_dict(found, inputs), drawing)
    files["report"] = os.path.join(out, "report.json")
    report = collide_dict(found, validations, runtime, files, inputs)
    writers["report.json"] = partial(write_text, text=render_json(report))
    write_output_set(out, writers)
    return report


def _tell_notices(*records: dict[str, dict[str, Any]]) -> None:
    """Print the inputs' notices (an image resized without --resize) on stderr."""
    for by_name in records:
        for record in by_name.values():
            if "notice" in record:
                click.echo(f"notice: {record['notice']}", err=True)


def _failed_validation(exact: bool) -> int:
    """Say that some colliding inputs did not pass; return collide's exit code: 1 where they
    were claimed exact (the claim failed), 0 for approximate or tiled ones (not claimed)."""
    if exact:
        click.echo("some colliding inputs claimed exact did not pass validation (see the "
                   "report)", err=True)
        return 1
    click.echo("note: some colliding inputs did not pass validation; they are approximate "
               "(not claimed exact), so this is not a failure (see the report)", err=True)
    return 0


def register(main: click.Group, run_guarded: Callable[[Callable[[], None], bool], None]) -> None:
    """Add `collide` and `validate` to the CLI group."""

    @main.command()
    @click.argument("model", type=click.Path())
    @click.option("--input", "input_files", multiple=True, metavar="[NAME=]FILE",
                  help="Input value: .npy, .npz or an image (PNG/JPEG); default a seeded "
                       "random draw.")
    @click.option("--count", "-n", type=click.IntRange(min=1), default=1, show_default=True,
                  help="How many colliding inputs to make.")
    @click.option("--beta", type=ANY_FINITE, default=1.0, show_default=True,
                  help="Scale of each unit-norm kernel vector (not 0; negative flips it).")
    @click.option("--basis", default="random", show_default=True,
                  help="'random' (seeded combinations) or kernel basis indices, e.g. 0,3.")
    @click.option("--region", metavar="SLICES",
                  help="Only change elements in this numpy slice of one sample, e.g. "
                       ":,8:24,8:24.")
    @click.option("--range", "valid_range", metavar="LO,HI",
                  help="Keep every colliding input inside [LO, HI] by bounding beta.")
    @click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                  help="auto: exact; approximate: strongest approximate collision of an "
                       "overlapping conv; tiled: the paper's tiling (not a collision).")
    @click.option("--input-name", help="Which float input to perturb.")
    @click.option("--out", "-o", default="collisions", show_default=True,
                  help="Folder for collisions.npz, report.json and PNG strips.")
    @click.option("--basis-images", type=click.IntRange(min=0), default=0,
                  help="Also draw this many kernel basis vectors of W1 (basis.png).")
    @click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime check.")
    @click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]),
                  default="table", show_default=True, help="What to print.")
    @click.option("--rtol", type=POSITIVE,
                  help="Rank tolerance relative to sigma_max (as in audit).")
    @click.option("--atol", type=NON_NEGATIVE, help="Absolute rank tolerance.")
    @click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
    @input_options
    def collide(model: str, input_files: tuple[str, ...], count: int, beta: float, basis: str,
                region: str | None, valid_range: str | None, mode: str,
                input_name: str | None, out: str, basis_images: int, no_validate: bool,
                fmt: str, rtol: float | None, atol: float | None, debug: bool,
                input_shapes: tuple[str, ...], resize: str | None, layout: str, scale: float,
                mean: str | None, std: str | None, device: str, precision: str,
                seed: int) -> None:
        """Make inputs that collide with a given input at W1 (Null-space search) and prove it."""

        def run() -> None:
            settings = _search_settings(count, beta, basis, seed, region, valid_range, mode,
                                        input_name, ToleranceRule(rtol, atol))
            image = _image_options(resize, layout, scale, mean, std)
            shapes = _shapes(input_shapes)
            check_output_set_folder(out)
            from onnxcollide.search import check_applicable

            check_applicable(model, shapes, input_name)
            feeds, records = read_inputs(load_model(model),
                                         parse_assignments(input_files, "--input"), shapes,
                                         seed, image, settings.valid_range)
            _tell_notices(records)
            found = find_collisions(model, feeds, settings)
            drawing = _basis_vectors(found, basis_images) if basis_images else None
            validations, runtime = _validate(found, not no_validate, device, precision, seed)
            report = _write_outputs(out, found, drawing, validations, runtime, records)
            show = render_json(report) if fmt == "json" else render_table(report, 160)
            write_stdout(show)
            if runtime and not all(v and v.get("passed") for v in validations):
                sys.exit(_failed_validation(found.exact))

        run_guarded(run, debug)

    @main.command()
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
            from onnxcollide.runtime import (
                ModelRunner,
                Tolerances,
                validate_pair,
                validation_dict,
            )
            from onnxcollide.search import w1_output_name

            options = _image_options(resize, layout, scale, mean, std)
            shapes = _shapes(input_shapes)
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
            _tell_notices(records_a, records_b)
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
