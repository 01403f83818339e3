"""A single-file model's skeleton: its large weights become views of the file's own bytes.

Parsing a whole ``.onnx`` file copies every weight into the protobuf message, and shape
inference on it serialises and parses it again: several copies of the model at once. Here the
file is memory-mapped and its protobuf wire format walked (tags and lengths only, weight bytes
untouched); each main-graph initializer whose ``raw_data`` holds at least VIEW_MIN_BYTES of a
type that can be memory-mapped is rewritten as an external-data tensor whose location is the
model file itself and whose offset and length are those of its raw bytes there. What is left
(nodes, small tensors such as Reshape shapes, types, metadata) is parsed as usual: the
skeleton, a few hundred kilobytes for a large model. ``tensors.tensor_to_array`` then reads
each weight as a read-only memory map of those bytes, one parameter at a time, and shape
inference reads the weights' declared dims and types without their bytes.

Anything the walk does not expect (a group field, a length past the end, a repeated
``raw_data``) leaves the file to the ordinary parser, which reports real damage itself.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator

from onnx import TensorProto

VIEW_MIN_BYTES = 64 << 10  # initializers with at least this many raw bytes become views

# Field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto fields.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_TENSOR_SEGMENT = 3
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_LENGTH_DELIMITED = 2
# Element types that tensors.tensor_to_array memory-maps (little-endian raw data): item size.
_ITEMSIZE: dict[int, int] = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2,
             TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2,
             TensorProto.UINT16: 2, TensorProto.INT32: 4, TensorProto.INT64: 8}


class _NotScannable(Exception):
    """The bytes are not the protobuf the walk expects; the ordinary parser takes over."""


def skeleton_bytes(path: str, location: str) -> bytes | None:
    """The model file's bytes with its large main-graph initializers turned into views.

    Args:
        path: the ``.onnx`` file.
        location: the file's name as external data locations give it (relative to its
            folder: its base name).

    Returns:
        The rewritten ModelProto bytes, or None where no initializer was rewritten or the
        file cannot be memory-mapped or walked (the caller then parses the file whole).
    """
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # an empty file, a pipe, a file system without mmap
        return None
    try:
        with memoryview(mapped) as buffer:
            return _rewrite_model(buffer, location)
    except _NotScannable:
        return None
    finally:
        mapped.close()


def _varint(buffer: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _NotScannable
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buffer: memoryview, start: int, end: int
            ) -> Iterator[tuple[int, int, int, int, int]]:
    """The fields of the message in ``buffer[start:end]``: (number, wire type, start of the
    field, start of its value, end of the field)."""
    pos = start
    while pos < end:
        tag, value_at = _varint(buffer, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            after = _varint(buffer, value_at, end)[1]
        elif wire == 1:
            after = value_at + 8
        elif wire == _LENGTH_DELIMITED:
            length, value_at = _varint(buffer, value_at, end)
            after = value_at + length
        elif wire == 5:
            after = value_at + 4
        else:  # groups (3, 4) are not in onnx.proto; 6 and 7 are invalid
            raise _NotScannable
        if number == 0 or after > end:
            raise _NotScannable
        yield number, wire, pos, value_at, after
        pos = after


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited field: its key, its length, its bytes."""
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + \
        payload


def _rewrite_fields(buffer: memoryview, start: int, end: int, number: int,
                    rewrite: Callable[[int, int], bytes | None]) -> bytes | None:
    """The message ``buffer[start:end]`` with each length-delimited field ``number`` replaced
    by ``rewrite(value start, value end)`` where that gives bytes; None if none was."""
    pieces: list[bytes] = []
    copied_to = start
    for field, wire, field_at, value_at, after in _fields(buffer, start, end):
        if field != number or wire != _LENGTH_DELIMITED:
            continue
        replaced = rewrite(value_at, after)
        if replaced is None:
            continue
        pieces += [bytes(buffer[copied_to:field_at]), _length_delimited(number, replaced)]
        copied_to = after
    if not pieces:
        return None
    pieces.append(bytes(buffer[copied_to:end]))
    return b"".join(pieces)


def _rewrite_model(buffer: memoryview, location: str) -> bytes | None:
    """ModelProto bytes with the main graph's large initializers as views (None if none)."""
    def graph(start: int, end: int) -> bytes | None:
        return _rewrite_fields(buffer, start, end, _GRAPH_INITIALIZER,
                               lambda a, b: _tensor_view(buffer, a, b, location))

    return _rewrite_fields(buffer, 0, len(buffer), _MODEL_GRAPH, graph)


def _tensor_view(buffer: memoryview, start: int, end: int, location: str) -> bytes | None:
    """The TensorProto ``buffer[start:end]`` as an external-data tensor whose bytes are its
    own ``raw_data`` in the file (offset and length), or None to keep it as it is: a small
    tensor, a type that is not memory-mapped, data already external or split in segments,
    or raw bytes that do not match its dims."""
    raw: tuple[int, int] | None = None
    data_type = 0
    kept: list[bytes] = []
    for number, wire, field_at, value_at, after in _fields(buffer, start, end):
        if number == _TENSOR_RAW_DATA and wire == _LENGTH_DELIMITED:
            if raw is not None:
                return None  # repeated raw_data (the last wins): leave it to protobuf
            raw = (value_at, after)
            continue
        if number in (_TENSOR_SEGMENT, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None
        if number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = _varint(buffer, value_at, after)[0]
        kept.append(bytes(buffer[field_at:after]))
    if raw is None or raw[1] - raw[0] < VIEW_MIN_BYTES or data_type not in _ITEMSIZE:
        return None
    tensor = TensorProto()
    tensor.ParseFromString(b"".join(kept))
    if _byte_count(tensor) != raw[1] - raw[0]:
        return None  # the ordinary path reports the mismatch where the weight is read
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(raw[0])),
                       ("length", str(raw[1] - raw[0]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor.SerializeToString()


def _byte_count(tensor: TensorProto) -> int:
    """How many raw bytes the tensor's dims and element type call for."""
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * _ITEMSIZE[tensor.data_type]
