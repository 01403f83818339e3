"""`onnxcollide collide`: make inputs that collide with a given one at W1, save them, prove them."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from functools import partial
from typing import Any

import click
import numpy as np

from onnxcollide.cli.options import (
    ANY_FINITE,
    NON_NEGATIVE,
    POSITIVE,
    PhaseReporter,
    apply_max_memory,
    image_options,
    input_options,
    max_memory_option,
    option_given,
    parse_floats,
    parse_shapes,
    progress_phases,
    run_guarded,
    tell_notices,
)
from onnxcollide.collide.context import check_applicable
from onnxcollide.collide.inputs import image_channel_range, parse_assignments, read_inputs
from onnxcollide.collide.results import MODES, CollisionSet, SearchSettings
from onnxcollide.collide.saved import FEED_PREFIX
from onnxcollide.collide.search import find_collisions, first_layer_kernel
from onnxcollide.errors import UsageError
from onnxcollide.graph.load import load_model
from onnxcollide.limits import ResourceLimitError, for_chosen_shape
from onnxcollide.linalg.spectral import ToleranceRule
from onnxcollide.report.collide_format import collide_dict, render_json, render_table, settings_dict
from onnxcollide.report.files import save_npz, write_stdout, write_text
from onnxcollide.report.images import basis_png, image_layout, plan_strip, strip_png
from onnxcollide.report.output_set import Writer, check_output_set_folder, write_output_set
from onnxcollide.runtime.collisions import float64_value, validate_collisions
from onnxcollide.runtime.session import RunFailedError, resolve_device
from onnxcollide.runtime.validate import verdict_word


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


def _saved_arrays(found: CollisionSet, precision: str) -> dict[str, np.ndarray]:
    """What ``collisions.npz`` holds: the original, the colliding inputs as they were proven
    (float64 after a float64 validation: ``x + exact_delta`` before any rounding), their
    perturbations and betas, the perturbed input's name and every other input's value, so
    ``validate MODEL collisions.npz`` can run them again."""
    x = found.feeds[found.input_name]
    if precision == "float64":
        colliding = [float64_value(x, c.exact_delta) for c in found.collisions]
        deltas = [c.exact_delta for c in found.collisions]
    else:
        colliding = [c.value for c in found.collisions]
        deltas = [c.delta for c in found.collisions]
    arrays = {"original": x, "colliding": np.stack(colliding), "delta": np.stack(deltas),
              "beta": np.array([c.beta for c in found.collisions]),
              "beta_min": np.array([c.beta_min for c in found.collisions]),
              "input_name": np.array(found.input_name)}
    arrays.update({FEED_PREFIX + name: value for name, value in found.feeds.items()
                   if name != found.input_name})
    return arrays


def _caption(found: CollisionSet, index: int, validation: dict[str, Any] | None
             ) -> tuple[str, ...]:
    """The figures under strip ``index``: beta, |d|, W1's residual against the random
    baseline's, the verdict, exact or approximate."""
    collision = found.collisions[index]
    kind = "exact" if found.exact and not collision.approximate else "approximate"
    first = (f"colliding input {index}: beta {collision.beta:.3g}, |d|_2 "
             f"{float(np.linalg.norm(collision.delta)):.3g}, {kind}")
    if validation is None:
        return first, "not validated"
    residual = validation["collision"]["layer_residual"]
    baseline = validation["baseline"]["layer_residual"]
    shown = "-" if residual is None else f"{residual:.2g}"
    random = "-" if baseline is None else f"{baseline:.2g}"
    return first, (f"W1 residual {shown} (random, same norm: {random}): "
                   f"{verdict_word(validation)}")


def _outputs(out: str, found: CollisionSet, report_settings: dict[str, Any],
             basis: tuple[np.ndarray, tuple[int, ...], np.ndarray] | None,
             validations: list[dict[str, Any] | None], precision: str
             ) -> tuple[dict[str, str], dict[str, Writer], dict[str, Any]]:
    """What a run writes: {kind: final path} for the report, {file name: writer} for
    ``write_output_set`` (nothing is written here), and how each picture is drawn."""
    files: dict[str, str] = {}
    writers: dict[str, Writer] = {}
    rendering: dict[str, Any] = {}
    x = found.feeds[found.input_name]
    if found.collisions:
        arrays = _saved_arrays(found, precision)
        files["inputs"] = os.path.join(out, "collisions.npz")
        writers["collisions.npz"] = partial(save_npz, arrays=arrays, settings=report_settings)
        layout = image_layout(tuple(x.shape))
        for k, c in enumerate(found.collisions if layout else ()):
            name = f"strip-{c.index}.png"
            plan = plan_strip(x, arrays["colliding"][k], str(layout),
                              _caption(found, k, validations[k]))
            files[f"strip {c.index}"] = os.path.join(out, name)
            rendering[name] = plan.record()
            writers[name] = partial(strip_png, original=x, colliding=arrays["colliding"][k],
                                    rendering=plan)
    if basis is not None:
        files["basis images"] = os.path.join(out, "basis.png")
        rendering["basis.png"] = {"vectors": int(basis[0].shape[0]),
                                  "sigmas": [float(v) for v in basis[2]]}
        writers["basis.png"] = partial(basis_png, vectors=basis[0], patch_shape=basis[1],
                                       sigmas=basis[2])
    return files, writers, rendering


def _basis_vectors(found: CollisionSet, count: int
                   ) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """W1's first ``count`` kernel basis vectors, their patch shape and singular values
    (checked before any file is written)."""
    vectors, patch_shape, sigmas = first_layer_kernel(found.model, found.feeds, found.settings)
    if patch_shape is None:
        raise UsageError("--basis-images needs a conv first layer (per-patch kernel vectors)")
    if vectors.shape[0] == 0:
        raise UsageError("--basis-images: W1's kernel is trivial, there is nothing to draw")
    return vectors[:count], patch_shape, sigmas[:count]


def _search_settings(count: int, beta: float, basis: str, seed: int, region: str | None,
                     valid_range: str | None, mode: str, input_name: str | None,
                     rule: ToleranceRule) -> SearchSettings:
    """SearchSettings from collide's options.

    Raises:
        UsageError: a bad --range, --basis, or --beta 0 (which moves nothing).
    """
    bounds = parse_floats(valid_range, "--range", 2)
    if bounds and bounds[0] >= bounds[1]:
        raise UsageError(f"--range {valid_range}: LO must be below HI")
    if beta == 0:
        raise UsageError("--beta 0 does not move the input, so it makes no colliding input",
                         hint="give a non-zero --beta, e.g. --beta 1")
    return SearchSettings(count, beta, _basis(basis), seed, region,
                          (bounds[0], bounds[1]) if bounds else None, mode, input_name, rule)


def _validate(found: CollisionSet, enabled: bool, device: str, precision: str, seed: int,
              reporter: PhaseReporter) -> tuple[list[dict[str, Any] | None],
                                               dict[str, Any] | None]:
    """Validation dicts (None where not validated) and the runtime facts (None if none)."""
    if not enabled or not found.collisions:
        return [None] * len(found.collisions), None
    reporter.phase(f"validating {len(found.collisions)} colliding input(s) in ONNX Runtime")
    done, runtime = validate_collisions(found, device, precision, seed, reporter.step)
    if runtime["notice"]:
        click.echo(f"notice: {runtime['notice']}", err=True)
    return list(done), runtime


def _mapped_range(settings: SearchSettings, space: str, name: str,
                  record: dict[str, Any] | None, value: np.ndarray) -> SearchSettings:
    """``settings`` with --range mapped into the model's units where it is in an image's
    (``--range-space image``, or ``auto`` for an image input).

    Raises:
        UsageError: ``--range-space image`` for an input that is not an image file, or
            ``--range-space`` without ``--range``.
    """
    is_image_input = record is not None and record.get("source") == "image"
    if settings.valid_range is None:
        if space != "auto":
            raise UsageError("--range-space only applies with --range",
                             hint="add --range LO,HI, or drop --range-space")
        return settings
    if space == "image" and not is_image_input:
        raise UsageError(f"--range-space image: the input '{name}' is not read from an image "
                         "file", hint="give its --range in the model's units (--range-space "
                                      "model), or give an image with --input")
    if space == "model" or not is_image_input or record is None:
        return settings
    return replace(settings, channel_range=image_channel_range(record, settings.valid_range,
                                                               value))


def _write_outputs(out: str, found: CollisionSet,
                   drawing: tuple[np.ndarray, tuple[int, ...], np.ndarray] | None,
                   validations: list[dict[str, Any] | None],
                   runtime: dict[str, Any] | None,
                   inputs: dict[str, dict[str, Any]], precision: str) -> dict[str, Any]:
    """Write the whole output set (report.json included) into ``out``; return the report.
    ``inputs``: how each model input was made (``read_inputs``' records)."""
    files, writers, rendering = _outputs(out, found, settings_dict(found, inputs), drawing,
                                         validations, precision)
    files["report"] = os.path.join(out, "report.json")
    report = collide_dict(found, validations, runtime, files, inputs, rendering)
    writers["report.json"] = partial(write_text, text=render_json(report))
    write_output_set(out, writers)
    return report


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


@click.command()
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
              help="Keep every colliding input inside [LO, HI] by bounding beta (never by "
                   "clipping). For an image input in image units (pixel value x --scale, "
                   "before --mean/--std: 0,1 with the default scale), mapped per channel "
                   "into the model's units; otherwise in the model's units.")
@click.option("--range-space", type=click.Choice(["auto", "image", "model"]), default="auto",
              show_default=True,
              help="Units of --range: image (pixel value x --scale), model (the values the "
                   "model is fed), auto: image for an image input, else model.")
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
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr: loading, the kernel or operator analysis, validation "
                   "(default: when stderr is a terminal).")
@max_memory_option
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@input_options
def collide(model: str, input_files: tuple[str, ...], count: int, beta: float, basis: str,
            region: str | None, valid_range: str | None, range_space: str, mode: str,
            input_name: str | None, out: str, basis_images: int, no_validate: bool,
            fmt: str, rtol: float | None, atol: float | None, progress: bool | None,
            max_memory: str | None, debug: bool, input_shapes: tuple[str, ...],
            resize: str | None, layout: str, scale: float, mean: str | None, std: str | None,
            device: str, precision: str, seed: int) -> None:
    """Make inputs that collide with a given input at W1 (Null-space search) and prove it."""
    ctx = click.get_current_context()

    def run() -> None:
        apply_max_memory(max_memory)
        _refuse_ignored(ctx, no_validate)
        settings = _search_settings(count, beta, basis, seed, region, valid_range, mode,
                                    input_name, ToleranceRule(rtol, atol))
        image = image_options(resize, layout, scale, mean, std)
        shapes = parse_shapes(input_shapes)
        check_output_set_folder(out)
        if not no_validate:  # ONNX Runtime present, CUDA where asked: before any work
            resolve_device(device)
        with progress_phases(progress, os.path.basename(model)) as reporter:
            reporter.phase("loading the model and its inputs")
            perturbed = check_applicable(model, shapes, input_name)
            feeds, records = read_inputs(load_model(model),
                                         parse_assignments(input_files, "--input"), shapes,
                                         seed, image, settings.valid_range)
            tell_notices(records)
            settings = _mapped_range(settings, range_space, perturbed, records.get(perturbed),
                                     feeds[perturbed])
            try:
                found = find_collisions(model, feeds, settings, reporter.phase)
                drawing = _basis_vectors(found, basis_images) if basis_images else None
                validations, runtime = _validate(found, not no_validate, device, precision,
                                                 seed, reporter)
            except RunFailedError as exc:  # on random draws of the declared shapes: the model
                if input_files or input_shapes:
                    raise
                raise exc.model_error() from exc
            except ResourceLimitError as exc:  # an operator sized by the perturbed input
                usage = for_chosen_shape(exc, "--input-shape") if perturbed in shapes else exc
                if usage is exc:  # the model's doing, or a shape the user did not choose
                    raise
                raise usage from None
            reporter.phase("writing the outputs")
            report = _write_outputs(out, found, drawing, validations, runtime, records,
                                    precision)
        # the outputs are the run's result: a closed standard output only misses the table
        write_stdout(render_json(report) if fmt == "json" else render_table(report, 160),
                     needed=False)
        if runtime and not all(v and v.get("passed") for v in validations):
            sys.exit(_failed_validation(found.exact and not any(c.approximate
                                                                for c in found.collisions)))

    run_guarded(run, debug)


def _refuse_ignored(ctx: click.Context, no_validate: bool) -> None:
    """Options that --no-validate would ignore are usage errors.

    Raises:
        UsageError: --device or --precision given with --no-validate.
    """
    ignored = [f"--{name}" for name in ("device", "precision") if option_given(ctx, name)]
    if no_validate and ignored:
        named = " and ".join(ignored)
        verb = "applies" if len(ignored) == 1 else "apply"
        raise UsageError(f"{named} only {verb} to validation, which --no-validate skips",
                         hint=f"drop --no-validate, or drop {named}")
