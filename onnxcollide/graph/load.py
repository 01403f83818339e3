"""Load an ONNX file without reading external data, with clear errors for bad files."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import onnx
import onnx.inliner
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, helper, numpy_helper

from onnxcollide.errors import ModelLoadError
from onnxcollide.graph.skeleton import skeleton_bytes
from onnxcollide.graph.tensors import is_external, sparse_to_array
from onnxcollide.graph.validity import GraphWiring, check_graph, not_text_error
from onnxcollide.graph.walk import graphs_in, subgraphs
from onnxcollide.limits import read_within_limit

ONNX_VERSION: str = onnx.__version__  # reports record it (only graph/ imports onnx)


class FileDigest:
    """The SHA-256 of a file, computed in a background thread (hashlib and file reads
    release the GIL, so it runs beside the audit's work on another core) or given."""

    CHUNK = 8 << 20

    def __init__(self, path: str | None = None, digest: str | None = None) -> None:
        self._digest = digest
        self._path = path
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None
        if digest is None and path is not None:
            self._thread = threading.Thread(target=self._hash, args=(path,), daemon=True)
            self._thread.start()

    def _hash(self, path: str) -> None:
        digest = hashlib.sha256()
        buffer = bytearray(self.CHUNK)  # one buffer: no fresh pages per chunk
        view = memoryview(buffer)
        try:
            with open(path, "rb") as handle:
                while read := handle.readinto(buffer):
                    digest.update(view[:read])
        except OSError as exc:
            self._error = exc
            return
        self._digest = digest.hexdigest()

    @property
    def hexdigest(self) -> str:
        """The hex digest (waits for the thread).

        Raises:
            ModelLoadError: the file could not be read again.
        """
        if self._thread is not None:
            self._thread.join()
        if self._digest is None and self._error is None and self._path is not None:
            # The thread never ran to its end here: this process was forked from the one
            # that started it (check's worker processes). Hash in this thread instead.
            self._hash(self._path)
        if self._digest is None:
            strerror = self._error.strerror if self._error else "unknown error"
            raise ModelLoadError(f"cannot read the file to hash it ({strerror})")
        return self._digest


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model whose external tensors stay on disk until asked for.

    Attributes:
        path: the file as the user gave it.
        base_dir: folder that external data locations resolve against.
        proto: the ModelProto, model-local functions inlined (their attribute defaults
            applied), sparse tensors stored dense. In a single-file model the large
            main-graph initializers are external-data views of the file itself
            (``graph.skeleton``): their bytes are read, memory-mapped, where they are used.
        opset: version of the default ONNX domain.
        digest: the .onnx file's SHA-256 (``sha256``).
        wiring: the main graph's node inputs, outputs and subgraph holders as plain tuples.
    """

    path: str
    base_dir: str
    proto: onnx.ModelProto
    opset: int
    digest: FileDigest
    wiring: GraphWiring

    @property
    def sha256(self) -> str:
        """Hex digest of the .onnx file's bytes."""
        return self.digest.hexdigest


def _read_bytes(path: str) -> bytes:
    """The model file's bytes; a pipe (``<(cat m.onnx)``, ``/dev/stdin``) is read whole.

    Raises:
        ModelLoadError: an empty path, no such file, a folder, a device (reading one would
            never end), or a read error; a pipe over the memory limit (ResourceLimitError).
    """
    if not path:
        raise ModelLoadError("the model path is empty", "", "give the .onnx file")
    if not os.path.exists(path):
        raise ModelLoadError("file not found", path, "check the path")
    kind = os.stat(path).st_mode
    if stat.S_ISDIR(kind):
        raise ModelLoadError("is a folder, not an .onnx file", path, "pass the model file itself")
    if stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        raise ModelLoadError("is a device, not an .onnx file", path,
                             "save the model to a file and give that")
    try:
        return read_within_limit(path, "the model file")
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file ({exc.strerror})", path) from exc


def _check_text(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a text field of the model, its graph, opset imports or metadata (name,
    doc_string, producer, domain...) that is not valid UTF-8: protobuf hands such a field
    back as bytes, which no later copy of it accepts (an opset domain read so would not match
    the default domain, and the opset would silently fall back)."""
    owners = [("model", proto), ("graph", proto.graph),
              *(("opset import", entry) for entry in proto.opset_import),
              *(("metadata entry", entry) for entry in proto.metadata_props)]
    for owner, message in owners:
        for field, value in message.ListFields():
            if field.type == FieldDescriptor.TYPE_STRING and isinstance(value, bytes):
                raise not_text_error(f"the {owner}'s field '{field.name}'", path)


def _stored_tensors(proto: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor the model stores, in every graph: initializers, tensor attributes, and the
    values and indices of sparse ones (initializers and attributes)."""
    yield from tensors_in(proto.graph)
    for graph in graphs_in(proto.graph):
        sparse = list(graph.sparse_initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == AttributeProto.SPARSE_TENSOR:
                    sparse.append(attribute.sparse_tensor)
                sparse.extend(attribute.sparse_tensors)
        for tensor in sparse:
            yield tensor.values
            yield tensor.indices


def _check_tensor_text(proto: onnx.ModelProto, path: str) -> None:
    """Refuse a stored tensor whose name or external data entry (key or value: a location,
    offset, length) is not valid UTF-8: protobuf hands it back as bytes, which no path,
    number or later copy accepts."""
    for tensor in _stored_tensors(proto):
        if not isinstance(tensor.name, str):
            raise not_text_error(f"the tensor name {tensor.name!r}", path)
        for entry in tensor.external_data:
            if not isinstance(entry.key, str) or not isinstance(entry.value, str):
                raise not_text_error(f"the external data entry {entry.key!r} = "
                                     f"{entry.value!r}", f"{path}, tensor '{tensor.name}'")


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
    _check_text(proto, path)
    if proto.ir_version <= 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(
            "not an ONNX model (no IR version or empty graph)",
            path,
            "pass an .onnx file exported by a framework",
        )
    return proto


def _one_opset_per_domain(proto: onnx.ModelProto) -> None:
    """Keep the last import of each domain ('' and 'ai.onnx' are one), as ONNX Runtime and
    ONNX's checker read a model that imports a domain twice (old model zoo files import the
    default domain at 1, 2 and 6): every later reader then sees the version they use."""
    last: dict[str, tuple[str, int]] = {}
    for entry in proto.opset_import:
        last["" if entry.domain == "ai.onnx" else entry.domain] = (entry.domain, entry.version)
    if len(last) == len(proto.opset_import):
        return
    kept = [helper.make_opsetid(domain, version) for domain, version in last.values()]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


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


def _read_skeleton(path: str) -> tuple[onnx.ModelProto, FileDigest] | None:
    """The model parsed from its skeleton (``graph.skeleton``: large weights left in the
    file as views), with its digest computed beside; None where the file has no large
    weights to leave, cannot be walked, or lies behind a symbolic link in another folder
    (views locate the file through its folder)."""
    if not os.path.isfile(path) or os.path.dirname(os.path.realpath(path)) != \
            os.path.realpath(os.path.dirname(os.path.abspath(path))):
        return None
    skeleton = skeleton_bytes(path, os.path.basename(path))
    if skeleton is None:
        return None
    try:
        proto = _parse(skeleton, path)
    except ModelLoadError:
        return None  # parsed whole, the file gives the error itself
    return proto, FileDigest(path)


def _read_whole(path: str) -> tuple[onnx.ModelProto, FileDigest]:
    """The model parsed from all its bytes, and their digest."""
    data = _read_bytes(path)
    proto = _parse(data, path)
    return proto, FileDigest(digest=hashlib.sha256(data).hexdigest())


def _load_uncached(path: str) -> LoadedModel:
    proto, digest = _read_skeleton(path) or _read_whole(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    _one_opset_per_domain(proto)
    if len(proto.functions) > 0:
        _apply_function_defaults(proto)
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as exc:  # onnx raises plain exceptions from C++
            raise ModelLoadError(
                f"cannot inline the model-local functions ({exc})", path
            ) from exc
    _check_tensor_text(proto, path)
    _densify_sparse(proto, base_dir)
    wiring = check_graph(proto, path)
    _tell_same_named_nodes_apart(proto)
    return LoadedModel(path, base_dir, proto, _default_opset(proto), digest, wiring)


def external_data_files(model: LoadedModel) -> list[str]:
    """The files (paths as found next to the model) that hold the model's external data:
    initializers and Constant values of every graph, subgraphs included; not the model file
    itself, where its own weights are read as views of it."""
    itself = os.path.join(model.base_dir, os.path.basename(model.path))
    files: dict[str, None] = {}
    for tensor in tensors_in(model.proto.graph):
        if is_external(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            path = os.path.join(model.base_dir, location)
            if path != itself:
                files[path] = None
    return list(files)


def tensors_in(graph: GraphProto, main_initializers: bool = True) -> Iterator[TensorProto]:
    """Every tensor ``graph`` and its subgraphs hold: initializers (the main graph's only with
    ``main_initializers``) and tensor-valued attributes (Constant values, ...)."""
    for current in graphs_in(graph):
        if main_initializers or current is not graph:
            yield from current.initializer
        for node in current.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    yield attr.t
                yield from attr.tensors


def _apply_function_defaults(proto: onnx.ModelProto) -> None:
    """Write each model-local function's attribute defaults (``attribute_proto``) onto the
    calls that leave them out: ONNX's inliner drops an attribute that refers to a default
    (onnx 1.23), which would turn e.g. a default ``transB=1`` into 0."""
    defaults = {(f.domain, f.name, f.overload): list(f.attribute_proto)
                for f in proto.functions if len(f.attribute_proto) > 0}
    if not defaults:
        return
    for node in _all_nodes(proto):
        given = {a.name for a in node.attribute}
        for default in defaults.get((node.domain, node.op_type, node.overload), []):
            if default.name not in given:
                node.attribute.append(default)


def _all_nodes(proto: onnx.ModelProto) -> list[NodeProto]:
    """The nodes of the main graph, of every function body, and of every subgraph in them."""
    tops = list(proto.graph.node) + [node for f in proto.functions for node in f.node]
    nodes: list[NodeProto] = []
    for top in tops:
        nodes.append(top)
        nodes += [n for _, sub in subgraphs(top) for g in graphs_in(sub) for n in g.node]
    return nodes


def _tell_same_named_nodes_apart(proto: onnx.ModelProto) -> None:
    """Rename nodes that share a name within one graph to ``NAME#INDEX`` (their index in
    that graph; ``NAME#INDEX#K`` where that name is taken too). ONNX does not require unique
    node names (ONNX Runtime does), and labels, subgraph scopes and W1's row are keyed by
    them: two If nodes named alike would otherwise merge their branches' weights into one
    parameter."""
    for graph in graphs_in(proto.graph):
        counts = Counter(node.name for node in graph.node if node.name)
        taken = set(counts)
        for index, node in enumerate(graph.node):
            if counts[node.name] > 1:
                node.name = _free_name(f"{node.name}#{index}", taken)
                taken.add(node.name)


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name#K`` with the smallest K >= 1 that is not in ``taken``."""
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    return candidate


def _densify_sparse(proto: onnx.ModelProto, base_dir: str) -> None:
    """Store sparse initializers and Constant ``sparse_value`` attributes as dense tensors
    (the same values; weights are read from dense tensors only)."""
    for graph in graphs_in(proto.graph):
        for sparse in graph.sparse_initializer:
            graph.initializer.append(
                numpy_helper.from_array(sparse_to_array(sparse, base_dir), sparse.values.name))
        del graph.sparse_initializer[:]
        for node in graph.node:
            for k, attr in enumerate(node.attribute):
                if node.op_type == "Constant" and attr.name == "sparse_value":
                    dense = numpy_helper.from_array(sparse_to_array(attr.sparse_tensor, base_dir))
                    node.attribute[k].CopyFrom(helper.make_attribute("value", dense))
