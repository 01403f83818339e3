"""Give back the pages of a memory-mapped weight as soon as they have been read.

A weight read through a read-only memory map (external data, or a view into a single .onnx
file) counts in the process's resident memory page by page as it is read, until the map is
closed: a 411 MB fc weight streamed into its Gram matrix would hold all of it to the end.
After each chunk the engine drops the pages it has read (``madvise(MADV_DONTNEED)``): they stay
in the page cache, and reading them again (an SVD re-check) faults them back in. Dropping pages
of a read-only file mapping loses nothing, so a page at a chunk's edge that is still needed
is simply read again. Arrays that are not views of a memory map are left alone.

Column blocks of a wide weight (every row's next few kilobytes: an fc weight as PyTorch
stores it, (out, in), read along ``in``) are not read through the map at all: touching a few
kilobytes of each row makes the kernel map the cached pages around each one too ("fault
around", 64 KB), so most of the weight would be resident after the first block. They are
read with one ``preadv`` per row from the file behind the map (``read_columns``).
"""

from __future__ import annotations

import mmap
import os

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


def _memmap_of(array: np.ndarray) -> np.memmap | None:
    """The np.memmap in ``array``'s base chain (it knows the file and the map's offset)."""
    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap) and getattr(base, "filename", None):
            return base
        base = base.base
    return None


def read_columns(matrix: np.ndarray, lo: int, hi: int, out: np.ndarray) -> bool:
    """Copy columns ``lo:hi`` of a memory-mapped 2-D ``matrix`` (rows contiguous) into
    ``out`` (r, hi - lo), converting the type, by reading the file behind the map row by
    row; False (``out`` untouched) where ``matrix`` is not such a view or a read falls short,
    and the caller copies through the map instead."""
    mapped, source = _mapping(matrix), _memmap_of(matrix)
    if mapped is None or source is None or matrix.ndim != 2 or not hi > lo or \
            matrix.strides[1] != matrix.itemsize or not hasattr(os, "preadv"):
        return False
    begin = _mapped_range(mapped)[0]
    # np.memmap maps from its offset rounded down to the allocation granularity.
    file_begin = int(source.offset) - int(source.offset) % mmap.ALLOCATIONGRANULARITY
    origin = int(matrix.__array_interface__["data"][0])
    row, item = matrix.strides[0], matrix.itemsize
    staging = np.empty((matrix.shape[0], hi - lo), dtype=matrix.dtype)
    width = (hi - lo) * item
    try:
        with open(str(source.filename), "rb", buffering=0) as handle:
            for r in range(matrix.shape[0]):
                at = file_begin + origin + r * row + lo * item - begin
                if os.preadv(handle.fileno(), [staging[r]], at) != width:
                    return False
    except OSError:
        return False
    np.copyto(out, staging, casting="unsafe")
    return True
