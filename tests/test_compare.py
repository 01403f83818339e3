"""compare: layer alignment against the fixtures' value-based manifest, weight relations,
data-flow positions, ambiguity, pins, and the changes compare must name."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import DATA, build_model, init, value
from onnx import helper, numpy_helper

from onnxcollide.compare.align import (
    AMBIGUOUS_GAP,
    CONFIDENT_GAP,
    FORBIDDEN,
    LayerFacts,
    _confidences,
    _solve,
    align_layers,
)
from onnxcollide.compare.model import compare_models
from onnxcollide.compare.relate import (
    DIFFERENT,
    EQUAL,
    FP16,
    QUANTIZATION,
    WeightFacts,
    grid_steps,
    relate_weights,
)
from onnxcollide.compare.results import CompareSettings
from onnxcollide.errors import UsageError
from onnxcollide.graph.flow import linear_flow
from onnxcollide.graph.load import load_model

PAIRS = Path(__file__).resolve().parent.parent / "models" / "pairs"
MANIFEST = json.loads((PAIRS / "manifest.json").read_text())
NETWORKS = MANIFEST["networks"]
CASES = [(net, f) for net, spec in NETWORKS.items() for f in sorted(spec["files"])
         if f != spec["reference"]]
FLOAT = WeightFacts("float", "")


def _modules(pairs: list, network: str, reference: str, other: str) -> list[tuple[str, str]]:
    files = NETWORKS[network]["files"]
    return [(files[reference][p.reference.layer.nodes[0]], files[other][p.other.layer.nodes[0]])
            for p in pairs]


# ------------------------------------------------------------------ the fixtures


@pytest.mark.parametrize(("network", "other"), CASES)
def test_every_fixture_pair_aligns_as_the_manifest_says(network, other):
    """Each export aligns with the reference layer by layer as the weights' values say
    (manifest.json, made from torch's modules), nothing unmatched, and nothing differs."""
    reference = NETWORKS[network]["reference"]
    result = compare_models([str(PAIRS / reference), str(PAIRS / other)])
    (compared,) = result.others
    modules = _modules(list(compared.pairs), network, reference, other)
    assert all(a == b for a, b in modules), modules
    assert len(modules) == len(NETWORKS[network]["files"][reference])
    assert compared.unmatched_reference == () and compared.unmatched_other == ()
    assert result.same, result.differences
    assert all(p.relation.same for p in compared.pairs)


EXPECTED_KIND = {"dynamo": EQUAL, "ortbasic": EQUAL, "nhwc": EQUAL, "torchscript": EQUAL,
                 "keras": EQUAL, "fp16": FP16, "qdq": QUANTIZATION, "qop": QUANTIZATION,
                 "dynamic": QUANTIZATION}


@pytest.mark.parametrize(("network", "other"), CASES)
def test_weight_relations_name_what_each_copy_did(network, other):
    """fp16 copies relate by fp16 rounding, quantized copies by quantization within half a
    step, float copies are equal; convs whose BatchNorm was folded need a per-output scale
    (the reference keeps its BatchNormalization nodes)."""
    variant = other.removesuffix(".onnx").split("_", 1)[1]
    reference = NETWORKS[network]["reference"]
    (compared,) = compare_models([str(PAIRS / reference), str(PAIRS / other)]).others
    folded = variant not in ("fp16",)  # every other copy folds BatchNorm
    for pair in compared.pairs:
        assert pair.relation.kind == EXPECTED_KIND[variant], (pair.other.layer.nodes,
                                                              pair.relation)
        bn = network == "cnn" and pair.reference.layer.op == "Conv"
        assert pair.relation.scaled == (bn and folded) or variant == "dynamic"
        if pair.relation.kind == QUANTIZATION:
            assert pair.relation.max_steps is not None and pair.relation.max_steps <= 0.51


def test_the_lenet_float_and_qdq_pair_aligns_in_order():
    """The shared LeNet: torch export against its QDQ copy, the five layers in order, all
    within half a quantization step, nothing differs."""
    result = compare_models([str(DATA / "lenet5_mnist_torch.onnx"),
                             str(DATA / "lenet5_mnist_qdq.onnx")])
    (compared,) = result.others
    assert [p.reference.index for p in compared.pairs] == [1, 2, 3, 4, 5]
    assert [p.other.index for p in compared.pairs] == [1, 2, 3, 4, 5]
    assert {p.relation.kind for p in compared.pairs} == {QUANTIZATION}
    assert result.same


def test_ort_optimizer_reordering_the_shortcut_does_not_confuse_alignment():
    """ONNX Runtime lists the downsampling shortcut conv before the main branch; the data
    flow (not the node order) puts it at the main branch's first conv's depth."""
    ref, other = PAIRS / "cnn_torchscript.onnx", PAIRS / "cnn_ortbasic.onnx"
    (compared,) = compare_models([str(ref), str(other)]).others
    order = [p.other.index for p in compared.pairs]
    assert order != sorted(order)  # the optimizer did move a layer
    modules = _modules(list(compared.pairs), "cnn", ref.name, other.name)
    assert all(a == b for a, b in modules)


def test_vit_q_k_v_are_told_apart_by_their_weights():
    """The ViT's q, k and v projections have the same shape and depth: the weights decide,
    with full confidence, and no pair is ambiguous."""
    ref, other = PAIRS / "vit_torchscript.onnx", PAIRS / "vit_qdq.onnx"
    (compared,) = compare_models([str(ref), str(other)]).others
    files = NETWORKS["vit"]["files"]
    qkv = [p for p in compared.pairs if files[ref.name][p.reference.layer.nodes[0]] in "qkv"]
    assert len(qkv) == 3
    assert all(p.match.basis == "weights" and p.match.confidence == 1.0 for p in qkv)
    assert not any(p.match.ambiguous_with for p in compared.pairs)


def test_fp16_rank_difference_is_explained_by_the_tolerance():
    """In the fp16 ViT two 24 x 24 weights drop a singular value below float16's tolerance:
    the report shows both ranks, notes that at the reference's tolerance they agree, and
    does not count it as a difference."""
    result = compare_models([str(PAIRS / "vit_torchscript.onnx"),
                             str(PAIRS / "vit_fp16.onnx")])
    explained = [p for p in result.others[0].pairs if p.tolerance_only]
    assert explained, "the fixture no longer shows the case"
    assert all(p.common_rank == p.reference.rank != p.other.rank for p in explained)
    assert result.same
    assert any("differ by the tolerance" in n for n in result.notes)


def test_the_same_file_twice_is_audited_once(monkeypatch):
    """compare a a: one audit, and the copy relates as equal."""
    import onnxcollide.compare.model as model

    calls = []
    real = model.audit_model
    monkeypatch.setattr(model, "audit_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = str(PAIRS / "mlp_torchscript.onnx")
    result = compare_models([path, path, path])
    assert len(calls) == 1
    assert result.same


# ------------------------------------------------------------------ changes compare names


def _changed_copy(source: Path, target: Path, initializer: str, change) -> Path:
    proto = onnx.load(str(source))
    for tensor in proto.graph.initializer:
        if tensor.name == initializer:
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor).copy()),
                                                    tensor.name))
    onnx.save(proto, str(target))
    return target


def test_a_copy_with_one_layer_changed_names_that_layer(tmp_path):
    """One conv of the CNN perturbed (rank unchanged): exactly that layer's weights differ."""

    def nudge(w):
        w[0, 0, 0, 0] += 0.05
        return w

    other = _changed_copy(PAIRS / "cnn_torchscript.onnx", tmp_path / "changed.onnx",
                          "l1.c2.weight", nudge)
    result = compare_models([str(PAIRS / "cnn_torchscript.onnx"), str(other)])
    assert not result.same
    assert [(d.kind, d.reference_node) for d in result.differences] == [
        ("weights", "/l1/c2/Conv")]


def test_a_copy_with_a_rank_drop_names_the_layer_and_the_ranks(tmp_path):
    """An output channel zeroed: rank and weights differ at that layer."""

    def zero(w):
        w[3] = 0.0
        return w

    other = _changed_copy(PAIRS / "cnn_torchscript.onnx", tmp_path / "rank.onnx",
                          "l2.c1.weight", zero)
    result = compare_models([str(PAIRS / "cnn_torchscript.onnx"), str(other)])
    kinds = {(d.kind, d.reference_node) for d in result.differences}
    assert kinds == {("rank", "/l2/c1/Conv"), ("weights", "/l2/c1/Conv")}
    assert "rank 15" in next(d.text for d in result.differences if d.kind == "rank")


def test_structure_only_ignores_weights_that_keep_the_rank(tmp_path):
    """--structure-only: a nudged weight of the same rank is reported, not a difference."""

    def nudge(w):
        w[0, 0] += 0.1
        return w

    other = _changed_copy(PAIRS / "mlp_torchscript.onnx", tmp_path / "n.onnx", "fc2.weight",
                          nudge)
    paths = [str(PAIRS / "mlp_torchscript.onnx"), str(other)]
    assert not compare_models(paths).same
    relaxed = compare_models(paths, CompareSettings(structure_only=True))
    assert relaxed.same
    assert any(not p.relation.same for p in relaxed.others[0].pairs)


def _mlp(path: Path, sizes: list[int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for k, (q, p) in enumerate(itertools.pairwise(sizes)):
        inits.append(init(f"w{k}", rng.standard_normal((q, p)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", [current, f"w{k}"], [f"h{k}"], name=f"mm{k}"))
        current = f"h{k}"
    onnx.save(build_model(nodes, [value("x", [1, sizes[0]])], [value(current, [1, sizes[-1]])],
                          inits), str(path))
    return path


def test_two_different_networks_of_one_shape_differ_in_every_layer(tmp_path):
    """Same architecture, other weights: every layer aligned by position and named as
    different; exit 1 (not same)."""
    a = _mlp(tmp_path / "a.onnx", [64, 32, 16, 10], 1)
    b = _mlp(tmp_path / "b.onnx", [64, 32, 16, 10], 2)
    result = compare_models([str(a), str(b)])
    assert [(d.kind, d.reference_node, d.other_node) for d in result.differences] == [
        ("weights", f"mm{k}", f"mm{k}") for k in range(3)]


def test_two_different_architectures_list_the_layers_without_partner(tmp_path):
    """A network with a layer of another width: the layers in common align, the others are
    listed as unmatched on both sides."""
    a = _mlp(tmp_path / "a.onnx", [64, 32, 16, 10], 1)
    b = _mlp(tmp_path / "b.onnx", [64, 32, 12, 10], 1)
    result = compare_models([str(a), str(b)])
    unmatched = {(d.reference_node, d.other_node) for d in result.differences
                 if d.kind == "unmatched"}
    assert unmatched == {("mm1", None), ("mm2", None), (None, "mm1"), (None, "mm2")}


def test_models_with_no_layer_in_common_are_a_usage_error():
    """The MLP against the ViT: no linear layer of the same shape; one clear error."""
    with pytest.raises(UsageError, match="no linear layer in common"):
        compare_models([str(PAIRS / "mlp_torchscript.onnx"), str(PAIRS / "vit_torchscript.onnx")])


def test_identical_parallel_layers_are_reported_as_ambiguous(tmp_path):
    """Two branches with the same weight at the same depth cannot be told apart: the report
    names them instead of guessing silently."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"], name="left"),
             helper.make_node("MatMul", ["x", "wb"], ["b"], name="right"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    path = tmp_path / "twins.onnx"
    onnx.save(build_model(nodes, [value("x", [1, 8])], [value("y", [1, 8])],
                          [init("wa", w), init("wb", w.copy())]), str(path))
    result = compare_models([str(path), str(path)])
    assert all(p.match.ambiguous_with for p in result.others[0].pairs)
    assert any("could not be told apart" in n for n in result.notes)


def test_match_pins_a_pair_and_rejects_unknown_nodes(tmp_path):
    """--match fixes a pair (here a wrong one, so its weights differ); a node the model lacks
    is a usage error naming it."""
    ref, other = str(PAIRS / "vit_torchscript.onnx"), str(PAIRS / "vit_dynamo.onnx")
    files = NETWORKS["vit"]["files"]
    node_k = next(n for n, m in files["vit_dynamo.onnx"].items() if m == "k")
    node_q = next(n for n, m in files["vit_torchscript.onnx"].items() if m == "q")
    result = compare_models([ref, other], CompareSettings(pins=(f"{node_q}={node_k}",)))
    pinned = next(p for p in result.others[0].pairs if p.match.basis == "pinned")
    assert pinned.reference.layer.nodes[0] == node_q and pinned.other.layer.nodes[0] == node_k
    assert not pinned.relation.same and not result.same
    with pytest.raises(UsageError, match="has no linear node 'nope'"):
        compare_models([ref, other], CompareSettings(pins=("nope=x",)))
    with pytest.raises(UsageError, match="shapes differ"):
        head = next(n for n, m in files["vit_dynamo.onnx"].items() if m == "head")
        compare_models([ref, other], CompareSettings(pins=(f"{node_q}={head}",)))


def _brute_confidence(cost: np.ndarray, i: int, j: int, pairs: list[tuple[int, int]]
                      ) -> float:
    """A pair's confidence by enumeration: the cheapest other partner for i or j, or swap of
    partners with another pair, over CONFIDENT_GAP."""
    here, gaps = cost[i, j], []
    gaps += [cost[i, k] - here for k in range(cost.shape[1]) if k != j and cost[i, k] < FORBIDDEN]
    gaps += [cost[k, j] - here for k in range(cost.shape[0]) if k != i and cost[k, j] < FORBIDDEN]
    gaps += [cost[i, j2] + cost[i2, j] - here - cost[i2, j2] for i2, j2 in pairs
             if (i2, j2) != (i, j) and cost[i, j2] < FORBIDDEN and cost[i2, j] < FORBIDDEN]
    gap = min(gaps, default=np.inf)
    return 1.0 if gap >= CONFIDENT_GAP else max(0.0, gap / CONFIDENT_GAP)


@pytest.mark.parametrize("seed", range(20))
def test_confidences_match_enumerating_every_rival(seed):
    """The vectorised confidences equal a loop over every other partner and every swap, on
    random costs with forbidden pairs."""
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 7, size=2)
    cost = np.where(rng.random((n, m)) < 0.3, FORBIDDEN, rng.random((n, m)))
    pairs = sorted(_solve(cost))
    if not pairs:
        return
    confidence, rivals_b, rivals_a = _confidences(cost, np.array(pairs))
    for k, (i, j) in enumerate(pairs):
        assert confidence[k] == pytest.approx(_brute_confidence(cost, i, j, pairs))
        assert set(np.nonzero(rivals_b[k])[0]) == {
            b for b in range(m) if b != j and cost[i, b] - cost[i, j] < AMBIGUOUS_GAP}
        assert set(np.nonzero(rivals_a[k])[0]) == {
            a for a in range(n) if a != i and cost[a, j] - cost[i, j] < AMBIGUOUS_GAP}


def _chain_facts(labels: list[str]) -> list[LayerFacts]:
    """Facts of a chain of equal-shaped dense layers, each feeding the next."""
    return [LayerFacts(None, label, "dense", (4, 4, 1), depth, frozenset(labels[:depth]),  # type: ignore[arg-type]
                       depth) for depth, label in enumerate(labels)]


def test_a_pin_against_the_data_flow_leaves_the_crossing_pair_unmatched():
    """Pinning a1 to b2 in two chains a1 -> a2 and b1 -> b2 leaves only (a2, b1), which
    contradicts the flow (a1 feeds a2, b1 feeds b2): it is dropped, not reported as a
    match."""
    ref, other = _chain_facts(["a1", "a2"]), _chain_facts(["b1", "b2"])
    alignment = align_layers(ref, other, pins=[(0, 1)])
    assert [(m.reference, m.other, m.basis) for m in alignment.matches] == [(0, 1, "pinned")]
    assert alignment.unmatched_reference == (1,) and alignment.unmatched_other == (0,)
    assert alignment.crossings == ()
    free = align_layers(ref, other)
    assert [(m.reference, m.other) for m in free.matches] == [(0, 0), (1, 1)]


# ------------------------------------------------------------------ data flow


def test_linear_flow_depth_follows_branches_not_node_order(tmp_path):
    """A shortcut branch listed first still sits at the depth of the branch it parallels."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "ws"], ["s"], name="shortcut"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], name="second"),
             helper.make_node("Add", ["m", "s"], ["y"], name="add")]
    path = tmp_path / "flow.onnx"
    onnx.save(build_model(nodes, [value("x", [1, 4])], [value("y", [1, 4])],
                          [init(n, rng.standard_normal((4, 4)).astype(np.float32))
                           for n in ("ws", "w1", "w2")]), str(path))
    flow = linear_flow(load_model(str(path)), ["shortcut", "first", "second"])
    assert {k: v.depth for k, v in flow.items()} == {"shortcut": 0, "first": 0, "second": 1}
    assert flow["second"].upstream == frozenset({"first"})


# ------------------------------------------------------------------ relations


def _blocks(w: np.ndarray) -> np.ndarray:
    return w[None].astype(np.float64)


def test_equal_and_transposed_weights(rng):
    """The same matrix is equal; its transpose read with q and p swapped is equal up to a
    transposition; a changed entry is different with that entry's difference."""
    w = rng.standard_normal((6, 4)).astype(np.float32)
    assert relate_weights(_blocks(w), _blocks(w), FLOAT, FLOAT).kind == EQUAL
    flipped = relate_weights(_blocks(w), _blocks(w.T), FLOAT, FLOAT)
    assert (flipped.kind, flipped.transform) == (EQUAL, "transposed")
    changed = w.copy()
    changed[2, 1] += 0.25
    different = relate_weights(_blocks(w), _blocks(changed), FLOAT, FLOAT)
    assert different.kind == DIFFERENT
    assert different.max_abs == pytest.approx(0.25, rel=1e-6)


def test_per_output_scaling_is_found_with_its_range(rng):
    """W diag(c) (BatchNorm folded, negative scales included) relates by scaling; the
    reported range is c's."""
    w = rng.standard_normal((12, 5)).astype(np.float32)
    c = np.array([0.5, 2.0, -1.5, 1.0, 3.0], dtype=np.float32)
    found = relate_weights(_blocks(w), _blocks(w * c), FLOAT, FLOAT)
    assert found.kind == EQUAL and found.scaled
    assert (found.scale_min, found.scale_max) == (pytest.approx(-1.5), pytest.approx(3.0))


def test_fp16_rounding_and_its_limit(rng):
    """A float16 copy relates by fp16 rounding; one rounded the wrong way by a step does not."""
    w = rng.standard_normal((10, 7)).astype(np.float32)
    half = w.astype(np.float16)
    facts16 = WeightFacts("float16", "")
    assert relate_weights(_blocks(w), _blocks(half), FLOAT, facts16).kind == FP16
    wrong = half.copy()
    wrong[0, 0] = np.nextafter(wrong[0, 0], np.float16(np.inf) * np.sign(wrong[0, 0]))
    wrong[0, 0] = np.nextafter(wrong[0, 0], np.float16(np.inf) * np.sign(wrong[0, 0]))
    assert relate_weights(_blocks(w), _blocks(wrong), FLOAT, facts16).kind == DIFFERENT


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantization_within_half_a_step(rng, per_channel):
    """Round-to-nearest int8 (per tensor or per output channel) is within half a step; the
    steps are read off the dequantized values; one value off by a step is not."""
    w = rng.standard_normal((20, 6))
    scale = (np.abs(w).max(axis=0) if per_channel else np.abs(w).max()) / 127
    q = (np.round(w / scale) * scale).astype(np.float32)
    quant = WeightFacts("quantized", "")
    found = relate_weights(_blocks(w), _blocks(q), FLOAT, quant)
    assert found.kind == QUANTIZATION and not found.scaled
    assert found.max_steps is not None and found.max_steps <= 0.5 + 1e-3
    steps = grid_steps(_blocks(q))
    assert steps is not None
    np.testing.assert_allclose(steps[0], np.broadcast_to(scale, (6,)), rtol=1e-5)
    off = q.copy()
    off[0, 0] += np.broadcast_to(scale, (6,))[0]
    assert relate_weights(_blocks(w), _blocks(off), FLOAT, quant).kind == DIFFERENT


def test_scaling_and_quantization_together(rng):
    """BatchNorm folded, then quantized (the QDQ of a BN model): the interval test finds
    one scale per output that puts every value within half a step."""
    w = rng.standard_normal((30, 4))
    c = np.array([0.7, 1.3, 2.1, 0.4])
    folded = w * c
    scale = np.abs(folded).max() / 127
    q = np.round(folded / scale) * scale
    found = relate_weights(_blocks(w), _blocks(q), FLOAT, WeightFacts("quantized", ""))
    assert found.kind == QUANTIZATION and found.scaled
    assert found.scale_min == pytest.approx(0.4, rel=2e-2)


def test_rows_in_another_order_are_equal_up_to_a_permutation(rng):
    """An NHWC flatten reorders W's rows: equal up to 'rows permuted'."""
    w = rng.standard_normal((9, 3)).astype(np.float32)
    found = relate_weights(_blocks(w), _blocks(w[rng.permutation(9)]), FLOAT, FLOAT)
    assert (found.kind, found.transform) == (EQUAL, "rows permuted")


def test_a_quantized_reference_reports_the_scale_the_other_way(rng):
    """With the quantized model as the reference, the scale still reads other = c * ref."""
    w = rng.standard_normal((16, 3))
    c = np.array([2.0, 0.5, 1.5])
    scale = np.abs(w).max() / 127
    q = np.round(w / scale) * scale
    found = relate_weights(_blocks(q), _blocks(w * c), WeightFacts("quantized", ""), FLOAT)
    assert found.kind == QUANTIZATION and found.scaled
    assert (found.scale_min, found.scale_max) == (pytest.approx(0.5, rel=2e-2),
                                                  pytest.approx(2.0, rel=2e-2))
