"""Command line: parse, call one core function, render, exit with a code a CI gate can use.

Exit codes: 0 success; 1 a check failed (collide: a collision claimed exact did not pass
validation; validate: the inputs do not collide; compare: the models differ; check: an error
rule of the policy failed; audit: reserved); 2 usage error; 3 the model cannot be read or holds
something we cannot analyse (check: a model could not be read and no error rule failed); 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from onnxcollide._version import __version__
from onnxcollide.cli.exit_codes import EXIT_INTERRUPTED, EXIT_USAGE

COMMANDS = ("audit", "check", "collide", "compare", "init-policy", "validate")


def load_command(name: str) -> click.Command:
    """Import one command's module. Commands load on use, so `check` on cached models starts
    without numpy, scipy or onnx (the audit's modules take seconds to import)."""
    if name == "audit":
        from onnxcollide.cli.audit import audit

        return audit
    if name == "check":
        from onnxcollide.cli.check import check

        return check
    if name == "collide":
        from onnxcollide.cli.collide import collide

        return collide
    if name == "compare":
        from onnxcollide.cli.compare import compare

        return compare
    if name == "init-policy":
        from onnxcollide.cli.init_policy import init_policy

        return init_policy
    from onnxcollide.cli.validate import validate

    return validate


class _OneLineErrors(click.Group):
    """A group whose usage errors (bad option values, unknown options, missing arguments) are
    one ``error:`` line and exit 2, like every other error of the tool, instead of click's
    usage block. Its commands load on use (``load_command``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, sorted (as click lists them)."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command called ``cmd_name``, imported now; None for an unknown name."""
        return load_command(cmd_name) if cmd_name in COMMANDS else None

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


if __name__ == "__main__":
    main()
