"""The console script's entry point: the command line, with a Ctrl-C while it starts up
(importing numpy, onnx, ONNX Runtime) ending like one during the work: one line, exit 130."""

from __future__ import annotations

import os
import sys

from onnxcollide.cli.exit_codes import EXIT_INTERRUPTED


def _mend_closed_streams() -> None:
    """Standard error closed before the start (``2>&-``; Python then sets ``sys.stderr`` to
    None): messages go nowhere (there is nowhere to show them; the exit code stands). A
    closed standard output stays None: click's own output (``--help``) skips it, and a
    report meant for it is a usage error (``write_stdout``)."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for the process)


def run() -> None:
    """Import the command line and run it."""
    _mend_closed_streams()
    try:
        from onnxcollide.cli.main import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(EXIT_INTERRUPTED)
    main()
