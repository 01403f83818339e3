"""TensorProto -> numpy, with external data memory-mapped instead of read into memory."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxcollide.errors import ModelLoadError

# Element types whose external bytes can be memory-mapped as they are (little-endian raw data).
_MEMMAP_DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype("<f4"),
    TensorProto.DOUBLE: np.dtype("<f8"),
    TensorProto.FLOAT16: np.dtype("<f2"),
    TensorProto.INT8: np.dtype("i1"),
    TensorProto.UINT8: np.dtype("u1"),
    TensorProto.INT16: np.dtype("<i2"),
    TensorProto.UINT16: np.dtype("<u2"),
    TensorProto.INT32: np.dtype("<i4"),
    TensorProto.INT64: np.dtype("<i8"),
}


def dtype_name(elem_type: int) -> str:
    """Return the ONNX name of an element type, lower case (``float``, ``float16``, ``int8``);
    ``type N`` for a number ONNX does not define (a corrupt file)."""
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"type {elem_type}"


def array_dtype_name(dtype: np.dtype) -> str:
    """The ONNX name of a numpy dtype's element type (``float``, ``float16``, ...)."""
    return dtype_name(int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))))


def numpy_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def is_external(tensor: TensorProto) -> bool:
    """Tell whether the tensor's bytes live in an external data file."""
    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def tensor_to_array(tensor: TensorProto, base_dir: str) -> np.ndarray:
    """Return the tensor's values; external raw data is memory-mapped read-only.

    Args:
        tensor: an initializer or Constant value.
        base_dir: the folder of the model file, against which external locations resolve.

    Returns:
        An array of the tensor's shape (a read-only ``np.memmap`` for external data).
    """
    if not is_external(tensor):
        _check_stored_size(tensor)
        try:
            return numpy_helper.to_array(tensor)
        except Exception as exc:  # onnx raises what numpy raises for types it cannot read
            raise ModelLoadError(f"cannot read the tensor's values ({type(exc).__name__}: "
                                 f"{exc})", f"tensor '{tensor.name}'",
                                 "the model is corrupt: re-export it") from exc
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor '{tensor.name}'"
    if not location:
        raise ModelLoadError("the tensor's data is external but its record names no location",
                             where, "the model's external data records are corrupt; export "
                             "the model again")
    path = os.path.normpath(os.path.join(base_dir, location))
    inside = os.path.realpath(path).startswith(os.path.join(os.path.realpath(base_dir or "."), ""))
    if os.path.isabs(location) or not inside:
        raise ModelLoadError(
            f"external data location '{location}' points outside the model's folder",
            where,
            "keep external data files in the model's folder (ONNX and ONNX Runtime refuse "
            "other locations too)",
        )
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"external data file '{location}' not found next to the model",
            where,
            "keep the .onnx file and its external data files in one folder",
        )
    shape = tuple(int(d) for d in tensor.dims)
    dtype = _MEMMAP_DTYPES.get(tensor.data_type)
    if dtype is None:
        onnx.external_data_helper.load_external_data_for_tensor(tensor, base_dir)
        return numpy_helper.to_array(tensor)
    offset = _entry_int(info, "offset", where)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    need = count * dtype.itemsize
    if "length" in info and _entry_int(info, "length", where) != need:
        raise ModelLoadError(
            f"external data length {info['length']} does not match the tensor's {need} bytes "
            f"({'x'.join(map(str, shape)) or 'scalar'} {dtype_name(tensor.data_type)})",
            where,
            "the model's external data records are corrupt; export the model again",
        )
    if os.path.getsize(path) < offset + need:
        raise ModelLoadError(
            f"external data file '{location}' is shorter than the tensor needs "
            f"({offset + need} bytes)",
            where,
            "the file is truncated; copy it again",
        )
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


# Where each element type keeps its values when not in raw_data, and how many entries per
# element (complex: 2; 4-bit types: two elements per entry).
_TYPED_FIELDS: dict[int, tuple[str, float]] = {
    TensorProto.FLOAT: ("float_data", 1), TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.COMPLEX128: ("double_data", 2), TensorProto.STRING: ("string_data", 1),
    TensorProto.INT4: ("int32_data", 0.5), TensorProto.UINT4: ("int32_data", 0.5),
}


def _check_stored_size(tensor: TensorProto) -> None:
    """The stored values must be as many as the declared dims say, before any reshape.

    Raises:
        ModelLoadError: a negative dim, or stored bytes or entries that disagree with the
            dims (names the tensor, its dims, type and both sizes).
    """
    where = f"tensor '{tensor.name}'"
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"declares a negative dim {dims}", where,
                             "the model is corrupt: re-export it")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    kind = dtype_name(tensor.data_type) if tensor.data_type else "undefined type"
    if tensor.HasField("raw_data"):
        per = _raw_bytes_per_element(tensor.data_type)
        need = None if per is None else int(np.ceil(count * per))
        if need is not None and len(tensor.raw_data) != need:
            raise ModelLoadError(f"declares {'x'.join(map(str, dims)) or 'a scalar'} {kind} "
                                 f"({need} bytes) but stores {len(tensor.raw_data)} bytes",
                                 where, "the model is corrupt: re-export it")
        return
    field, per_element = _TYPED_FIELDS.get(tensor.data_type, ("int32_data", 1))
    stored = len(getattr(tensor, field))
    need = int(np.ceil(count * per_element))
    if stored != need and not (stored == 0 and count == 0):
        raise ModelLoadError(f"declares {'x'.join(map(str, dims)) or 'a scalar'} {kind} "
                             f"({need} values) but stores {stored}", where,
                             "the model is corrupt: re-export it")


def _raw_bytes_per_element(data_type: int) -> float | None:
    """Bytes per element in raw_data (0.5 for 4-bit types), None where unknown."""
    if data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1):
        return 0.5
    try:
        return float(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return None


def _entry_int(info: dict[str, str], key: str, where: str) -> int:
    """An external data entry (offset, length) as a non-negative integer.

    Raises:
        ModelLoadError: it is not one.
    """
    text = info.get(key, "0")
    if not text.isascii() or not text.isdigit():
        raise ModelLoadError(f"external data {key} '{text}' is not a non-negative integer",
                             where, "the model's external data records are corrupt; export "
                                    "the model again")
    return int(text)


def sparse_to_array(sparse: onnx.SparseTensorProto, base_dir: str) -> np.ndarray:
    """Return a SparseTensorProto's dense values (absent entries are 0).

    ``indices`` is (NNZ,) linear indices or (NNZ, rank) coordinates (the ONNX spec's two forms).

    Raises:
        ModelLoadError: the indices do not fit the tensor's dims.
    """
    values = np.asarray(tensor_to_array(sparse.values, base_dir)).reshape(-1)
    indices = np.asarray(tensor_to_array(sparse.indices, base_dir)).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(dims, dtype=np.int64)), dtype=values.dtype)
    try:
        flat = indices.reshape(-1) if indices.ndim <= 1 else np.ravel_multi_index(
            tuple(indices.reshape(values.size, len(dims)).T), dims)
        dense[flat] = values
    except (ValueError, IndexError) as exc:
        raise ModelLoadError(
            f"sparse tensor indices do not fit its dims {list(dims)} ({exc})",
            f"tensor '{sparse.values.name}'",
            "the model is corrupt; export it again",
        ) from exc
    return dense.reshape(dims)
