"""What the commands share: parameter types, option parsers, input options, the error guard,
the progress reporter."""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from onnxcollide.cli.exit_codes import EXIT_MODEL
from onnxcollide.errors import OnnxCollideError, UsageError
from onnxcollide.limits import MemoryLimit, parse_size, set_max_memory
from onnxcollide.report.files import names_descriptor

if TYPE_CHECKING:  # loaded on use: `check` reads its cache without numpy, scipy or onnx
    from onnxcollide.audit.model import ProgressCallback
    from onnxcollide.collide.inputs import ImageOptions


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite: ``nan`` and ``inf`` are usage errors (exit 2).

    click's FloatRange lets ``nan`` through (every comparison with it is false) and ``inf``
    through an open upper end; neither is a tolerance or a scale.
    """

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Parse, then reject non-finite values before the range check."""
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        """The range for --help; empty without bounds (click would print ``x<=None``)."""
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
ANY_FINITE = FiniteFloat()
SEED = click.IntRange(min=0, max=2**63 - 1)  # numpy's default_rng takes non-negative seeds


INT64_MAX = (1 << 63) - 1


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
    shape = tuple(int(p) for p in parts)
    if not all(d > 0 for d in shape):
        raise UsageError(f"--input-shape '{text}' has a dimension 0",
                         hint="give every dimension as a positive integer, e.g. "
                              "input=1x3x224x224")
    if math.prod(shape) > INT64_MAX:  # ONNX stores dims as int64; no array holds more
        raise UsageError(f"--input-shape '{text}' has more elements than an int64 counts",
                         hint="give the shape the model is run at, e.g. input=1x3x224x224")
    return name, shape


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


@contextmanager
def progress_reporter(enabled: bool, label: str) -> Iterator[ProgressCallback | None]:
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


class PhaseReporter:
    """Phases of a long command (loading, the kernel, the operator analysis, validation) and
    steps within one, on stderr: a spinner and bar on a terminal, one line each on a pipe or
    log file with ``--progress``, nothing when off."""

    def __init__(self, label: str, bar: Any = None, lines: bool = False) -> None:
        self._label, self._bar, self._lines = label, bar, lines
        self._task = bar.add_task(label, total=None, step="") if bar is not None else None

    def phase(self, text: str) -> None:
        """A new phase starts (its steps, if any, are counted afresh)."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._label}: {text}", completed=0,
                             total=None, step="")
        elif self._lines:
            click.echo(f"{self._label}: {text}", err=True)

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` steps of the current phase are finished."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, step=f"{done}/{total}")
        elif self._lines:
            click.echo(f"{self._label}: {done}/{total}", err=True)


@contextmanager
def progress_phases(enabled: bool | None, label: str) -> Iterator[PhaseReporter]:
    """A PhaseReporter for ``--progress/--no-progress`` (default: on where stderr is a
    terminal)."""
    shown = sys.stderr.isatty() if enabled is None else enabled
    if not shown or not sys.stderr.isatty():
        yield PhaseReporter(label, lines=shown)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                  TextColumn("{task.fields[step]}", markup=False),
                  console=Console(stderr=True), transient=True) as bar:
        yield PhaseReporter(label, bar)


@contextmanager
def progress_steps(enabled: bool | None, label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``(done, total)`` callback for one phase of ``--progress`` (see progress_phases)."""
    with progress_phases(enabled, label) as reporter:
        yield reporter.step


def run_guarded(action: Callable[[], None], debug: bool) -> None:
    """Run ``action``; turn our errors into one line and an exit code."""
    try:
        action()
    except OnnxCollideError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Exit, SystemExit):
        raise
    except MemoryError:
        click.echo("error: the machine ran out of memory; a smaller --max-memory refuses "
                   "such arrays up front with the node that asks for them", err=True)
        sys.exit(EXIT_MODEL)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); this is a bug in "
                   "onnxcollide: please report it with the output of --debug", err=True)
        sys.exit(EXIT_MODEL)


def parse_floats(text: str | None, option: str, count: int | None = None
                 ) -> tuple[float, ...] | None:
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


def parse_shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from onnxcollide.cli.options import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise UsageError(f"--input-shape sets input '{name}' twice",
                             hint="give one --input-shape per input")
        shapes[name] = dims
    return shapes


def parse_resize(text: str | None) -> tuple[int, int] | None:
    """``"224x224"`` -> (224, 224): two positive integers.

    Raises:
        UsageError: not HxW, or a zero size.
    """
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise UsageError(f"--resize '{text}' is not HxW", hint="e.g. --resize 224x224")
    height, width = int(parts[0]), int(parts[1])
    if height == 0 or width == 0:
        raise UsageError(f"--resize '{text}': height and width must be at least 1",
                         hint="e.g. --resize 224x224")
    return height, width


def image_options(resize: str | None, layout: str, scale: float, mean: str | None,
                   std: str | None) -> ImageOptions:
    """ImageOptions from the option texts (the counts of --mean/--std are checked per image).

    Raises:
        UsageError: a bad --resize, --mean or --std (a std of 0 or below).
    """
    from onnxcollide.collide.inputs import ImageOptions

    stds = parse_floats(std, "--std")
    if stds is not None and min(stds) <= 0:
        raise UsageError(f"--std '{std}' holds a value that is not positive",
                         hint="every standard deviation must be above 0")
    return ImageOptions(parse_resize(resize), layout, scale, parse_floats(mean, "--mean"), stds)


def max_memory_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-memory``: the largest array a model may make the tool allocate."""
    return click.option(
        "--max-memory", metavar="SIZE",
        help="Refuse any array over this size before allocating it (e.g. 8G, 512M) "
             "[default: half of this machine's memory].")(func)


def apply_max_memory(text: str | None) -> None:
    """Put ``--max-memory`` in force for this command (the default where not given).

    Raises:
        UsageError: not a size.
    """
    set_max_memory(None if text is None else
                   MemoryLimit(parse_size(text), f"--max-memory {text}"))


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


def tell_notices(*records: dict[str, dict[str, Any]]) -> None:
    """Print the inputs' notices (an image resized without --resize) on stderr."""
    for by_name in records:
        for record in by_name.values():
            if "notice" in record:
                click.echo(f"notice: {record['notice']}", err=True)


def option_given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def report_format(ctx: click.Context, fmt: str, output: str | None,
                  suffixes: dict[str, str], plain: str) -> str:
    """The report format: ``-f`` where given, else the one the ``-o`` file's suffix names,
    else ``fmt`` (the default, for standard output and descriptors such as /dev/stdout).

    Args:
        ctx: the command's context (was ``-f`` given?).
        fmt: the ``-f`` value or its default.
        output: the ``-o`` value, if any.
        suffixes: lower-case suffix (``""`` for none) -> the format it names.
        plain: the plain-text format, which any suffix may hold (``-f table -o r.log``).

    Raises:
        UsageError: a path ending in '/', ``-f`` naming another format than a suffix that
            names one, or, without ``-f``, a suffix that names none (``-o r.gz``: the file
            would not be what its name says).
    """
    if not output or output == "-" or names_descriptor(output):
        return fmt
    refuse_folder_name(output, f"--output {output}")
    name = os.path.basename(output)
    suffix = name[name.rfind("."):].lower() if "." in name else ""  # '.json' is a .json file
    named = suffixes.get(suffix)
    if option_given(ctx, "fmt"):
        if named is not None and named not in (plain, fmt):
            wanted = [s for s, f in suffixes.items() if f == fmt and s]
            rename = f"name a {wanted[0]} file" if wanted else "rename the file"
            raise UsageError(f"-f {fmt} but the file name says {named}", f"--output {output}",
                             f"drop -f, or {rename}")
        return fmt
    if named is None:
        formats = list(dict.fromkeys(suffixes.values()))
        known = [s for s in suffixes if s]
        raise UsageError(f"cannot tell the report format from the suffix '{suffix}'",
                         f"--output {output}",
                         f"give -f {_either(formats)}, or name a {_either(known)} file")
    return named


def refuse_folder_name(path: str, where: str) -> None:
    """A report path ending in '/' names a folder, not the file to write.

    Raises:
        UsageError: naming ``where`` (the option and the path).
    """
    if path.endswith(os.sep):
        raise UsageError("ends in '/', which names a folder", where, "give a file name")


def _either(words: list[str]) -> str:
    """``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
