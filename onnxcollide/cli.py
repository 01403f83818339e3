"""Command line: parse, call one core function, render, exit with a code a CI gate can use.

Exit codes: 0 success; 1 a check failed (collide: a collision claimed exact did not pass
validation; validate: the inputs do not collide; audit: reserved for the policy gate); 2 usage
error; 3 the model cannot be read or holds something we cannot analyse; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import click

from onnxcollide import __version__
from onnxcollide.artifacts import (
    claim_descriptor,
    names_descriptor,
    write_claimed,
    write_stdout,
    write_text,
)
from onnxcollide.audit import AuditSettings, ModelAudit, ProgressCallback, audit_model
from onnxcollide.cli_types import NON_NEGATIVE, POSITIVE, SEED
from onnxcollide.entry import EXIT_INTERRUPTED
from onnxcollide.errors import OnnxCollideError, UsageError
from onnxcollide.layers import ConvConvention
from onnxcollide.report import Format, RenderOptions, render
from onnxcollide.spectral import ToleranceRule

EXIT_USAGE = 2
EXIT_MODEL = 3


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name=1x3x224x224`` -> ("name", (1, 3, 224, 224)).

    Raises:
        UsageError: the text is not NAME=DIMS with positive integer dims.
    """
    name, sep, dims = text.rpartition("=")
    parts = dims.lower().replace(",", "x").split("x")
    if not sep or not name or not all(p.strip().isascii() and p.strip().isdigit()
                                      for p in parts):
        raise UsageError(f"--input-shape '{text}' is not NAME=DIMS",
                         hint="write it like input=1x3x224x224")
    if not all(int(p) > 0 for p in parts):
        raise UsageError(f"--input-shape '{text}' has a dimension 0",
                         hint="give every dimension as a positive integer, e.g. "
                              "input=1x3x224x224")
    return name, tuple(int(p) for p in parts)


def shapes_per_model(texts: tuple[str, ...], models: tuple[str, ...]
                     ) -> dict[str, tuple[tuple[str, tuple[int, ...]], ...]]:
    """The ``--input-shape`` overrides of each model of an audit.

    ``NAME=DIMS`` applies to every model; ``MODEL:NAME=DIMS`` only to the model given as
    MODEL (its path as written, or its file name; the longest match wins, so a path may hold
    colons). A prefix counts only where it names one of the models, so input names with a
    colon (tf2onnx's ``input_1:0``) stay whole.

    Raises:
        UsageError: a text is not [MODEL:]NAME=DIMS, its prefix looks like a model file but
            names none of them, or a file name prefix fits several models.
    """
    chosen: dict[str, dict[str, tuple[int, ...]]] = {m: {} for m in models}
    for text in texts:
        targets, rest = _prefix_targets(text, models)
        name, dims = parse_input_shape(rest)
        for model in targets:
            if name in chosen[model]:
                raise UsageError(f"--input-shape sets input '{name}' of {model} twice",
                                 hint="give one --input-shape per input and model")
            chosen[model][name] = dims
    return {m: tuple(shapes.items()) for m, shapes in chosen.items()}


def _prefix_targets(text: str, models: tuple[str, ...]) -> tuple[list[str], str]:
    """The models an ``--input-shape`` text applies to and the text without its prefix."""
    matches = [(len(label), label, m) for m in models
               for label in dict.fromkeys((m, os.path.basename(m)))
               if text.startswith(label + ":")]
    if not matches:
        head = text.partition("=")[0]
        if ":" in head and head.rpartition(":")[0].endswith(".onnx"):
            raise UsageError(f"--input-shape '{text}': the prefix names none of the models",
                             hint="write MODEL:NAME=DIMS with a model path or file name "
                                  "given to this command")
        return list(models), text
    longest = max(size for size, _, _ in matches)
    label = next(lab for size, lab, _ in matches if size == longest)
    targets = list(dict.fromkeys(m for size, lab, m in matches if lab == label))
    if len(targets) > 1:
        raise UsageError(f"--input-shape '{text}': '{label}' names several models",
                         hint="use the model's path as written instead of its file name")
    return targets, text[len(label) + 1:]


def check_report_path(path: str, models: tuple[str, ...]) -> int | None:
    """Fail before any work when the report could not be written or would replace a model
    or one of its external data files.

    Returns:
        A duplicate of the descriptor a path such as ``/dev/fd/3`` names, claimed now
        (``artifacts.claim_descriptor``); None for a file path.

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


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[ProgressCallback | None]:
    """A bar on a terminal's stderr; with --progress on a pipe or log file (where a bar
    would leave only blank lines), one plain line per layer."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        def line(done: int, total: int, layer: str) -> None:
            if done < total:
                click.echo(f"{label}: layer {done + 1}/{total} {layer}", err=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    # markup=False: model file and node names are shown as they are, never read as markup.
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[layer]}", markup=False),
                  console=Console(stderr=True),
                  transient=True) as bar:
        task = bar.add_task(label, total=None, layer="")

        def update(done: int, total: int, layer: str) -> None:
            bar.update(task, completed=done, total=total, layer=layer)

        yield update


def _run_guarded(action: Callable[[], None], debug: bool) -> None:
    """Run ``action``; turn our errors into one line and an exit code."""
    try:
        action()
    except OnnxCollideError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Exit, SystemExit):
        raise
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); this is a bug in "
                   "onnxcollide: please report it with the output of --debug", err=True)
        sys.exit(EXIT_MODEL)


class _OneLineErrors(click.Group):
    """A group whose usage errors (bad option values, unknown options, missing arguments) are
    one ``error:`` line and exit 2, like every other error of the tool, instead of click's
    usage block."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Run the CLI; print click's usage errors as one line (``standalone_mode`` is
        always off inside, so the errors come here)."""
        try:
            return super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                click.echo(exc.format_message(), err=True)  # no command given: the help
                sys.exit(EXIT_USAGE)
            command = exc.ctx.command_path if exc.ctx is not None else "onnxcollide"
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see '{command} --help')", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            click.echo("error: interrupted; no report was written (a report being written is "
                       "left as it was)", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcollide")
def main() -> None:
    """Audit ONNX models for exact feature collisions (Ozbulak et al.)."""


@main.command()
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
              show_default=True, help="Execution provider of --validate.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def audit(models: tuple[str, ...], fmt: str, output: str | None, conv_convention: str,
          rtol: float | None, atol: float | None, input_shapes: tuple[str, ...],
          summary_only: bool, progress: bool | None, check: bool, seed: int, device: str,
          debug: bool) -> None:
    """Rank and nullity of every Conv/Gemm/MatMul weight, and the paper's Table 1 metrics."""
    ctx = click.get_current_context()

    def run() -> None:
        target = None if output == "-" or output is None else output
        claimed = None if target is None else check_report_path(target, models)
        try:
            _audit_and_report(target, claimed, _audit_format(ctx, fmt, output, check))
        finally:
            if claimed is not None:
                os.close(claimed)

    def _audit_and_report(target: str | None, claimed: int | None, fmt: str) -> None:
        if check:  # --device cuda without CUDA is a usage error before any work (as in collide)
            from onnxcollide.runtime import resolve_device

            resolve_device(device)
        shapes = shapes_per_model(input_shapes, models)
        base = AuditSettings(convention=ConvConvention(conv_convention),
                             rule=ToleranceRule(rtol, atol))
        show = sys.stderr.isatty() if progress is None else progress
        audits: list[ModelAudit] = []
        for path in models:
            settings = replace(base, input_shapes=shapes[path])
            with _progress(show, os.path.basename(path)) as callback:
                result = _audit_one(path, settings, callback, len(models))
            if check:
                from onnxcollide.w1check import check_w1

                result = replace(result, validation=check_w1(
                    path, dict(settings.input_shapes), seed, device, "float32", settings.rule))
            audits.append(result)
        to_terminal = target is None and sys.stdout.isatty()
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

    _run_guarded(run, debug)


SUFFIX_FORMATS = {".json": Format.JSON, ".csv": Format.CSV, ".md": Format.MARKDOWN,
                  ".markdown": Format.MARKDOWN, ".txt": Format.TABLE, "": Format.TABLE}


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _audit_format(ctx: click.Context, fmt: str, output: str | None, check: bool) -> str:
    """The report format: ``-f`` where given, else the ``-o`` file's suffix (``.json``,
    ``.csv``, ``.md``; ``.txt`` or none: a table), else a table. Options that would be
    ignored or contradict each other are refused (``-f`` with a ``.txt`` file is fine).

    Raises:
        UsageError: --seed or --device without --validate (they would be ignored);
            --summary-only with JSON (which always holds every layer); an ``-o`` suffix that
            names another format than ``-f``, or, without ``-f``, no format at all.
    """
    if not check:
        ignored = [f"--{n}" for n in ("seed", "device") if _given(ctx, n)]
        if ignored:
            verb, them = ("applies", "it") if len(ignored) == 1 else ("apply", "them")
            raise UsageError(f"{' and '.join(ignored)} only {verb} with --validate",
                             hint=f"add --validate, or drop {them}")
    chosen = _suffix_format(ctx, fmt, output)
    if chosen == Format.JSON.value and _given(ctx, "summary_only"):
        raise UsageError("--summary-only does not apply to JSON, which always holds every "
                         "layer (its metrics are the summary)",
                         hint="drop --summary-only, or use -f csv, markdown or table")
    return chosen


FORMAT_SUFFIXES = {Format.JSON.value: ".json", Format.CSV.value: ".csv",
                   Format.MARKDOWN.value: ".md", Format.TABLE.value: ".txt"}


def _suffix_format(ctx: click.Context, fmt: str, output: str | None) -> str:
    """``-f`` checked against the ``-o`` suffix, or the format the suffix names.

    Raises:
        UsageError: see ``_audit_format``.
    """
    if not output or output == "-" or names_descriptor(output):
        return fmt
    name = os.path.basename(output)
    suffix = name[name.rfind("."):].lower() if "." in name else ""  # '.json' is a .json file
    named = SUFFIX_FORMATS.get(suffix)
    if _given(ctx, "fmt"):
        if named is not None and suffix not in ("", ".txt") and named.value != fmt:
            raise UsageError(f"-f {fmt} but the file name says {named.value}",
                             f"--output {output}",
                             f"drop -f, or name a {FORMAT_SUFFIXES[fmt]} file")
        return fmt
    if named is None:
        raise UsageError(f"cannot tell the report format from the suffix '{suffix}'",
                         f"--output {output}", "give -f table, json, markdown or csv, or "
                         "name a .txt, .json, .md or .csv file")
    return named.value


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


def _register_commands() -> None:
    from onnxcollide.cli_collide import register

    register(main, _run_guarded)


_register_commands()

if __name__ == "__main__":
    main()
