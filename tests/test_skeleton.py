"""graph/skeleton.py and linalg/pages.py: single-file weights read as views of the file,
and the pages of memory-mapped weights given back as they are read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import assert_one_line_error, init, ints, make_model, run_cli, value
from onnx import helper, numpy_helper

from onnxcollide.audit.model import audit_model
from onnxcollide.graph import load as load_module
from onnxcollide.graph.load import external_data_files, load_model
from onnxcollide.graph.skeleton import VIEW_MIN_BYTES
from onnxcollide.graph.tensors import is_external, tensor_to_array
from onnxcollide.linalg.pages import give_back
from onnxcollide.report.json_format import report_dict


def _model(folder, rng, name="m.onnx") -> tuple[str, dict[str, np.ndarray]]:
    """Reshape -> MatMul (300 x 200: 240 KB, a view) -> Gemm (200 x 10, 8 KB: inline)."""
    weights = {"w1": rng.standard_normal((300, 200)).astype(np.float32),
               "w2": rng.standard_normal((10, 200)).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w1"], ["h"]),
             helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1)]
    path = make_model(folder / name, nodes, [value("x", [1, 3, 10, 10])], [value("y", [1, 10])],
                      [ints("shape", [1, 300])] + [init(k, v) for k, v in weights.items()])
    return path, weights


def test_large_weights_become_views_of_the_file(tmp_path, rng):
    """The 240 KB weight is an external tensor located in the .onnx file itself, at the
    offset of its raw bytes; its values are the weight's. The shape and the 8 KB weight
    stay inline; the skeleton is a small part of the file; the digest is the file's."""
    path, weights = _model(tmp_path, rng)
    model = load_model(path)
    tensors = {t.name: t for t in model.proto.graph.initializer}
    assert is_external(tensors["w1"])
    assert not is_external(tensors["w2"]) and not is_external(tensors["shape"])
    info = {e.key: e.value for e in tensors["w1"].external_data}
    assert info["location"] == "m.onnx"
    with open(path, "rb") as handle:
        handle.seek(int(info["offset"]))
        assert handle.read(int(info["length"])) == weights["w1"].tobytes()
    np.testing.assert_array_equal(tensor_to_array(tensors["w1"], model.base_dir), weights["w1"])
    assert model.proto.ByteSize() < os.path.getsize(path) - weights["w1"].nbytes + 1024
    with open(path, "rb") as handle:
        assert model.sha256 == hashlib.sha256(handle.read()).hexdigest()
    assert external_data_files(model) == []
    assert weights["w1"].nbytes >= VIEW_MIN_BYTES > weights["w2"].nbytes


def test_audit_is_the_same_as_from_the_whole_file(tmp_path, rng, monkeypatch):
    """The audit report from the skeleton equals the one from parsing the whole file."""
    path, _ = _model(tmp_path, rng)
    from_views = report_dict([audit_model(path)])
    load_module._load_cached.cache_clear()
    monkeypatch.setattr(load_module, "skeleton_bytes", lambda *args: None)
    whole = load_model(path)
    assert not any(is_external(t) for t in whole.proto.graph.initializer)
    assert report_dict([audit_model(path)]) == from_views
    load_module._load_cached.cache_clear()


def test_a_truncated_file_is_reported_as_before(tmp_path, rng):
    """Cut inside the weight's bytes: the walk stops, the whole-file parser reports it."""
    path, _ = _model(tmp_path, rng)
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    line = assert_one_line_error(run_cli("audit", str(cut)), 3)
    assert "not a valid ONNX file" in line


def test_a_link_from_another_folder_parses_the_whole_file(tmp_path, rng):
    """A symbolic link in another folder: views would be located through the link's folder,
    so the file is parsed whole, and the audit is the same."""
    os.mkdir(tmp_path / "a")
    os.mkdir(tmp_path / "b")
    path, _ = _model(tmp_path / "a", rng)
    link = tmp_path / "b" / "link.onnx"
    os.symlink(path, link)
    linked = load_model(str(link))
    assert not any(is_external(t) for t in linked.proto.graph.initializer)
    expected = report_dict([audit_model(path)])["models"][0]["layers"]
    assert report_dict([audit_model(str(link))])["models"][0]["layers"] == expected


def test_other_encodings_stay_inline(tmp_path, rng):
    """float_data (no raw bytes) and bfloat16 (not memory-mapped) weights are parsed as
    before; the model still audits."""
    w = rng.standard_normal((300, 200)).astype(np.float32)
    packed = helper.make_tensor("w", onnx.TensorProto.FLOAT, w.shape, w.ravel().tolist())
    path = make_model(tmp_path / "f.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                      [value("x", [1, 300])], [value("y", [1, 200])], [packed])
    model = load_model(path)
    assert not is_external(model.proto.graph.initializer[0])
    np.testing.assert_array_equal(numpy_helper.to_array(model.proto.graph.initializer[0]), w)
    assert audit_model(path).rows[0].rank == 200


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("tall", [True, False])
def test_pages_are_given_back_and_read_again(tmp_path, tall):
    """A 64 MB memory-mapped matrix read in full holds its pages; given back (rows, or
    columns of every row), resident memory drops by most of it, and the values read again
    are unchanged."""
    shape = (4096, 4096) if tall else (2048, 8192)
    data = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    file = tmp_path / "w.bin"
    data.tofile(file)
    mapped = np.memmap(file, dtype=np.float32, mode="r", shape=shape)
    assert float(mapped.sum(dtype=np.float64)) == float(data.sum(dtype=np.float64))
    before = _rss_kb()
    half = shape[0 if tall else 1] // 2
    give_back(mapped, 0, half, tall)
    give_back(mapped, half, shape[0 if tall else 1], tall)
    assert before - _rss_kb() > 0.75 * data.nbytes / 1024
    np.testing.assert_array_equal(np.asarray(mapped), data)


def test_arrays_in_memory_are_left_alone(rng):
    """give_back on an ordinary array (not a memory map) changes nothing."""
    array = rng.standard_normal((512, 512))
    copy = array.copy()
    give_back(array, 0, 512, True)
    give_back(array[:, :100], 0, 100, False)
    np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("offset", [0, 4098])
def test_column_blocks_are_read_from_the_file_as_through_the_map(tmp_path, rng, offset):
    """read_columns (one preadv per row, no fault-around) gives the values the map holds,
    also for a map at an unaligned offset (a view inside a single .onnx file); the Gram
    matrix of a wide memory-mapped weight is the one of the array in memory."""
    from onnxcollide.linalg.pages import read_columns
    from onnxcollide.linalg.spectral import gram_matrix

    data = rng.standard_normal((300, 5000)).astype(np.float32)
    file = tmp_path / "w.bin"
    file.write_bytes(b"\0" * offset + data.tobytes())
    mapped = np.memmap(file, dtype=np.float32, mode="r", offset=offset, shape=data.shape)
    out = np.empty((300, 700))
    assert read_columns(mapped, 1000, 1700, out)
    np.testing.assert_array_equal(out, data[:, 1000:1700])
    assert not read_columns(data, 0, 10, np.empty((300, 10)))  # not a map: caller copies
    np.testing.assert_array_equal(np.triu(gram_matrix(mapped)), np.triu(gram_matrix(data)))


def test_a_file_digest_started_before_a_fork_is_computed_in_the_child(tmp_path):
    """check's worker processes are forked: a digest whose thread started in the parent has
    no thread in the child, which said 'cannot read the file to hash it (unknown error)'."""
    import hashlib
    import multiprocessing
    import threading

    from onnxcollide.graph.load import FileDigest

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (3 << 20))
    gate = threading.Event()
    original = FileDigest._hash

    def slow(self, name):  # the parent's thread waits until the fork has happened
        gate.wait(10)
        original(self, name)

    FileDigest._hash = slow
    try:
        digest = FileDigest(str(path))
        FileDigest._hash = original
        context = multiprocessing.get_context("fork")  # the object is inherited, not pickled
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_send_hexdigest, args=(digest, send))
        child.start()
        answer = receive.recv() if receive.poll(60) else None
        child.join(10)
    finally:
        FileDigest._hash = original
        gate.set()
    assert answer == hashlib.sha256(path.read_bytes()).hexdigest()


def _send_hexdigest(digest, connection):
    try:
        connection.send(digest.hexdigest)
    except Exception as exc:  # the parent shows what went wrong
        connection.send(f"{type(exc).__name__}: {exc}")
