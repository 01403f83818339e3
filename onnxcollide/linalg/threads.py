"""How many BLAS threads the calling thread uses (OpenBLAS, as numpy's and scipy's wheels ship).

The rank engine decides independent layers in worker processes (``audit.parallel``: scipy's
BLAS and LAPACK wrappers hold the GIL, ``scripts/bench_gil.py``) or, for small models, worker
threads. Each worker must run its BLAS single-threaded, or two multi-threaded BLAS calls
fight over the cores (OpenBLAS's threads spin while they wait: measured on a 2-core machine
under load, a ResNet-50 audit took 2.3 s with one worker and one BLAS thread, 1.3 s with two
workers of one BLAS thread each, 16 s with one worker of two BLAS threads and 43 s with two
workers of two). OpenBLAS 0.3.27 and later set a per-thread count
(``openblas_set_num_threads_local``); the loaded OpenBLAS libraries are found in
``/proc/self/maps``. Where there is none (another BLAS, an older OpenBLAS, no /proc),
``set_local_threads`` reports so and the engine uses one worker.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

_SYMBOL = "openblas_set_num_threads_local"


@functools.lru_cache(maxsize=1)
def _openblas_setters() -> tuple[Callable[[int], int], ...]:
    """``openblas_set_num_threads_local`` of every OpenBLAS library loaded in this process
    (numpy and scipy each bring their own); empty where any loaded one lacks it."""
    import numpy  # noqa: F401  (their libraries must be loaded to be found)
    import scipy.linalg  # noqa: F401

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()
                     and "/" in line}
    except OSError:
        return ()
    setters = []
    for path in sorted(paths):
        try:
            function = getattr(ctypes.CDLL(path), _SYMBOL)
        except (OSError, AttributeError):
            return ()
        function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
        setters.append(function)
    return tuple(setters)


def local_threads_available() -> bool:
    """Whether every loaded BLAS takes a per-thread thread count."""
    return bool(_openblas_setters())


def set_local_threads(count: int) -> bool:
    """Make the calling thread's BLAS calls use ``count`` threads; False (nothing changed)
    where the loaded BLAS offers no per-thread setting."""
    setters = _openblas_setters()
    for setter in setters:
        setter(count)
    return bool(setters)


def worker_count() -> int:
    """Cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
