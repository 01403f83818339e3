"""`onnxcollide init-policy`: write a commented starting policy for `onnxcollide check`."""

from __future__ import annotations

import os

import click

from onnxcollide.cli.options import run_guarded
from onnxcollide.errors import UsageError
from onnxcollide.policy.starter import STARTER_POLICY
from onnxcollide.report.files import write_stdout, write_text


@click.command("init-policy")
@click.argument("path", default="onnxcollide.toml", metavar="[FILE]")
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
def init_policy(path: str, force: bool) -> None:
    """Write a commented starting policy for `check` (default: onnxcollide.toml; '-': standard
    output)."""

    def run() -> None:
        if path == "-":
            write_stdout(STARTER_POLICY)
            return
        if not path:
            raise UsageError("the file name is empty", hint="give a file name, e.g. "
                             "onnxcollide.toml, or '-' for standard output")
        if os.path.exists(path) and not force:
            raise UsageError("exists already", path, "add --force to replace it, or give "
                             "another file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"the folder '{folder}' does not exist", path,
                             "create it first or choose another path")
        write_text(path, STARTER_POLICY)
        click.echo(f"wrote {path}", err=True)

    run_guarded(run, debug=False)
