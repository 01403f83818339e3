"""How much memory one array may take: every array sized from a model's declarations is
checked against this limit before it is allocated, so a hostile or broken model gets one clear
line instead of an out-of-memory kill.

The limit is ``--max-memory`` where given, else ``DEFAULT_FRACTION`` of the machine's
physical memory. It is process-wide (worker threads see it too); ``memory_limit`` sets it for
a block and restores the previous value.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from onnxcollide.errors import OnnxCollideError, UsageError

DEFAULT_FRACTION = 0.5  # of the machine's physical memory
FALLBACK_BYTES = 8 << 30  # where the machine's memory cannot be read
FAR_BEYOND_BYTES = 1 << 50  # 1 PiB: no machine has it, so the hint is not to raise the limit
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ResourceLimitError(OnnxCollideError):
    """An array the model asks for would not fit the memory limit.

    Attributes:
        input_sized: the array grows with the input's shape (an operator applied to one
            input), so a smaller input shape is a way out where the user chose it.
    """

    input_sized = False


@dataclass(frozen=True)
class MemoryLimit:
    """The largest number of bytes one array may take, and where that number came from.

    Attributes:
        bytes: the limit.
        source: ``--max-memory`` or how the default was derived.
    """

    bytes: int
    source: str


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes, None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_limit() -> MemoryLimit:
    """``DEFAULT_FRACTION`` of the machine's memory (``FALLBACK_BYTES`` where unknown)."""
    total = machine_memory()
    if total is None:
        return MemoryLimit(FALLBACK_BYTES, f"default {size_text(FALLBACK_BYTES)}")
    return MemoryLimit(int(total * DEFAULT_FRACTION),
                       f"default: {DEFAULT_FRACTION:.0%} of this machine's "
                       f"{size_text(total)}")


_current: MemoryLimit | None = None


def current_limit() -> MemoryLimit:
    """The limit in force."""
    return _current if _current is not None else default_limit()


def set_max_memory(limit: MemoryLimit | None) -> None:
    """Set the process-wide limit (None: back to the default)."""
    global _current
    _current = limit


@contextmanager
def memory_limit(limit: MemoryLimit | None) -> Iterator[MemoryLimit]:
    """The limit ``limit`` (None: the default) for a block; the previous one after it."""
    global _current
    previous = _current
    _current = limit
    try:
        yield current_limit()
    finally:
        _current = previous


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``"512M"``, ``"8G"``, ``"1.5GiB"`` or a byte count -> bytes (K, M, G, T are powers
    of 1024).

    Raises:
        UsageError: not a positive size.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match or not text.isascii():
        raise UsageError(f"{option} '{text}' is not a size", hint="write it like 512M or 8G")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise UsageError(f"{option} '{text}' is not a positive size",
                         hint="write it like 512M or 8G")
    return int(value)


def size_text(nbytes: float) -> str:
    """Bytes for people: ``149.0 GiB``, ``512.0 MiB``, ``300 B``; beyond 1024 TiB, a power of
    two (``2^63.0 B``: sizes no machine has, from broken declarations)."""
    if nbytes >= FAR_BEYOND_BYTES:
        return f"2^{math.log2(nbytes):.1f} B"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


class ResourceUsageError(ResourceLimitError, UsageError):
    """An array an option asks for (an input shape) would not fit the memory limit."""

    exit_code = 2


def for_chosen_shape(exc: ResourceLimitError, option: str) -> ResourceLimitError:
    """``exc`` as a usage error naming ``option`` where that option chose the input's shape
    and the array grows with it; ``exc`` unchanged otherwise."""
    if not exc.input_sized or isinstance(exc, ResourceUsageError):
        return exc
    return ResourceUsageError(exc.what, exc.where, f"give a smaller {option}, or {exc.hint}")


def check_allocation(nbytes: int, what: str, where: str = "",
                     option: str | None = None, remedy: str = "check the model") -> None:
    """Refuse an array of ``nbytes`` before it is allocated when it exceeds the limit.

    Args:
        nbytes: the array's size in bytes (computed from declared dims and dtype).
        what: what the array is, e.g. ``the constant output 'w' this op makes``.
        where: the file, node or tensor it concerns.
        option: the option that asked for this size (``--input-shape``), if one did: the
            error is then a usage error (exit 2) suggesting a smaller value.
        remedy: what else to do, where no option asked for it (the file at fault).

    Raises:
        ResourceLimitError: ``nbytes`` is over the limit in force (ResourceUsageError where
            an option asked for it).
    """
    limit = current_limit()
    if nbytes <= limit.bytes:
        return
    what = (f"{what} would take {size_text(nbytes)}, over the memory limit of "
            f"{size_text(limit.bytes)} ({limit.source})")
    raise_to = f"--max-memory {max(1, -(-nbytes // (1 << 30)) + 1)}G"
    raisable = nbytes < FAR_BEYOND_BYTES  # beyond, no --max-memory would help
    if option is not None:
        hint = f"give a smaller {option}" + \
            (f", or raise --max-memory (e.g. {raise_to})" if raisable else "")
        raise ResourceUsageError(what, where, hint)
    hint = f"raise --max-memory if this machine has the memory (e.g. {raise_to}), or " \
        f"{remedy}" if raisable else remedy
    raise ResourceLimitError(what, where, hint)


READ_CHUNK = 1 << 20


def read_within_limit(path: str, what: str, limited: bool = True) -> bytes:
    """A file's bytes, refused past the memory limit before they are all read (unless
    ``limited`` is False: a small settings file that the limit is not meant for).

    A FIFO is opened without waiting for a writer, so one that nobody writes to reads as
    empty instead of blocking; one with a writer (``<(cat file)``, ``/dev/stdin``) is read to
    its end. ``what`` names the bytes in the error (``the policy file``).

    Raises:
        OSError: the file cannot be opened or read (the caller says what to do).
        ResourceLimitError: the bytes are over the limit.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):  # its size is known: checked once, read in one piece
        if limited:
            check_allocation(os.path.getsize(path), what, path, remedy="give a smaller file")
        with open(path, "rb") as whole:
            return whole.read()
    descriptor = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if stat.S_ISFIFO(mode) else 0))
    os.set_blocking(descriptor, True)
    chunks, total = [], 0
    with os.fdopen(descriptor, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            total += len(chunk)
            if limited:
                check_allocation(total, what, path, remedy="give a smaller file")
            chunks.append(chunk)
    return b"".join(chunks)
