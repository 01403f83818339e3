"""Writing reports and outputs: standard output, atomic files, open descriptors, ``.npz``.

Everything is written to a temporary file first and renamed, so no half-written file is left.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from onnxcollide.errors import UsageError

if TYPE_CHECKING:  # numpy loads on use: `check` writes its reports without it
    import numpy as np


def write_stdout(text: str, needed: bool = True) -> None:
    """Print ``text`` on standard output and flush it. Where standard output was closed
    before the start (``>&-``), text that is not ``needed`` (a summary of what the command
    also wrote to files) is left out.

    Raises:
        UsageError: standard output is closed and the text is needed, or the write failed
            (a full disk, a closed pipe), as for an ``-o`` file; the descriptor is then
            pointed at /dev/null so the exit's own flush stays quiet.
    """
    import sys

    if sys.stdout is None and not needed:
        return
    if sys.stdout is None:
        raise UsageError("cannot write here: it is closed", "standard output",
                         "keep standard output open, or write the report to a file with -o")
    try:
        sys.stdout.write(_encodable(text, getattr(sys.stdout, "encoding", None) or "utf-8"))
        sys.stdout.flush()
    except OSError as exc:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass  # not a real descriptor (a test's captured stream)
        raise UsageError(f"cannot write here ({exc.strerror or exc})",
                         "standard output") from exc


def _encodable(text: str, encoding: str) -> str:
    """``text`` as the stream's ``encoding`` can carry it: unchanged where it can, else with
    box-drawing characters (the tables' borders) drawn in ASCII and any other character it
    lacks as ``?`` (``PYTHONIOENCODING=ascii``, a legacy console code page)."""
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    drawn = "".join(_ascii_box(c) if "\u2500" <= c <= "\u257f" else c for c in text)
    try:
        return drawn.encode(encoding, "replace").decode(encoding)
    except LookupError:
        return drawn.encode("ascii", "replace").decode("ascii")


def _ascii_box(char: str) -> str:
    """A box-drawing character in ASCII: ``-`` for a horizontal line, ``|`` for a vertical
    one, ``+`` for corners and junctions."""
    import unicodedata

    name = unicodedata.name(char, "")
    horizontal, vertical = "HORIZONTAL" in name, "VERTICAL" in name
    return "-" if horizontal and not vertical else "|" if vertical and not horizontal else "+"


def write_atomically(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it into place.

    A symbolic link is followed (its target is replaced, the link stays), an existing file
    keeps its permission bits, and a path that is not a regular file (``/dev/null``, a FIFO)
    is written directly: renaming over it would replace the device with a file. A path that
    names an open descriptor (``/dev/stdout``, ``/dev/fd/3``) is written through it.

    Raises:
        UsageError: the folder does not exist, ``path`` is a folder, or it cannot be written.
    """
    claimed = claim_descriptor(path)
    if claimed is not None:
        try:
            write_claimed(claimed, path, write)
        finally:
            os.close(claimed)
        return
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise UsageError("is a folder", path, "give a file name")
    try:
        if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
            with open(target, "wb") as out:
                write(out)
            return
        _replace_with_temp(target, write)
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from exc


_STANDARD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_DESCRIPTOR_FOLDERS = ("/dev/fd/", "/proc/self/fd/")


def names_descriptor(path: str) -> bool:
    """Whether ``path`` stands for an open descriptor (``/dev/stdout``, ``/dev/fd/3``)."""
    return _open_descriptor(path) is not None


def _open_descriptor(path: str) -> int | None:
    """The file descriptor a path such as ``/dev/stdout`` or ``/dev/fd/3`` names, else None.

    Such a path stands for whatever the descriptor is open on (a pipe, a terminal, a file
    opened for appending by ``>>``): it is written through the descriptor, not resolved to a
    file and replaced (which failed on a pipe and wiped a file being appended to).
    """
    if path in _STANDARD_STREAMS:
        return _STANDARD_STREAMS[path]
    for folder in _DESCRIPTOR_FOLDERS:
        number = path[len(folder):]
        if path.startswith(folder) and number.isascii() and number.isdigit():
            return int(number)
    return None


def claim_descriptor(path: str) -> int | None:
    """A duplicate, taken now, of the descriptor ``path`` names (``/dev/stdout``,
    ``/dev/fd/N``); None for any other path. Take it before any work: a descriptor that was
    not open when the program started may be opened meanwhile on a file of its own (ONNX
    Runtime's cache), and the report would go there.

    Raises:
        UsageError: the descriptor is not open.
    """
    descriptor = _open_descriptor(path)
    if descriptor is None:
        return None
    try:
        return os.dup(descriptor)
    except OSError as exc:
        raise UsageError(f"is not an open file descriptor ({exc.strerror or exc})", path,
                         "open it in the shell (e.g. 3>file) or give a file name") from exc


def write_claimed(claimed: int, path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write through a descriptor from ``claim_descriptor`` (its position and append mode
    are kept); the caller closes it."""
    try:
        with os.fdopen(claimed, "wb", closefd=False) as out:
            write(out)
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from exc


def write_text(path: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically (see ``write_atomically``)."""
    write_atomically(path, lambda out: out.write(text.encode("utf-8")))


def _replace_with_temp(target: str, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file in ``target``'s folder and rename it onto ``target``."""
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".onnxcollide-",
                                    suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the rename makes it the file
        if os.path.exists(target):
            mode = stat.S_IMODE(os.stat(target).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600; give a new file the usual permissions
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def save_npz(path: str, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
    """Save arrays plus the settings that made them (as a JSON string under ``settings``)."""
    import numpy as np

    payload = dict(arrays)
    payload["settings"] = np.array(json.dumps(settings, sort_keys=True))
    write_atomically(path, lambda out: np.savez_compressed(out, **payload))  # type: ignore[arg-type]


def stdout_is_terminal() -> bool:
    """Whether standard output is a terminal (False where it is closed: ``>&-``)."""
    import sys

    return sys.stdout is not None and sys.stdout.isatty()
