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
# Each command's one-line summary (its help's first sentence), so that `onnxcollide --help`
# lists the commands without importing them (1.5 s otherwise); a test keeps them equal.
SUMMARIES = {
    "audit": "Rank and nullity of every Conv/Gemm/MatMul weight, and the paper's Table 1 "
             "metrics.",
    "check": "Check models against a policy: exit 1 when an error rule fails (the CI gate).",
    "collide": "Make inputs that collide with a given input at W1 (Null-space search) and "
               "prove it.",
    "compare": "Compare exports of one network layer by layer (the first model is the "
               "reference).",
    "init-policy": "Write a commented starting policy for `check` (default: onnxcollide.toml; "
                   "'-': standard output).",
    "validate": "Check whether two inputs collide (FIRST and SECOND files), or every colliding "
                "input in collide's collisions.npz (FIRST alone): W1 residual, outputs, random "
                "baseline.",
}


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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help`` from SUMMARIES, shortened as click shortens a
        command's own help (listing the commands imports none of them)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
