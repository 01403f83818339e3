"""Load an ONNX file without reading external data, with clear errors for bad files."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, replace

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError

from onnxcollide.errors import ModelLoadError


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model whose external tensors stay on disk until asked for.

    Attributes:
        path: the file as the user gave it.
        base_dir: folder that external data locations resolve against.
        proto: the ModelProto, model-local functions inlined.
        opset: version of the default ONNX domain.
        sha256: hex digest of the .onnx file's bytes.
    """

    path: str
    base_dir: str
    proto: onnx.ModelProto
    opset: int
    sha256: str


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise ModelLoadError("file not found", path, "check the path")
    if os.path.isdir(path):
        raise ModelLoadError("is a folder, not an .onnx file", path, "pass the model file itself")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror})", path) from exc


def _parse(data: bytes, path: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            "not a valid ONNX file (protobuf decoding failed: truncated or not ONNX)",
            path,
            "re-export or copy the model again",
        ) from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(
            "not an ONNX model (no IR version or empty graph)",
            path,
            "pass an .onnx file exported by a framework",
        )
    return proto


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def load_model(path: str) -> LoadedModel:
    """Parse ``path``, inline model-local functions, leave external data on disk.

    One command asks for the same model several times (audit, search, runtime): the result is
    cached per (absolute path, modification time, size), two models at most. Callers must not
    modify the returned proto; every rewrite works on a copy.

    Raises:
        ModelLoadError: the file is missing, unreadable, truncated or not ONNX.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return _load_uncached(path)  # reports the missing file with its one-line error
    loaded = _load_cached(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    return loaded if loaded.path == path else replace(loaded, path=path)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> LoadedModel:
    return _load_uncached(path)


def _load_uncached(path: str) -> LoadedModel:
    data = _read_bytes(path)
    proto = _parse(data, path)
    if len(proto.functions) > 0:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as exc:  # onnx raises plain exceptions from C++
            raise ModelLoadError(
                f"cannot inline the model-local functions ({exc})", path
            ) from exc
    base_dir = os.path.dirname(os.path.abspath(path))
    digest = hashlib.sha256(data).hexdigest()
    return LoadedModel(path, base_dir, proto, _default_opset(proto), digest)
