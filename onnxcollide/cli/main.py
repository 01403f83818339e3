"""Command line: parse, call one core function, render, exit with a code a CI gate can use.

Exit codes: 0 success; 1 a check failed (collide: a collision claimed exact did not pass
validation; validate: the inputs do not collide; compare: the models differ; audit: reserved for the
policy gate); 2 usage
error; 3 the model cannot be read or holds something we cannot analyse; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from onnxcollide._version import __version__
from onnxcollide.cli.audit import audit
from onnxcollide.cli.collide import collide
from onnxcollide.cli.compare import compare
from onnxcollide.cli.exit_codes import EXIT_INTERRUPTED, EXIT_USAGE
from onnxcollide.cli.validate import validate


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


for _command in (audit, collide, compare, validate):
    main.add_command(_command)

if __name__ == "__main__":
    main()
