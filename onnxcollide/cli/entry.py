"""The console script's entry point: the command line, with a Ctrl-C while it starts up
(importing numpy, onnx, ONNX Runtime) ending like one during the work: one line, exit 130."""

from __future__ import annotations

import sys

from onnxcollide.cli.exit_codes import EXIT_INTERRUPTED


def run() -> None:
    """Import the command line and run it."""
    try:
        from onnxcollide.cli.main import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted while starting; nothing was written\n")
        sys.exit(EXIT_INTERRUPTED)
    main()
