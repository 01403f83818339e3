"""`onnxcollide compare`: several exports of one network side by side, layer by layer.

Exit 0 when every aligned layer has the same rank and nullity, the weights relate and nothing
is unmatched (and, with --run/--transfer, outputs agree and collisions transfer); 1 when
something differs (listed first); 2 usage; 3 a model that cannot be read.
"""

from __future__ import annotations

import os
import sys

import click

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import AuditSettings
from onnxcollide.cli.audit import check_report_path
from onnxcollide.cli.exit_codes import EXIT_FAILED, EXIT_OK
from onnxcollide.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    apply_max_memory,
    max_memory_option,
    option_given,
    report_format,
    run_guarded,
    shapes_per_model,
)
from onnxcollide.compare.model import compare_models
from onnxcollide.compare.results import DEFAULT_TRANSFER_COUNT, CompareSettings
from onnxcollide.errors import UsageError
from onnxcollide.linalg.spectral import ToleranceRule
from onnxcollide.report.compare_format import CompareFormat, render_comparison
from onnxcollide.report.files import (
    stdout_is_terminal,
    write_claimed,
    write_stdout,
    write_text,
)

SUFFIXES = {".txt": CompareFormat.TABLE.value, ".json": CompareFormat.JSON.value,
            ".md": CompareFormat.MARKDOWN.value, ".markdown": CompareFormat.MARKDOWN.value,
            "": CompareFormat.TABLE.value}


def _format(ctx: click.Context, fmt: str, output: str | None) -> CompareFormat:
    """``-f`` where given, else the ``-o`` file's suffix, else a table.

    Raises:
        UsageError: ``-f`` contradicting the suffix, a suffix naming no format (without
            ``-f``), or options that only apply with --run/--transfer given without them.
    """
    ignored = [f"--{n}" for n in ("device", "seed") if option_given(ctx, n)]
    if ignored and not (ctx.params["run"] or ctx.params["transfer"]):
        raise UsageError(f"{ignored[0]} only applies with --run or --transfer",
                         hint=f"add --run or --transfer, or drop {ignored[0]}")
    if option_given(ctx, "count") and not ctx.params["transfer"]:
        raise UsageError("--count only applies with --transfer",
                         hint="add --transfer, or drop --count")
    return CompareFormat(report_format(ctx, fmt, output, SUFFIXES, CompareFormat.TABLE.value))


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="REFERENCE MODEL...")
@click.option("--format", "-f", "fmt", type=click.Choice([f.value for f in CompareFormat]),
              default=CompareFormat.TABLE.value,
              help="Report format [default: from the --output suffix (.json, .md, .txt), "
                   "else table].")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the report to this file ('-': standard output).")
@click.option("--match", "pins", multiple=True, metavar="NODE_A=[MODEL:]NODE_B",
              help="Pin a reference node to a node of another model (repeatable).")
@click.option("--run", is_flag=True,
              help="Run every model in ONNX Runtime on the same seeded inputs and compare "
                   "the outputs.")
@click.option("--transfer", is_flag=True,
              help="Make exact colliding inputs on the reference and run them through every "
                   "model (W1 residual against a random perturbation of equal norm).")
@click.option("--count", type=click.IntRange(min=1, max=64), default=DEFAULT_TRANSFER_COUNT,
              show_default=True, help="Colliding inputs made for --transfer.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the inputs, the colliding inputs and the random baselines.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Execution provider of --run and --transfer.")
@click.option("--structure-only", is_flag=True,
              help="Only rank, nullity and unmatched layers decide the exit code (weights "
                   "that differ are reported, not counted).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[MODEL:]NAME=DIMS",
              help="Fix an input's shape (repeatable); with MODEL: for that model only.")
@click.option("--conv-convention", type=click.Choice([c.value for c in ConvConvention]),
              default=ConvConvention.GROUPED.value, show_default=True,
              help="How grouped conv weights become matrices (as in audit).")
@click.option("--rtol", type=POSITIVE, help="Relative rank tolerance (as in audit).")
@click.option("--atol", type=NON_NEGATIVE, help="Absolute rank tolerance floor (as in audit).")
@max_memory_option
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def compare(models: tuple[str, ...], fmt: str, output: str | None, pins: tuple[str, ...],
            run: bool, transfer: bool, count: int, seed: int, device: str,
            structure_only: bool, input_shapes: tuple[str, ...], conv_convention: str,
            rtol: float | None, atol: float | None, max_memory: str | None,
            debug: bool) -> None:
    """Compare exports of one network layer by layer (the first model is the reference)."""
    ctx = click.get_current_context()

    def action() -> None:
        apply_max_memory(max_memory)
        chosen = _format(ctx, fmt, output)
        if len(models) < 2:
            raise UsageError("compare needs at least two models",
                             hint="give the reference first, then the models to compare")
        target = None if output in (None, "-") else output
        claimed = None if target is None else check_report_path(target, models)
        try:
            shapes = shapes_per_model(input_shapes, models)
            settings = CompareSettings(
                audit=AuditSettings(ConvConvention(conv_convention), ToleranceRule(rtol, atol)),
                input_shapes=tuple(shapes.items()), pins=pins, run=run, transfer=transfer,
                count=count, seed=seed, device=device, structure_only=structure_only)
            result = compare_models(models, settings)
            to_terminal = target is None and stdout_is_terminal()
            width = os.get_terminal_size().columns if to_terminal else 160
            text = render_comparison(result, chosen, width, to_terminal)
            if target is None:
                write_stdout(text)
            elif claimed is not None:
                write_claimed(claimed, target, lambda out: out.write(text.encode("utf-8")))
            else:
                write_text(target, text)
                click.echo(f"wrote {target}", err=True)
        finally:
            if claimed is not None:
                os.close(claimed)
        sys.exit(EXIT_OK if result.same else EXIT_FAILED)

    run_guarded(action, debug)
