"""Mutated models and the property every command must keep on them (issue 19).

Shared by ``tests/test_fuzz.py`` (a fixed-seed, bounded run in CI, examples drawn by
hypothesis) and ``scripts/fuzz.py`` (many more). A mutation takes a real or fixture model and
changes one thing: an attribute, an initializer's dims or data type, an input name, a node,
the opset, a graph input's dims or type, the external data entries, a text made invalid
UTF-8, or the file's bytes; or builds a graph with a cycle or deeply nested subgraphs. Each
command then runs in a worker process (so a crash by a signal is seen, not suffered) and must
end with exit 0, 1, 2 or 3, at most one ``error:`` line and no traceback, "internal error"
or Python warning on stderr, within a time bound, writing nothing outside its ``-o`` folder.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
BASES = ("models/mlp_dense.onnx", "models/patch_embed.onnx", "models/cnn_overlap.onnx",
         "models/depthwise_cnn.onnx", "tests/data/lenet5_mnist_torch.onnx",
         "tests/data/lenet5_mnist_qdq.onnx", "tests/data/mnist-8_cntk.onnx",
         "tests/data/mtcnn_pnet.onnx")
KINDS = ("attribute", "initializer_dims", "initializer_type", "input_name", "drop_node",
         "cycle", "opset", "graph_input_dims", "nested_if", "external_data", "truncate",
         "bit_flip", "not_utf8", "graph_input_type")
EXIT_CODES = (0, 1, 2, 3)
PYTHON_WARNING = re.compile(r"\S+\.py:\d+: \w*Warning: ")  # warnings' own line: path, line
MAX_MEMORY = "2G"  # every command runs under this limit: hostile sizes are refused early
TIME_BOUND = 120.0  # seconds per command


@dataclass(frozen=True)
class Case:
    """One mutated model: where it is, what was done, and input files for ``validate``."""

    model: Path
    description: str
    inputs: tuple[Path, Path] | None
    base: str = "models/mlp_dense.onnx"


@dataclass
class Outcome:
    """What one command did: exit code (negative: killed by that signal; None: timed out),
    stderr, seconds, and the files it wrote outside its output folder."""

    command: list[str]
    code: int | None
    stderr: str
    seconds: float
    stray: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every way this run breaks the property, in words (empty: it holds)."""
        found = []
        if self.code is None:
            found.append(f"took more than {TIME_BOUND:.0f} s")
        elif self.code < 0:
            found.append(f"killed by signal {-self.code}")
        elif self.code not in EXIT_CODES:
            found.append(f"exit code {self.code}")
        if "Traceback" in self.stderr or "internal error" in self.stderr:
            found.append("a traceback or an internal error on stderr")
        native = [line for line in self.stderr.splitlines() if line.startswith(NATIVE)]
        if native:
            found.append("a library or a forked child wrote to stderr itself: "
                         f"{native[0][len(NATIVE):][:200]}")
        warned = [line for line in self.stderr.splitlines() if PYTHON_WARNING.search(line)]
        if warned:
            found.append(f"a Python warning reached stderr: {warned[0][:200]}")
        errors = [line for line in self.stderr.splitlines() if line.startswith("error:")]
        if len(errors) > 1 or (self.code not in (0, 1, None) and len(errors) != 1):
            found.append(f"{len(errors)} error lines for exit code {self.code}")
        if self.stray:
            found.append(f"wrote outside -o: {self.stray}")
        return found


# ------------------------------------------------------------------ mutations


def _attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = [n for n in model.graph.node if any(a.type in (AttributeProto.INT,
                                                           AttributeProto.INTS)
                                                for a in n.attribute)]
    if not nodes:
        return _drop_node(model, rng)
    node = rng.choice(nodes)
    attr = rng.choice([a for a in node.attribute
                       if a.type in (AttributeProto.INT, AttributeProto.INTS)])
    value = rng.choice([0, -1, -(2**31), 2**40, 7])
    how = rng.choice(["value", "value", "wrong type"])
    if how == "wrong type":
        attr.type, attr.f = AttributeProto.FLOAT, 0.5
        attr.ClearField("i")
        del attr.ints[:]
        return f"attribute {attr.name} of {node.op_type} '{node.name}' made a float"
    if attr.type == AttributeProto.INT:
        attr.i = value
    elif attr.ints:
        attr.ints[rng.randrange(len(attr.ints))] = value
    return f"attribute {attr.name} of {node.op_type} '{node.name}' set to {value}"


def _initializer(model: onnx.ModelProto, rng: random.Random) -> TensorProto | None:
    tensors = [t for t in model.graph.initializer if t.dims]
    return rng.choice(tensors) if tensors else None


def _initializer_dims(model: onnx.ModelProto, rng: random.Random) -> str:
    tensor = _initializer(model, rng)
    if tensor is None:
        return _unchanged(model)
    k = rng.randrange(len(tensor.dims))
    new = rng.choice([0, tensor.dims[k] + 1, 2**31, 2**20])
    tensor.dims[k] = new
    return f"initializer '{tensor.name}' dim {k} set to {new} (data unchanged)"


def _initializer_type(model: onnx.ModelProto, rng: random.Random) -> str:
    tensor = _initializer(model, rng)
    if tensor is None:
        return _unchanged(model)
    new = rng.choice([TensorProto.STRING, TensorProto.BOOL, TensorProto.COMPLEX64,
                      TensorProto.INT4, TensorProto.FLOAT8E4M3FN, TensorProto.UNDEFINED,
                      TensorProto.DOUBLE])
    tensor.data_type = new
    return f"initializer '{tensor.name}' data type set to {TensorProto.DataType.Name(new)}"


def _input_name(model: onnx.ModelProto, rng: random.Random) -> str:
    node = rng.choice([n for n in model.graph.node if n.input])
    k = rng.randrange(len(node.input))
    new = rng.choice(["", "undefined_tensor"])
    old, node.input[k] = node.input[k], new
    return f"input {k} ('{old}') of {node.op_type} '{node.name}' renamed to '{new}'"


def _drop_node(model: onnx.ModelProto, rng: random.Random) -> str:
    k = rng.randrange(len(model.graph.node))
    node = model.graph.node[k]
    del model.graph.node[k]
    return f"node {k} ({node.op_type} '{node.name}') removed"


def _cycle(model: onnx.ModelProto, rng: random.Random) -> str:
    nodes = model.graph.node
    if len(nodes) < 2:
        return _drop_node(model, rng)
    early = rng.randrange(len(nodes) - 1)
    late = rng.randrange(early + 1, len(nodes))
    if not nodes[early].input or not nodes[late].output:
        return _drop_node(model, rng)
    nodes[early].input[0] = nodes[late].output[0]
    return f"{nodes[early].op_type} '{nodes[early].name}' reads the output of a later node"


def _opset(model: onnx.ModelProto, rng: random.Random) -> str:
    version = rng.choice([0, 1, 999])
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
    return f"default opset set to {version}"


def _graph_input_dims(model: onnx.ModelProto, rng: random.Random) -> str:
    value = model.graph.input[0]
    dims = value.type.tensor_type.shape.dim
    if not dims:
        return _opset(model, rng)
    k = rng.randrange(len(dims))
    new = rng.choice([0, -1, 2**31, 2**40])
    dims[k].ClearField("dim_param")
    dims[k].dim_value = new
    return f"graph input '{value.name}' dim {k} set to {new}"


def _graph_input_type(model: onnx.ModelProto, rng: random.Random) -> str:
    """The first graph input's element type changed (to one no array holds, a string, an
    integer, another float width), or the input made a sequence, a map or typeless."""
    value = model.graph.input[0]
    kind = rng.choice(["element", "element", "element", "sequence", "map", "none"])
    if kind == "element":
        elem = rng.choice([TensorProto.UNDEFINED, TensorProto.STRING, TensorProto.BOOL,
                           TensorProto.INT64, TensorProto.UINT8, TensorProto.FLOAT16,
                           TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.COMPLEX64,
                           TensorProto.FLOAT8E4M3FN, TensorProto.INT4, 999])
        value.type.tensor_type.elem_type = elem
        return f"graph input '{value.name}' element type set to {elem}"
    if kind == "sequence":
        value.CopyFrom(helper.make_tensor_sequence_value_info(value.name, TensorProto.FLOAT,
                                                             None))
    elif kind == "map":
        value.type.CopyFrom(helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    else:
        value.ClearField("type")
    return f"graph input '{value.name}' made {kind}-typed"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def nested_if(depth: int) -> bytes:
    """A model whose only Gemm sits inside ``depth`` nested If branches (each else branch a
    constant, so the file grows linearly with the depth). Written as protobuf bytes level by
    level, so it can be deeper than protobuf's own nesting limit."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y0"])], "body0", [],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None)],
                              [weight]).SerializeToString()
    for level in range(1, depth + 1):
        out = f"y{level}"
        other = helper.make_attribute("else_branch", helper.make_graph(
            [helper.make_node("Constant", [], [f"z{level}"],
                              value=numpy_helper.from_array(np.zeros((1, 4), np.float32)))],
            f"else{level}", [], [helper.make_tensor_value_info(f"z{level}", TensorProto.FLOAT,
                                                               None)]))
        then = _field(1, "then_branch") + _field(6, graph) + \
            _varint(20 << 3) + _varint(AttributeProto.GRAPH)
        node = _field(1, "cond") + _field(2, out) + _field(4, "If") + _field(5, then) + \
            _field(5, other.SerializeToString())
        output = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        graph = _field(1, node) + _field(2, f"body{level}") + \
            _field(12, output.SerializeToString())
    inputs = b"".join(_field(11, v.SerializeToString()) for v in (
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("cond", TensorProto.BOOL, [])))
    opset = helper.make_opsetid("", 17).SerializeToString()
    return _varint(1 << 3) + _varint(8) + _field(8, opset) + _field(7, graph + inputs)


def _unchanged(model: onnx.ModelProto) -> str:
    """For a model without initializers (weights in Constant nodes): nothing to change."""
    return "no initializer to change: unchanged"


MUTATORS: dict[str, Callable[[onnx.ModelProto, random.Random], str]] = {
    "attribute": _attribute, "initializer_dims": _initializer_dims,
    "initializer_type": _initializer_type, "input_name": _input_name,
    "drop_node": _drop_node, "cycle": _cycle, "opset": _opset,
    "graph_input_dims": _graph_input_dims, "graph_input_type": _graph_input_type,
}


def _external(model: onnx.ModelProto, folder: Path, rng: random.Random) -> tuple[Path, str]:
    """The model saved with its weights as external data, one entry then broken."""
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    saved = onnx.load_model(path, load_external_data=False)
    tensors = [t for t in saved.graph.initializer if t.external_data]
    if not tensors:
        return path, "no external tensor"
    tensor = rng.choice(tensors)
    entries = {e.key: e for e in tensor.external_data}
    key, value = rng.choice([("offset", "999999999"), ("length", "3"), ("length", "99999999"),
                             ("location", "../outside.bin"), ("location", "/etc/passwd"),
                             ("location", "missing.bin"), ("offset", "-8")])
    if key in entries:
        entries[key].value = value
    else:
        tensor.external_data.add(key=key, value=value)
    onnx.save_model(saved, path)
    return path, f"external data of '{tensor.name}': {key} set to {value}"


def _texts(model: onnx.ModelProto) -> list[str]:
    """The main graph's names and other text of at least three characters (shorter ones
    would match bytes all over the file): node names, op types, domains, tensor and
    attribute names, dim_params, external data entries, the producer."""
    graph = model.graph
    texts = {model.producer_name, *(entry.domain for entry in model.opset_import)}
    for node in graph.node:
        texts |= {node.name, node.op_type, node.domain, *node.input, *node.output,
                  *(attribute.name for attribute in node.attribute)}
    for value in (*graph.input, *graph.output, *graph.value_info):
        texts.add(value.name)
        texts |= {d.dim_param for d in value.type.tensor_type.shape.dim}
    for tensor in graph.initializer:
        texts.add(tensor.name)
        texts |= {text for entry in tensor.external_data for text in (entry.key, entry.value)}
    return sorted(text for text in texts if len(text.encode()) >= 3)


def _not_utf8(model: onnx.ModelProto, folder: Path, rng: random.Random) -> tuple[Path, str]:
    """One text of the model (half the time saved with external data) made invalid UTF-8
    in the file's bytes: its first byte becomes 0xEC, a lead byte that ASCII cannot follow.
    Every occurrence (where a name is made and where it is read) or only the first."""
    path = folder / "model.onnx"
    if rng.random() < 0.5:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
        model = onnx.load_model(path, load_external_data=False)
    texts = _texts(model)
    data = model.SerializeToString()
    if not texts:
        path.write_bytes(data)
        return path, "no text to change: unchanged"
    text = rng.choice(texts)
    every = rng.random() < 0.5
    raw = text.encode()
    path.write_bytes(data.replace(raw, b"\xec" + raw[1:], -1 if every else 1))
    return path, f"'{text}' made invalid UTF-8 ({'everywhere' if every else 'first place'})"


def make_case(base: str, kind: str, seed: int, folder: Path) -> Case:
    """Write one mutated model (and two input files for ``validate``) into ``folder``."""
    rng = random.Random(seed)
    model = onnx.load(ROOT / base)
    inputs = _input_files(model, folder, seed)
    path = folder / "model.onnx"
    if kind == "nested_if":
        depth = rng.choice([3, 20, 32, 33, 120])
        path.write_bytes(nested_if(depth))
        return Case(path, f"If nested {depth} deep", None, base)
    if kind == "external_data":
        path, what = _external(model, folder, rng)
        return Case(path, f"{base}: {what}", inputs, base)
    if kind == "not_utf8":
        path, what = _not_utf8(model, folder, rng)
        return Case(path, f"{base}: {what}", inputs, base)
    if kind in MUTATORS:
        what = MUTATORS[kind](model, rng)
        path.write_bytes(model.SerializeToString())
        return Case(path, f"{base}: {what}", inputs, base)
    data = bytearray((ROOT / base).read_bytes())
    if kind == "truncate":
        cut = rng.randrange(1, len(data))
        path.write_bytes(bytes(data[:cut]))
        return Case(path, f"{base}: truncated to {cut} of {len(data)} bytes", inputs, base)
    flips = rng.randrange(1, 9)
    for _ in range(flips):
        where = rng.randrange(len(data))
        data[where] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return Case(path, f"{base}: {flips} bit(s) flipped", inputs, base)


def _input_files(model: onnx.ModelProto, folder: Path, seed: int) -> tuple[Path, Path] | None:
    """Two seeded arrays shaped like the base model's first input (batch 1 where dynamic)."""
    value = model.graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
    if not dims or value.type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    rng = np.random.default_rng(seed)
    first, second = folder / "a.npy", folder / "b.npy"
    np.save(first, rng.random(dims, dtype=np.float32))
    np.save(second, rng.random(dims, dtype=np.float32))
    return first, second


def commands(case: Case, out: Path) -> list[list[str]]:
    """The commands each case runs: audit, collide, compare against the model it was made
    from, check (no cache: it would write outside the folder), and validate."""
    model = str(case.model)
    limit = ["--max-memory", MAX_MEMORY]
    runs = [["audit", model, "-f", "json", "-o", str(out / "audit.json"), *limit],
            ["collide", model, "-o", str(out / "collide"), "--device", "cpu", *limit],
            ["compare", str(ROOT / case.base), model, "-f", "json", "-o",
             str(out / "compare.json"), *limit],
            ["check", model, "--no-cache", "--jobs", "1", "--sarif", str(out / "c.sarif"),
             "--junit", str(out / "c.xml"), *limit]]
    if case.inputs is not None:
        runs.append(["validate", model, str(case.inputs[0]), str(case.inputs[1]),
                     "--device", "cpu", *limit])
    return runs


# ------------------------------------------------------------------ running


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


NATIVE = "[native stderr] "  # what reached fd 2 itself: a native library, a forked child


def _run_in_worker(args: list[str], cwd: str, native_path: str) -> tuple[int, str]:
    """Run the command line in this (worker) process: exit code and stderr, with what a
    native library wrote to file descriptor 2 itself (ONNX Runtime's log, OpenBLAS) as lines
    marked NATIVE: a user would see those beside the error line. File descriptor 2 goes to
    ``native_path`` meanwhile, which the parent reads if the command kills this process."""
    import io

    from onnxcollide.cli.main import main

    err = io.StringIO()
    os.chdir(cwd)
    code = 0
    with open(native_path, "w+b") as native, _fd2_into(native), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main.main(args, prog_name="onnxcollide", standalone_mode=True)
        except SystemExit as exc:
            code = int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # the property: this must never happen
            err.write("Traceback (escaped the CLI):\n" + traceback.format_exc())
            code = 99
    return code, err.getvalue() + _native_lines(native_path)


def _native_lines(path: str) -> str:
    """What was written to ``path`` (file descriptor 2 of a command), as NATIVE lines."""
    with open(path, "rb") as handle:
        written = handle.read().decode("utf-8", "replace")
    return "".join(f"{NATIVE}{line}\n" for line in written.splitlines() if line.strip())


@contextlib.contextmanager
def _fd2_into(target: BinaryIO) -> Iterator[None]:
    """File descriptor 2 writes into ``target`` (a binary file) for the block."""
    saved = os.dup(2)
    os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _child_streams_to_fd2() -> None:
    """In a process forked while a command runs (``check --jobs``, the audit's workers):
    Python's stderr and stdout write to file descriptor 2 again. The command's own streams
    are in-memory buffers whose copies the child would fill and lose; on fd 2 (the command's
    native file then) a child's traceback or stray print shows as NATIVE lines."""
    sys.stderr = sys.stdout = sys.__stderr__


def _worker(connection: multiprocessing.connection.Connection) -> None:
    """Run commands sent over ``connection`` until None (or the parent goes away)."""
    os.register_at_fork(after_in_child=_child_streams_to_fd2)
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        connection.send(_run_in_worker(*job))


class Worker:
    """One persistent process that runs commands; replaced when a command kills it or runs
    past the time bound."""

    def __init__(self) -> None:
        handle, self._native = tempfile.mkstemp(prefix="onnxcollide-fuzz-fd2-")
        os.close(handle)
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._parent, child = context.Pipe()
        self._process = context.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()

    def run(self, args: list[str], cwd: Path, bound: float = TIME_BOUND
            ) -> tuple[int | None, str, float]:
        """(exit code or -signal, or None past the bound; stderr; seconds)."""
        start = time.monotonic()
        self._parent.send((args, str(cwd), self._native))
        if self._parent.poll(bound):
            try:
                code, err = self._parent.recv()
                return code, err, time.monotonic() - start
            except (EOFError, OSError):  # the worker died while answering
                pass
        self._process.join(0.5)
        code = self._process.exitcode
        if code is None:
            self._process.kill()
            self._process.join()
        self._start()
        # What the command wrote to fd 2 before it died or was stopped (a crash's message).
        return (code if code is not None and code < 0 else None), \
            _native_lines(self._native), time.monotonic() - start

    def close(self) -> None:
        """Stop the process."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self._parent.send(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
        with contextlib.suppress(OSError):
            os.remove(self._native)


def run_case(worker: Worker, base: str, kind: str, seed: int) -> tuple[Case, list[Outcome]]:
    """Make one case in a fresh folder, run every command on it, and check for stray files
    (anything new or changed outside the command's ``-o`` folder)."""
    folder = Path(tempfile.mkdtemp(prefix="onnxcollide-fuzz-"))
    try:
        case = make_case(base, kind, seed, folder)
        (folder / "out").mkdir()
        outcomes = []
        for args in commands(case, folder / "out"):
            before = _listing(folder)
            code, err, seconds = worker.run(args, folder)
            after = _listing(folder)
            stray = sorted(name for name, stamp in after.items()
                           if not name.startswith("out") and before.get(name) != stamp)
            outcomes.append(Outcome(args, code, err, seconds, stray))
        return case, outcomes
    finally:
        shutil.rmtree(folder, ignore_errors=True)
