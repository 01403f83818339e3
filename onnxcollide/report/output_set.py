"""The output folder of `onnxcollide collide`: checked before any work, replaced as one set.

A collide run writes several files (collisions.npz, report.json, strip-N.png, basis.png).
They are written to a hidden staging folder first; only when every file is complete are the
outputs of a previous run moved aside and the new ones renamed into place. A failure at any
step puts the previous set back, so the folder never holds a partial new set, and once it
succeeds it holds exactly the files the new report lists (other files are never touched).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping

from onnxcollide.errors import UsageError

# File names a collide run writes; only these are ever replaced or removed.
OUTPUT_NAME = re.compile(r"(collisions\.npz|report\.json|basis\.png|strip-\d+\.png)")
STAGING_PREFIX = ".onnxcollide-"

Writer = Callable[[str], None]


def is_output_name(name: str) -> bool:
    """True for a file name that a collide run writes (collisions.npz, strip-3.png, ...)."""
    return OUTPUT_NAME.fullmatch(name) is not None


def _existing_ancestor(folder: str) -> str:
    """The nearest folder (or file) on the way up from ``folder`` that exists."""
    current = os.path.abspath(folder)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _obstacles(folder: str) -> list[str]:
    """Entries of ``folder`` named like an output that are not files (a folder
    ``report.json``): they can be neither replaced nor removed."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if is_output_name(name) and os.path.isdir(os.path.join(folder, name)))


def _probe_writable(folder: str) -> None:
    """Create and remove a temporary folder in ``folder`` (raises OSError if it cannot)."""
    os.rmdir(tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX))


def check_output_set_folder(folder: str, option: str = "--out") -> None:
    """Fail before any work when the outputs could not be written to ``folder``.

    Nothing is created: a missing folder is checked through its nearest existing parent.

    Raises:
        UsageError: ``folder`` is a file, a parent is a file, it cannot be created or written,
            or it holds a folder named like an output (``report.json/``).
    """
    where = f"{option} {folder}"
    if not folder:
        raise UsageError("is empty", option, "give a folder for the outputs")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError("is a file, not a folder", where, "give a folder for the outputs")
    ancestor = _existing_ancestor(folder)
    if not os.path.isdir(ancestor):
        raise UsageError(f"'{ancestor}' is a file, so the folder cannot be created", where,
                         "give another folder for the outputs")
    try:
        _probe_writable(ancestor)
    except OSError as exc:
        raise UsageError(f"cannot write in '{ancestor}' ({exc.strerror or exc})", where,
                         "choose a folder you can write to") from exc
    blocked = _obstacles(folder)
    if blocked:
        raise UsageError(f"'{blocked[0]}' is a folder where an output file goes", where,
                         "remove or rename it, or choose another folder")


def _make_folder(folder: str) -> bool:
    """Create ``folder`` (and parents); return whether it was created now."""
    if os.path.isdir(folder):
        return False
    try:
        os.makedirs(folder)
    except OSError as exc:
        raise UsageError(f"cannot create the folder ({exc.strerror or exc})", folder,
                         "choose a folder you can write to") from exc
    return True


def _swap_in(folder: str, staging: str, backup: str, names: list[str]) -> None:
    """Move the old outputs of ``folder`` into ``backup``, then the staged ``names`` in; on
    any failure undo both steps and re-raise."""
    old = [name for name in os.listdir(folder) if is_output_name(name)]
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            os.replace(os.path.join(folder, name), os.path.join(backup, name))
            moved_old.append(name)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
            moved_new.append(name)
    except BaseException:
        for name in moved_new:
            os.unlink(os.path.join(folder, name))
        for name in moved_old:
            os.replace(os.path.join(backup, name), os.path.join(folder, name))
        raise


def write_output_set(folder: str, writers: Mapping[str, Writer]) -> None:
    """Write one complete set of outputs into ``folder``, replacing a previous run's set.

    Args:
        folder: the output folder (created if missing).
        writers: file name (see ``is_output_name``) -> a function that writes that file at
            the path it is given (a path in a staging folder, renamed into place later).

    Raises:
        UsageError: the folder or a file cannot be written; the folder is then as it was
            (a folder created by this call is removed again).
    """
    unknown = [name for name in writers if not is_output_name(name)]
    if unknown:
        raise ValueError(f"not an output file name: {unknown}")
    check_output_set_folder(folder)
    created = _make_folder(folder)
    staging = backup = ""
    try:
        staging = tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX)
        backup = tempfile.mkdtemp(dir=folder, prefix=STAGING_PREFIX)
        for name, write in writers.items():
            write(os.path.join(staging, name))
        _swap_in(folder, staging, backup, list(writers))
    except OSError as exc:
        raise UsageError(f"cannot write the outputs ({exc.strerror or exc})", folder,
                         "check the folder's permissions and free space") from exc
    finally:
        for temp in (staging, backup):
            if temp:
                shutil.rmtree(temp, ignore_errors=True)
        if created and not os.listdir(folder):
            os.rmdir(folder)
