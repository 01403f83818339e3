"""The content cache of `onnxcollide check`: one audit record per model, keyed by the model's
SHA-256, the settings and the versions of the tool and its numerics.

An entry is used only when it is whole and consistent: its key, the digest of its payload, the
model's SHA-256 and every external data file it lists must match. Anything else (a truncated
file, edited JSON, another format) is ignored and rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from onnxcollide.errors import UsageError
from onnxcollide.report.files import write_text

CACHE_FORMAT = 1
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """The user's cache folder for onnxcollide: ``$XDG_CACHE_HOME/onnxcollide`` (default
    ``~/.cache/onnxcollide``), ``~/Library/Caches/onnxcollide`` on macOS,
    ``%LOCALAPPDATA%\\onnxcollide\\Cache`` on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "onnxcollide", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/onnxcollide")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "onnxcollide")


def file_sha256(path: str) -> str | None:
    """SHA-256 of a file's bytes; None when it cannot be read (the audit reports why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cache_key(model_sha256: str, settings: Mapping[str, Any], tool: Mapping[str, str]) -> str:
    """The entry's key: SHA-256 of the model's digest, the settings and the tool versions."""
    return hashlib.sha256(_canonical({"model": model_sha256, "settings": settings,
                                      "tool": tool}).encode()).hexdigest()


def entry_path(folder: str, key: str) -> str:
    """Where the entry of ``key`` lives (two-character sub-folders, as git does)."""
    return os.path.join(folder, key[:2], key[2:] + ".json")


def read_entry(folder: str, key: str, model_sha256: str, model_path: str
               ) -> dict[str, Any] | None:
    """The payload of the entry for ``key``, or None when there is none or it cannot be
    trusted (see the module docstring)."""
    try:
        with open(entry_path(folder, key), encoding="utf-8") as handle:
            entry = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT \
            or entry.get("key") != key or not isinstance(entry.get("payload"), dict):
        return None
    payload = entry["payload"]
    try:
        if hashlib.sha256(_canonical(payload).encode()).hexdigest() != entry.get("digest"):
            return None
    except (TypeError, ValueError):
        return None
    record = payload.get("record")
    if not isinstance(record, dict) or record.get("sha256") != model_sha256:
        return None
    if not _external_unchanged(payload.get("external"), model_path):
        return None
    return payload


def _external_unchanged(external: Any, model_path: str) -> bool:
    """Every external data file the entry lists still has the digest it had."""
    if not isinstance(external, list):
        return False
    folder = os.path.dirname(os.path.abspath(model_path))
    for item in external:
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            return False
        if file_sha256(os.path.join(folder, item["file"])) != item.get("sha256"):
            return False
    return True


def external_digests(model_path: str, files: list[str]) -> list[dict[str, str | None]]:
    """(file relative to the model's folder, its SHA-256) for each external data file."""
    folder = os.path.dirname(os.path.abspath(model_path))
    return [{"file": os.path.relpath(os.path.abspath(f), folder), "sha256": file_sha256(f)}
            for f in files]


def write_entry(folder: str, key: str, payload: Mapping[str, Any]) -> bool:
    """Write the entry atomically; False when the cache folder cannot be written (the check
    goes on without it)."""
    entry = {"format": CACHE_FORMAT, "key": key,
             "digest": hashlib.sha256(_canonical(payload).encode()).hexdigest(),
             "payload": payload}
    path = entry_path(folder, key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, json.dumps(entry, allow_nan=False))
    except (OSError, UsageError):
        return False
    return True
