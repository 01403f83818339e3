"""`onnxcollide audit`: rank and nullity of every weight and the paper's Table 1, as a report.

ONNX Runtime is imported only for ``--validate`` (``audit`` itself needs none installed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace

import click

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import AuditSettings, ModelAudit, ProgressCallback, audit_model
from onnxcollide.cli.options import (
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    apply_max_memory,
    max_memory_option,
    option_given,
    progress_phases,
    progress_reporter,
    report_format,
    run_guarded,
    shapes_per_model,
)
from onnxcollide.errors import OnnxCollideError, UsageError
from onnxcollide.linalg.spectral import GramEngine, ToleranceRule
from onnxcollide.report.files import (
    claim_descriptor,
    stdout_is_terminal,
    write_claimed,
    write_stdout,
    write_text,
)
from onnxcollide.report.options import Format, RenderOptions
from onnxcollide.report.render import render


def check_report_path(path: str, models: tuple[str, ...]) -> int | None:
    """Fail before any work when the report could not be written or would replace a model
    or one of its external data files.

    Returns:
        A duplicate of the descriptor a path such as ``/dev/fd/3`` names, claimed now
        (``report.files.claim_descriptor``); None for a file path.

    Raises:
        UsageError: an empty path, a missing folder, a folder, one of ``models`` or their
            external data files, or a descriptor that is not open.
    """
    if not path:
        raise UsageError("needs a file name", "--output ''", "use '-' for standard output")
    claimed = claim_descriptor(path)
    if claimed is None:
        check_output_folder(path)
    target = os.fstat(claimed) if claimed is not None else \
        os.stat(path) if os.path.exists(path) else None
    replaced = None if target is None else next(
        (what for what, read in _files_read(models)
         if os.path.exists(read) and os.path.samestat(target, os.stat(read))), None)
    if replaced is not None:
        if claimed is not None:
            os.close(claimed)
        raise UsageError(f"is {replaced}: the report would replace it", f"--output {path}",
                         "choose another file name")
    return claimed


def _files_read(models: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(what it is, path) for each model file and each of its external data files; a model
    that cannot be read is left to the audit to report."""
    from onnxcollide.graph.load import external_data_files, load_model

    for model in models:
        yield f"the model '{model}'", model
        try:
            loaded = load_model(model) if os.path.isfile(model) else None
        except OnnxCollideError:
            continue
        for data in external_data_files(loaded) if loaded else ():
            yield f"an external data file of the model '{model}'", data


def check_output_folder(path: str) -> None:
    """Fail before any work when the report could not be written.

    Raises:
        UsageError: the folder of ``path`` does not exist or ``path`` is a folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder '{folder}' does not exist", f"--output {path}",
                         "create it first or choose another path")
    if os.path.isdir(path):
        raise UsageError("is a folder", f"--output {path}", "give a file name")


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--format", "-f", "fmt", type=click.Choice([f.value for f in Format]),
              default=Format.TABLE.value,
              help="Report format [default: from the --output file's suffix (.json, .csv, "
                   ".md, .txt), else table].")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the report to this file instead of standard output ('-': standard "
                   "output).")
@click.option("--conv-convention", type=click.Choice([c.value for c in ConvConvention]),
              default=ConvConvention.GROUPED.value, show_default=True,
              help="grouped: block-diagonal operator rank; paper: one (C/g*k*k) x O matrix as "
                   "in the paper's Table 1.")
@click.option("--rtol", type=POSITIVE,
              help="Relative tolerance: tol = rtol * sigma_max (default max(q,p) * eps).")
@click.option("--atol", type=NON_NEGATIVE,
              help="Absolute tolerance floor: tol = max(atol, relative tol).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[MODEL:]NAME=DIMS",
              help="Fix an input's shape, e.g. input=1x3x224x224 (repeatable); with a "
                   "MODEL: prefix (its path or file name) for that model only.")
@click.option("--summary-only", is_flag=True, help="Only the Table 1 summary, a row per model.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--validate", "check", is_flag=True,
              help="Also make one colliding input for a seeded random input and prove it in "
                   "ONNX Runtime (the report's W1 check).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of --validate.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True,
              help="Execution provider of --validate; cuda also forms the float64 Gram "
                   "matrices of large weights on the GPU through ONNX Runtime (otherwise "
                   "BLAS on the CPU).")
@max_memory_option
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def audit(models: tuple[str, ...], fmt: str, output: str | None, conv_convention: str,
          rtol: float | None, atol: float | None, input_shapes: tuple[str, ...],
          summary_only: bool, progress: bool | None, check: bool, seed: int, device: str,
          max_memory: str | None, debug: bool) -> None:
    """Rank and nullity of every Conv/Gemm/MatMul weight, and the paper's Table 1 metrics."""
    ctx = click.get_current_context()

    def run() -> None:
        apply_max_memory(max_memory)
        target = None if output == "-" or output is None else output
        claimed = None if target is None else check_report_path(target, models)
        try:
            _audit_and_report(target, claimed, _audit_format(ctx, fmt, output, check))
        finally:
            if claimed is not None:
                os.close(claimed)

    def _audit_and_report(target: str | None, claimed: int | None, fmt: str) -> None:
        if check or device == "cuda":  # no CUDA: a usage error before any work
            from onnxcollide.runtime.session import resolve_device

            resolve_device(device)
        shapes = shapes_per_model(input_shapes, models)
        base = AuditSettings(convention=ConvConvention(conv_convention),
                             rule=ToleranceRule(rtol, atol), gram=_gram_engine(device))
        show = sys.stderr.isatty() if progress is None else progress
        audits: list[ModelAudit] = []
        for path in models:
            settings = replace(base, input_shapes=shapes[path])
            with progress_reporter(show, os.path.basename(path)) as callback:
                result = _audit_one(path, settings, callback, len(models))
            if check:
                from onnxcollide.runtime.collisions import check_w1

                with progress_phases(show, os.path.basename(path)) as reporter:
                    reporter.phase("W1 check: one colliding input, validated in ONNX Runtime")
                    result = replace(result, validation=check_w1(
                        path, dict(settings.input_shapes), seed, device, "float32",
                        settings.rule, reporter.phase))
            audits.append(result)
        to_terminal = target is None and stdout_is_terminal()
        width = os.get_terminal_size().columns if to_terminal else 160
        text = render(audits, Format(fmt), RenderOptions(summary_only, width, to_terminal))
        if target is None:
            write_stdout(text)
            return
        if claimed is not None:
            write_claimed(claimed, target, lambda out: out.write(text.encode("utf-8")))
        else:
            write_text(target, text)
        click.echo(f"wrote {target}", err=True)

    run_guarded(run, debug)


def _gram_engine(device: str) -> GramEngine | None:
    """The GPU Gram engine for ``--device cuda`` (ONNX Runtime imported only then)."""
    if device != "cuda":
        return None
    from onnxcollide.runtime.gram import gram_engine

    return gram_engine(device)


SUFFIX_FORMATS = {".txt": Format.TABLE.value, ".json": Format.JSON.value,
                  ".md": Format.MARKDOWN.value, ".markdown": Format.MARKDOWN.value,
                  ".csv": Format.CSV.value, "": Format.TABLE.value}


def _audit_format(ctx: click.Context, fmt: str, output: str | None, check: bool) -> str:
    """The report format: ``-f`` where given, else the ``-o`` file's suffix (``.json``,
    ``.csv``, ``.md``; ``.txt`` or none: a table), else a table. Options that would be
    ignored or contradict each other are refused (``-f`` with a ``.txt`` file is fine).

    Raises:
        UsageError: --seed without --validate (it would be ignored);
            --summary-only with JSON (which always holds every layer); an ``-o`` suffix that
            names another format than ``-f``, or, without ``-f``, no format at all.
    """
    if not check and option_given(ctx, "seed"):
        raise UsageError("--seed only applies with --validate",
                         hint="add --validate, or drop --seed")
    chosen = report_format(ctx, fmt, output, SUFFIX_FORMATS, Format.TABLE.value)
    if chosen == Format.JSON.value and option_given(ctx, "summary_only"):
        raise UsageError("--summary-only does not apply to JSON, which always holds every "
                         "layer (its metrics are the summary)",
                         hint="drop --summary-only, or use -f csv, markdown or table")
    return chosen


def _audit_one(path: str, settings: AuditSettings, callback: ProgressCallback | None,
               models: int) -> ModelAudit:
    """audit_model; with several models, an --input-shape naming an input this one lacks
    also says how to aim it at one model (MODEL:NAME=DIMS, which only audit takes)."""
    try:
        return audit_model(path, settings, callback)
    except UsageError as exc:
        if models > 1 and exc.what.startswith("--input-shape names input"):
            exc.hint += " (to fix one model of several, write MODEL:NAME=DIMS)"
            exc.args = (exc.one_line(),)
        raise
