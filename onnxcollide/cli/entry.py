"""The console script's entry point: the command line, with a Ctrl-C while it starts up
(importing numpy, onnx, ONNX Runtime) ending like one during the work: one line, exit 130."""

from __future__ import annotations

import errno
import io
import os
import sys

from onnxcollide.cli.exit_codes import EXIT_INTERRUPTED


class _ClosedStream(io.TextIOBase):
    """Standard output closed before the start (``>&-``; Python then sets ``sys.stdout`` to
    None): not a terminal, and every write fails as one to a closed descriptor does, so a
    report meant for it is one usage error, while ``-o FILE`` still works."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def isatty(self) -> bool:
        return False


def _mend_closed_streams() -> None:
    """Stand-ins for standard streams closed before the start: output fails on write, and
    error messages go nowhere (there is nowhere to show them; the exit code stands)."""
    if sys.stdout is None:
        sys.stdout = _ClosedStream()
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
