"""Give back the pages of a memory-mapped weight as soon as they have been read.

A weight read through a read-only memory map (external data, or a view into a single .onnx
file) counts in the process's resident memory page by page as it is read, until the map is
closed: a 411 MB fc weight streamed into its Gram matrix would hold all of it to the end.
After each chunk the engine drops the pages it has read (``madvise(MADV_DONTNEED)``): they stay
in the page cache, and reading them again (an SVD re-check) faults them back in. Dropping pages
of a read-only file mapping loses nothing, so a page at a chunk's edge that is still needed
is simply read again. Arrays that are not views of a memory map are left alone.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.PAGESIZE


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    """The mmap object ``array`` is a view of (through its ``base`` chain), if any."""
    base: object = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None)
    return None


def _mapped_range(mapped: mmap.mmap) -> tuple[int, int]:
    """(first address, end address) of a mapping (read-only maps export their buffer)."""
    start = int(np.frombuffer(mapped, dtype=np.uint8).__array_interface__["data"][0])
    return start, start + len(mapped)


def give_back(matrix: np.ndarray, lo: int, hi: int, tall: bool) -> None:
    """Drop the pages of rows ``lo:hi`` (``tall``) or of columns ``lo:hi`` of every row of a
    2-D view of a read-only memory map whose rows are contiguous; nothing otherwise.

    Args:
        matrix: (r, c) array; rows lie at a stride, elements within a row are contiguous.
        lo, hi: the rows (or columns) that have just been read.
        tall: whether rows (True) or columns (False) were read.
    """
    mapped = _mapping(matrix)
    if mapped is None or matrix.ndim != 2 or matrix.size == 0 or not hi > lo or \
            matrix.strides[1] != matrix.itemsize or not hasattr(mapped, "madvise"):
        return
    begin, end = _mapped_range(mapped)
    origin = int(matrix.__array_interface__["data"][0])
    row, item = matrix.strides[0], matrix.itemsize
    if tall:
        spans = [(origin + lo * row, origin + (hi - 1) * row + matrix.shape[1] * item)]
    else:
        spans = [(origin + r * row + lo * item, origin + r * row + hi * item)
                 for r in range(matrix.shape[0])]
    for first, last in spans:
        first = max(begin, first - (first - begin) % PAGE)  # the page it starts in
        last = min(end, last - (last - begin) % PAGE)  # pages wholly before its end
        if last > first:
            mapped.madvise(mmap.MADV_DONTNEED, first - begin, last - first)
