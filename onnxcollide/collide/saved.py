"""Colliding inputs saved by ``collide`` (``collisions.npz``), read back to be validated again."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcollide.collide.inputs import check_shape
from onnxcollide.errors import ModelLoadError, UsageError
from onnxcollide.graph.load import LoadedModel
from onnxcollide.graph.shapes import declared_dims, model_inputs
from onnxcollide.limits import check_allocation

FEED_PREFIX = "feed."  # the value of every other model input, as collide fed it
SAVED_FILE_HINT = "give the collisions.npz that onnxcollide collide wrote"  # a file at fault


@dataclass(frozen=True)
class SavedCollisions:
    """What ``collide`` saved: the original input, the colliding ones and the other inputs.

    Attributes:
        path: the .npz file.
        input_name: the model input the colliding inputs replace.
        original: (input shape) the input they collide with.
        colliding: (count, input shape) the colliding inputs, in the dtype they were proven in
            (float64 after ``--precision float64``).
        feeds: every model input's value for the original run (``input_name``: ``original``).
        settings: the search settings recorded with them.
    """

    path: str
    input_name: str
    original: np.ndarray
    colliding: np.ndarray
    feeds: dict[str, np.ndarray]
    settings: dict[str, Any]


def is_saved_collisions(path: str) -> bool:
    """Whether ``path`` is an .npz holding ``original`` and ``colliding`` (collide's output)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    return {"original.npy", "colliding.npy"} <= names


def read_saved_collisions(path: str, model: LoadedModel) -> SavedCollisions:
    """Read ``collide``'s ``collisions.npz`` for ``model``.

    Raises:
        ModelLoadError: the file cannot be read.
        UsageError: it holds no input name the model has, or lacks a value for another input.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            check_allocation(sum(m.file_size for m in archive.infolist()),
                             "the arrays of the collisions file", path)
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as saved:
            arrays = {key: np.asarray(saved[key]) for key in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelLoadError("cannot read the collisions file: it is not an .npz file numpy "
                             "reads without pickles", path, SAVED_FILE_HINT) from exc
    settings = _settings(arrays.pop("settings", np.array("{}")), path)
    for key in ("original", "colliding"):
        if arrays[key].dtype.kind not in "fiub" or not np.all(np.isfinite(arrays[key])):
            raise UsageError(f"its '{key}' array holds values that are not finite numbers",
                             path, SAVED_FILE_HINT)
    names = [i.name for i in model_inputs(model)]
    name = str(arrays.pop("input_name")) if "input_name" in arrays else \
        names[0] if len(names) == 1 else None
    if name is None:
        raise UsageError("the file does not say which of the model's inputs the colliding "
                         "inputs replace", path, "give FIRST and SECOND files instead")
    if name not in names:
        raise UsageError(f"the collisions were made for input '{name}', which the model "
                         f"lacks (its inputs: {', '.join(names)})", path,
                         "validate them on the model collide made them for")
    feeds = {key[len(FEED_PREFIX):]: value for key, value in arrays.items()
             if key.startswith(FEED_PREFIX)}
    feeds[name] = arrays["original"]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise UsageError(f"the file holds no value for input(s) {', '.join(missing)}", path,
                         "give FIRST and SECOND files with every input (NAME=FILE) instead")
    if arrays["colliding"].ndim == 0 or arrays["colliding"].shape[0] == 0:
        raise UsageError("the file holds no colliding input, so nothing would be validated",
                         path, "give a collisions.npz from a collide run that found some")
    _check_fits(model, feeds, arrays["colliding"], name, path)
    return SavedCollisions(path, name, arrays["original"], arrays["colliding"], feeds, settings)


def _settings(entry: np.ndarray, path: str) -> dict[str, Any]:
    """The search settings collide saved with the collisions (a JSON object).

    Raises:
        ModelLoadError: the entry is not one.
    """
    try:
        settings = json.loads(str(entry))
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError("its 'settings' entry is not JSON", path, SAVED_FILE_HINT) from exc
    if not isinstance(settings, dict):
        raise ModelLoadError("its 'settings' entry is not a JSON object", path, SAVED_FILE_HINT)
    return settings


def _check_fits(model: LoadedModel, feeds: dict[str, np.ndarray], colliding: np.ndarray,
                name: str, path: str) -> None:
    """Every saved input fits the model's declared dims, and each colliding input (k, *shape)
    has the original's shape.

    Raises:
        UsageError: a saved array of another shape (collisions made for another model).
    """
    for info in model_inputs(model):
        try:
            check_shape(feeds[info.name], list(declared_dims(info.type) or []), info.name, path)
        except UsageError as exc:
            raise UsageError(f"{exc.what}: were these collisions made for another model?",
                             path, "validate them on the model collide made them for"
                             ) from exc
    if colliding.shape[1:] != feeds[name].shape:
        raise UsageError(f"the colliding inputs have shape {colliding.shape[1:]}, the original "
                         f"{feeds[name].shape}", path, SAVED_FILE_HINT)
