"""spectral: decide_rank against an independent float64 SVD, the Gram path, gram_matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse.linalg

from onnxcollide.linalg import spectral
from onnxcollide.linalg.spectral import (
    EPS_OF,
    RankDecision,
    ToleranceRule,
    decide_rank,
    gram_matrix,
)

EPS32 = 2.0**-23
EPS16 = 2.0**-10
EPS64 = 2.0**-52


def reference(blocks: np.ndarray, eps: float, rtol: float | None = None,
              atol: float | None = None) -> dict[str, float | int | None]:
    """The rank decision recomputed from a float64 SVD of every block (whole-matrix tol)."""
    a = np.asarray(blocks, dtype=np.float64)
    g, qb, pb = a.shape
    q, p = g * qb, g * pb
    s = np.linalg.svd(a, compute_uv=False).ravel()
    smax = float(s.max())
    tol = smax * (rtol if rtol is not None else max(q, p) * eps)
    if atol is not None:
        tol = max(tol, atol)
    kept, dropped = s[s > tol], s[s <= tol]
    return {
        "rank": int(kept.size), "sigma_max": smax, "tol": tol,
        "smallest_kept": float(kept.min()) if kept.size else None,
        "largest_dropped": float(dropped.max()) if dropped.size else None,
    }


def assert_matches(decision: RankDecision, ref: dict, rel: float) -> None:
    """Rank exact; sigma_max, tol and the kept / dropped values to ``rel``."""
    assert decision.rank == ref["rank"]
    assert decision.sigma_max == pytest.approx(ref["sigma_max"], rel=rel)
    assert decision.tol == pytest.approx(ref["tol"], rel=rel)
    if ref["smallest_kept"] is None:
        assert decision.smallest_kept is None
    else:
        assert decision.smallest_kept == pytest.approx(ref["smallest_kept"], rel=rel)
    if ref["largest_dropped"] is None:
        assert decision.largest_dropped is None
    else:
        assert decision.largest_dropped is not None
        assert decision.largest_dropped <= decision.tol


def low_rank(rng: np.random.Generator, q: int, p: int, r: int, dtype=np.float32) -> np.ndarray:
    """U @ V with inner dimension r: rank r, well enough conditioned at these sizes."""
    return (rng.standard_normal((q, r)) @ rng.standard_normal((r, p))).astype(dtype)


# ------------------------------------------------------------------ the SVD path


@pytest.mark.parametrize(
    "shape",
    [(1, 5, 3), (1, 3, 5), (1, 7, 7), (1, 40, 13), (1, 13, 40), (1, 256, 100), (1, 100, 256),
     (3, 10, 4), (4, 4, 10), (2, 9, 9), (1, 1, 1), (1, 1, 30), (1, 30, 1)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_random_full_rank_matches_float64_svd(rng, shape):
    """Random float32 blocks of every aspect ratio: full rank, values equal to a float64 SVD."""
    blocks = rng.standard_normal(shape).astype(np.float32)
    decision = decide_rank(blocks, EPS32)
    ref = reference(blocks, EPS32)
    assert_matches(decision, ref, rel=1e-6)
    assert decision.rank == shape[0] * min(shape[1:])
    assert decision.method == "svd"
    assert decision.eps == EPS32
    assert decision.largest_dropped is None


@pytest.mark.parametrize("q,p,r", [(50, 30, 7), (30, 50, 7), (64, 64, 63), (200, 180, 1),
                                   (120, 120, 60), (256, 256, 200)])
def test_known_rank_products(rng, q, p, r):
    """W = U @ V with inner dimension r has rank r; the dropped values sit at the float32 noise."""
    w = low_rank(rng, q, p, r)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.rank == r
    assert_matches(decision, ref, rel=1e-6)
    if r < min(q, p):
        assert decision.largest_dropped == pytest.approx(ref["largest_dropped"], rel=1e-6)
        assert decision.largest_dropped < decision.tol
    ratios = [ref["smallest_kept"] / ref["tol"]]
    if ref["largest_dropped"]:
        ratios.append(ref["tol"] / ref["largest_dropped"])
    assert decision.margin == pytest.approx(min(ratios), rel=1e-6)
    assert decision.margin > 10


def test_block_stack_ranks_add_and_share_one_tolerance(rng):
    """Blocks of ranks 1, 3, 4 give rank 8; tol uses the whole block-diagonal (q, p, sigma_max)."""
    g, qb, pb = 3, 12, 5
    blocks = np.stack([low_rank(rng, qb, pb, r) for r in (1, 3, 5)])
    blocks[0] *= 10.0  # the largest singular value lives in block 0
    decision = decide_rank(blocks, EPS32)
    ref = reference(blocks, EPS32)
    assert decision.rank == 1 + 3 + 5
    assert_matches(decision, ref, rel=1e-6)
    sigma_max = max(np.linalg.svd(b.astype(np.float64), compute_uv=False)[0] for b in blocks)
    assert decision.sigma_max == pytest.approx(sigma_max, rel=1e-12)
    assert decision.tol == pytest.approx(sigma_max * max(g * qb, g * pb) * EPS32, rel=1e-12)


def test_block_rank_decided_against_global_sigma_max():
    """A block far smaller than the largest block drops out entirely (tol is global)."""
    big = np.eye(4, dtype=np.float64)
    tiny = np.eye(4, dtype=np.float64) * 1e-9
    decision = decide_rank(np.stack([big, tiny]), EPS32)
    assert decision.rank == 4
    assert decision.largest_dropped == pytest.approx(1e-9)


def test_zero_matrix_has_rank_zero():
    """All zeros: rank 0, tol 0, no kept value and no margin."""
    decision = decide_rank(np.zeros((1, 6, 4), np.float32), EPS32)
    assert decision.rank == 0
    assert decision.sigma_max == 0.0
    assert decision.tol == 0.0
    assert decision.smallest_kept is None
    assert decision.largest_dropped == 0.0
    assert decision.margin is None


def test_empty_block_has_rank_zero():
    """A (1, 0, 5) stack is an empty matrix: rank 0, method 'empty'."""
    decision = decide_rank(np.zeros((1, 0, 5), np.float32), EPS32)
    assert decision.rank == 0
    assert decision.method == "empty"


def test_rank_is_scale_invariant(rng):
    """The rule is relative: W * 1e-20 and W * 1e20 (float64) keep the rank of W."""
    w = low_rank(rng, 30, 20, 6, np.float64)
    for scale in (1e-20, 1.0, 1e20):
        assert decide_rank((w * scale)[None], EPS32).rank == 6


def test_float16_eps_drops_what_float32_keeps():
    """Singular value 1e-4 relative: kept with eps float32, dropped with eps float16."""
    w = np.diag([1.0, 0.5, 1e-4]).astype(np.float64)
    assert decide_rank(w[None], EPS_OF["float"]).rank == 3
    assert decide_rank(w[None], EPS_OF["float16"]).rank == 2
    assert EPS_OF["float16"] == EPS16
    assert EPS_OF["double"] == EPS64
    assert EPS_OF["float"] == EPS32


# ------------------------------------------------------------------ tolerance overrides


def test_rtol_override():
    """rtol replaces max(q, p) * eps: tol = rtol * sigma_max."""
    w = np.diag([1.0, 0.5, 0.05, 0.005])[None]
    decision = decide_rank(w, EPS32, ToleranceRule(rtol=1e-2))
    assert decision.rank == 3
    assert decision.tol == pytest.approx(1e-2)
    assert decision.smallest_kept == pytest.approx(0.05)
    assert decision.largest_dropped == pytest.approx(0.005)
    assert decision.margin == pytest.approx(2.0)
    assert_matches(decision, reference(w, EPS32, rtol=1e-2), rel=1e-12)


def test_atol_override_is_a_floor():
    """atol raises tol above the relative rule; an atol below it changes nothing."""
    w = np.diag([1.0, 0.5, 0.05, 0.005])[None]
    assert decide_rank(w, EPS32, ToleranceRule(atol=0.1)).rank == 2
    assert decide_rank(w, EPS32, ToleranceRule(atol=0.1)).tol == pytest.approx(0.1)
    default = decide_rank(w, EPS32)
    tiny = decide_rank(w, EPS32, ToleranceRule(atol=1e-30))
    assert tiny.tol == default.tol
    assert tiny.rank == default.rank == 4
    both = decide_rank(w, EPS32, ToleranceRule(rtol=1e-3, atol=0.01))
    assert both.tol == pytest.approx(0.01)
    assert both.rank == 3


def test_atol_on_zero_matrix():
    """A zero matrix with an atol: tol is the atol, rank 0."""
    decision = decide_rank(np.zeros((1, 3, 3)), EPS32, ToleranceRule(atol=1e-6))
    assert decision.rank == 0
    assert decision.tol == pytest.approx(1e-6)


def test_tolerance_rule_formula_and_words():
    """ToleranceRule.tolerance and describe() follow the documented formulas."""
    assert ToleranceRule().tolerance(2.0, 10, 30, EPS32) == pytest.approx(2.0 * 30 * EPS32)
    assert ToleranceRule(rtol=1e-3).tolerance(2.0, 10, 30, EPS32) == pytest.approx(2e-3)
    assert ToleranceRule(atol=5.0).tolerance(2.0, 10, 30, EPS32) == 5.0
    assert ToleranceRule().describe() == "sigma_max * max(q, p) * eps"
    assert ToleranceRule(rtol=0.001).describe() == "0.001 * sigma_max"
    assert ToleranceRule(rtol=0.001, atol=1e-06).describe() == "max(1e-06, 0.001 * sigma_max)"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_raises(rng, bad):
    """A weight with NaN / Inf raises FloatingPointError (SVD path)."""
    w = rng.standard_normal((1, 8, 5)).astype(np.float32)
    w[0, 3, 2] = bad
    with pytest.raises(FloatingPointError):
        decide_rank(w, EPS32)


@pytest.mark.parametrize("shape", [(600, 300), (300, 600)])
def test_nan_raises_on_gram_path(rng, shape):
    """A NaN in the last row / column of a large block raises FloatingPointError on the Gram
    path too (tall blocks stream rows, wide ones column blocks)."""
    w = rng.standard_normal((1, *shape)).astype(np.float32)
    w[0, shape[0] - 1, shape[1] - 1] = np.nan
    with pytest.raises(FloatingPointError):
        decide_rank(w, EPS32)


# ------------------------------------------------------------------ the Gram path


def test_gram_path_rank_deficient_tall(rng):
    """600 x 300 of rank 250 (min dim > 256): decided on the Gram path, rank 250."""
    w = low_rank(rng, 600, 300, 250)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.method.startswith("gram")
    assert decision.rank == 250
    assert_matches(decision, ref, rel=1e-3)
    # Gram eigenvalues resolve singular values down to ~ sqrt(n * eps64) * sigma_max only.
    resolution = math.sqrt(600 * EPS64) * ref["sigma_max"]
    assert abs(decision.largest_dropped - ref["largest_dropped"]) < 10 * resolution
    assert decision.margin is not None and decision.margin > 10


def test_gram_path_large_nullity_is_decided_by_the_schur_complement(rng, monkeypatch):
    """800 x 600 of rank 350: 250 singular values below tol, beyond what deflation certifies.
    The failed Cholesky's Schur complement counts them ('gram-ldl') without a full eigh, and
    agrees with the float64 SVD; the full eigh (Schur path off) decides the same."""
    w = low_rank(rng, 800, 600, 350)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.method == "gram-ldl"
    assert decision.rank == 350
    assert_matches(decision, ref, rel=1e-3)
    monkeypatch.setattr(spectral, "SCHUR_MAX_DIM", 0)
    full = decide_rank(w[None], EPS32)
    assert full.method == "gram-eigh" and full.rank == 350


@pytest.mark.parametrize("dead", ["first", "scattered"])
def test_dead_units_early_are_moved_to_the_end(rng, monkeypatch, dead):
    """Nearly dead units (columns 1e-9 of the others, far below tol but not exact zeros, which
    are set aside before) make G's Cholesky fail at the first one: at pivot 1, or, scattered
    from the start, leaving a Schur complement wider than SCHUR_MAX_DIM (50 here, for a
    400-wide layer). Permuting G so its diagonal decreases moves them to the end, and the
    Schur complement decides ('gram-ldl', not a full eigh), as the SVD does."""
    monkeypatch.setattr(spectral, "SCHUR_MAX_DIM", 50)
    w = rng.standard_normal((500, 400)).astype(np.float32)
    w[:, [0] if dead == "first" else rng.choice(400, 30, replace=False)] *= np.float32(1e-9)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.method == "gram-ldl"
    assert decision.rank == ref["rank"] == 400 - (1 if dead == "first" else 30)
    assert_matches(decision, ref, rel=1e-3)


@pytest.mark.parametrize(("shape", "low_rank_part"), [((700, 600), False), ((600, 700), False),
                                                    ((700, 600), True)])
def test_pruned_units_are_set_aside_as_exact_zeros(rng, shape, low_rank_part):
    """300 all-zero lines on the Gram side (pruned units: columns of a tall weight, rows of a
    wide one) are exact zero singular values: they are set aside before the Cholesky, the
    rest is decided as usual, and the largest dropped value is exactly 0. Before, more than
    LDL_DEFLATION values below tol sent the block to a full eigh (a 4096-wide layer with 300
    pruned units took 8.2 s instead of 1.9 s). With a rank-deficient live part its own
    dropped values are the largest."""
    w = rng.standard_normal(shape).astype(np.float32)
    if low_rank_part:
        w = low_rank(rng, *shape, 250)
    dead = rng.choice(600, 300, replace=False)
    if shape[0] > shape[1]:
        w[:, dead] = 0.0
    else:
        w[dead, :] = 0.0
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.rank == ref["rank"] == (250 if low_rank_part else 300)
    assert decision.method == ("gram-ldl" if low_rank_part else "gram-cholesky")
    shown = decision.resolved()
    kept, digits = shown["smallest_kept"]
    assert kept is not None and digits is not None and digits >= 3
    assert abs(kept - ref["smallest_kept"]) <= 1.5 * _unit_of_last_digit(kept, digits)
    if low_rank_part:
        assert decision.largest_dropped is not None and decision.largest_dropped > 0
        assert decision.largest_dropped <= decision.tol
    else:
        assert decision.largest_dropped == 0.0 and decision.dropped_error == 0.0
        assert shown["margin"][0] == pytest.approx(kept / decision.tol, rel=1e-3)


@pytest.mark.parametrize("live", [1, 2, 5])
def test_pruned_layer_with_a_few_live_lines_below_tol(rng, live):
    """A 300-wide block pruned down to a few tiny lines (tol set by a second block): the live
    part is decided from its eigenvalues. With one live line the deflated certificate asked
    Lanczos for 0 pairs and crashed."""
    block = np.zeros((600, 300), np.float32)
    block[:, :live] = 1e-6 * rng.standard_normal((600, live))
    blocks = np.stack([block, rng.standard_normal((600, 300)).astype(np.float32)])
    decision = decide_rank(blocks, EPS32)
    ref = reference(blocks, EPS32)
    assert decision.rank == ref["rank"] == 300


def test_ldl_deflates_the_dropped_side_for_the_kept_value(rng, monkeypatch):
    """600 wide, 100 distinct singular values below tol, the kept ones dense in [1, 2]: the
    dropped side's large shift-invert values would stall the kept value's Lanczos, so their
    eigenvectors are projected out first and the Schur path decides ('gram-ldl'; without the
    deflation it falls back to a full eigh)."""
    sigmas = rng.uniform(1.0, 2.0, 600)
    tol = 600 * EPS32 * sigmas.max()
    sigmas[:100] = rng.uniform(0.0, 0.9, 100) * tol
    w = _with_spectrum(rng, sigmas)[None]
    decision = decide_rank(w, EPS32)
    assert decision.method == "gram-ldl" and decision.rank == 500
    _assert_digits_right(decision, w)
    monkeypatch.setattr(spectral, "LDL_DEFLATION", 0)
    assert decide_rank(w, EPS32).method == "gram-eigh"


def test_ldl_dropped_values_far_below_a_float16_tol(rng):
    """float16's eps puts tol at ~0.4 sigma_max: 200 dropped values far below it all map to
    shift-invert values within 1e-2 of 1 / tol^2, a cluster Lanczos need not resolve. The
    largest dropped value comes from G's own Ritz values on their span, so its digits (or its
    upper bound) hold against the SVD."""
    sigmas = np.r_[rng.uniform(1.8, 2.0, 200), rng.uniform(0.0, 0.2, 200)]
    w = _with_spectrum(rng, sigmas)[None]
    decision = decide_rank(w, EPS16)
    assert decision.method == "gram-ldl" and decision.rank == 200
    ref = reference(w, EPS16)
    shown, digits = decision.resolved()["largest_dropped"]
    assert shown is not None and digits is not None
    if digits == 0:
        assert ref["largest_dropped"] <= shown
    else:
        assert abs(shown - ref["largest_dropped"]) <= 1.5 * _unit_of_last_digit(
            ref["largest_dropped"], digits)


def test_gram_path_rank_deficient_wide(rng):
    """300 x 600 of rank 250: the Gram matrix of the short side, same rank as the SVD."""
    w = low_rank(rng, 300, 600, 250)
    decision = decide_rank(w[None], EPS32)
    assert decision.method.startswith("gram")
    assert_matches(decision, reference(w[None], EPS32), rel=1e-3)


def test_gram_path_full_rank_cholesky(rng):
    """1200 x 400 full rank: the shifted Cholesky succeeds; smallest kept value to 1e-3."""
    w = rng.standard_normal((1200, 400)).astype(np.float32)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.method == "gram-cholesky"
    assert decision.rank == 400
    assert decision.largest_dropped is None
    assert_matches(decision, ref, rel=1e-3)
    assert decision.margin == pytest.approx(ref["smallest_kept"] / ref["tol"], rel=1e-3)


def test_gram_path_block_stack(rng):
    """Two 300 x 280 blocks of ranks 280 and 100 on the Gram path: rank 380, global tol."""
    blocks = np.stack([rng.standard_normal((300, 280)), low_rank(rng, 300, 280, 100)])
    blocks = blocks.astype(np.float32)
    decision = decide_rank(blocks, EPS32)
    ref = reference(blocks, EPS32)
    assert decision.method.startswith("gram")
    assert decision.rank == 380
    assert decision.tol == pytest.approx(ref["sigma_max"] * 600 * EPS32, rel=1e-3)
    assert_matches(decision, ref, rel=1e-3)


def test_gram_path_recomputing_gram_matrices_decides_the_same(rng, monkeypatch):
    """With no memory to hold Gram matrices between passes, the decision is unchanged."""
    blocks = np.stack([rng.standard_normal((300, 280)), low_rank(rng, 300, 280, 100)])
    blocks = blocks.astype(np.float32)
    held = decide_rank(blocks, EPS32)
    monkeypatch.setattr(spectral, "HELD_GRAM_BYTES", 0, raising=False)
    assert decide_rank(blocks, EPS32) == held


def _tol_just_below_smallest(w: np.ndarray, gap: float) -> ToleranceRule:
    """An --atol that puts tol a relative ``gap`` below the smallest singular value of the
    float32 weight itself (a float64 SVD of it), independent of sigma_max's estimate."""
    smallest = float(np.linalg.svd(w.astype(np.float64), compute_uv=False).min())
    return ToleranceRule(atol=smallest * (1.0 - gap))


def test_gram_close_call_is_redecided_by_svd(rng):
    """A float32 Gram-path block whose smallest singular value (1e-3) is a relative 1e-8
    above tol, inside the Gram matrix's error bar there (about 3e-7), is re-decided by SVD."""
    sigmas = np.linspace(2.0, 1.0, 300)
    sigmas[-1] = 1e-3
    w = _with_spectrum_shaped(rng, 600, 300, sigmas)
    rule = _tol_just_below_smallest(w, 1e-8)
    decision = decide_rank(w[None], EPS32, rule)
    ref = reference(w[None], EPS32, atol=rule.atol)
    assert decision.method == "svd"
    assert decision.rank == ref["rank"] == 300
    assert decision.smallest_kept == pytest.approx(ref["smallest_kept"], rel=1e-12)


def test_gram_margin_outside_its_error_bar_stays_on_the_gram_path(rng):
    """A smallest singular value 0.8% above tol is resolved by the Gram matrix (its error
    there is about 1e-5 of tol): no SVD, and the kept value and margin agree with a float64
    SVD within the decision's own error estimates. (Until issue 16 any margin under 1.01
    took a whole SVD: 13.7 s for a 4096 x 4096 layer with margin 1.004.)"""
    q, p = 600, 300
    sigmas = np.linspace(2.0, 1.0, p)
    sigmas[-1] = 2.0 * max(q, p) * EPS32 * 1.008
    w = _with_spectrum_shaped(rng, q, p, sigmas)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.method == "gram-cholesky"
    assert decision.rank == ref["rank"] == p
    assert decision.kept_error is not None
    assert abs(decision.smallest_kept - ref["smallest_kept"]) <= decision.kept_error
    assert decision.margin == pytest.approx(1.008, rel=1e-3)
    _assert_digits_right(decision, w[None])


def test_gram_scale_invariance(rng):
    """The Gram path keeps the rank of a tiny-valued (1e-30) float32 weight."""
    w = (low_rank(rng, 600, 300, 250, np.float64) * 1e-30).astype(np.float32)
    decision = decide_rank(w[None], EPS32)
    assert decision.method.startswith("gram")
    assert decision.rank == 250


@pytest.mark.parametrize("scale", [1e-160, 1e160])
def test_float64_weights_take_the_svd_at_any_scale(rng, scale):
    """float64 weights always take the SVD, also where an --rtol would make a Gram matrix
    precise enough: at 1e-160 or 1e160 its squares under- or overflow float64 (one crashed,
    one reported finite weights as NaN/Inf)."""
    w = low_rank(rng, 360, 300, 250, np.float64) * scale
    decision = decide_rank(w[None], EPS32, ToleranceRule(rtol=1e-3))
    assert decision.method == "svd"
    assert decision.rank == 250


# ------------------------------------------------------------------ memory-mapped input


def test_memmap_input_small_and_gram(tmp_path, rng):
    """An np.memmap of a file decides like the in-memory array (SVD and Gram paths)."""
    for q, p, r in ((60, 40, 12), (600, 300, 250)):
        w = low_rank(rng, q, p, r)
        path = tmp_path / f"w{q}.bin"
        w.tofile(path)
        mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(1, q, p))
        from_disk = decide_rank(mapped, EPS32)
        in_memory = decide_rank(w[None], EPS32)
        assert from_disk == in_memory
        assert from_disk.rank == r


# ------------------------------------------------------------------ gram_matrix


@pytest.mark.parametrize("shape", [(50, 20), (20, 50), (17, 17)])
def test_gram_matrix_upper_triangle(rng, shape):
    """Upper triangle of W^T W (tall) or W W^T (wide), float64 Fortran order."""
    w = rng.standard_normal(shape).astype(np.float32)
    w64 = w.astype(np.float64)
    expected = w64.T @ w64 if shape[0] >= shape[1] else w64 @ w64.T
    gram = gram_matrix(w)
    assert gram.dtype == np.float64
    assert gram.flags.f_contiguous
    assert gram.shape == (min(shape),) * 2
    np.testing.assert_allclose(np.triu(gram), np.triu(expected), rtol=1e-12, atol=1e-12)


def test_gram_matrix_streams_in_chunks(rng, monkeypatch, tmp_path):
    """With a tiny chunk size (7 rows) the streamed Gram matrix of a memmap is the same."""
    w = rng.standard_normal((53, 20)).astype(np.float32)
    path = tmp_path / "w.bin"
    w.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=w.shape)
    monkeypatch.setattr(spectral, "CHUNK_BYTES", 8 * 20 * 7)
    w64 = w.astype(np.float64)
    np.testing.assert_allclose(np.triu(gram_matrix(mapped)), np.triu(w64.T @ w64),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.triu(gram_matrix(mapped.T)), np.triu(w64.T @ w64),
                               rtol=1e-12, atol=1e-12)


def test_margin_definition():
    """margin = min(kept / tol, tol / dropped); a dropped exact zero does not bound it."""
    d = RankDecision(rank=2, sigma_max=1.0, tol=0.1, eps=EPS32, smallest_kept=0.5,
                     largest_dropped=0.02, method="svd")
    assert d.margin == pytest.approx(5.0)
    d0 = RankDecision(rank=2, sigma_max=1.0, tol=0.1, eps=EPS32, smallest_kept=0.5,
                      largest_dropped=0.0, method="svd")
    assert d0.margin == pytest.approx(5.0)


def test_gram_sized_zero_matrix_has_rank_zero():
    """A 600 x 300 zero matrix (Gram-path size): rank 0, like the small zero matrix."""
    decision = decide_rank(np.zeros((1, 600, 300), np.float32), EPS32)
    assert decision.rank == 0
    assert decision.sigma_max == 0.0


def test_gram_path_with_a_zero_block(rng):
    """A zero block next to a full one on the Gram path contributes rank 0."""
    blocks = np.stack([rng.standard_normal((300, 280)), np.zeros((300, 280))]).astype(np.float32)
    decision = decide_rank(blocks, EPS32)
    assert decision.rank == 280
    assert decision.largest_dropped is not None and decision.largest_dropped <= decision.tol


def test_gram_path_with_the_start_vector_in_the_kernel(rng):
    """Rows summing to zero put the all-ones Lanczos start vector in ker(G): rank 299 of 300."""
    w = rng.standard_normal((600, 300))
    w = (w - w.mean(axis=1, keepdims=True)).astype(np.float32)
    decision = decide_rank(w[None], EPS32)
    assert decision.method.startswith("gram")
    assert decision.rank == 299
    assert_matches(decision, reference(w[None], EPS32), rel=1e-3)


def test_float16_blocks_are_decided_in_float64(rng):
    """float16 input blocks are promoted to float64 for the SVD (values, not rounding, decide)."""
    w = rng.integers(-3, 4, size=(12, 2)) @ rng.integers(-3, 4, size=(2, 9))
    decision = decide_rank(w.astype(np.float16)[None], EPS16)
    assert decision.rank == np.linalg.matrix_rank(w.astype(np.float64)) == 2


def test_deflation_declines_when_nothing_is_below_tol(rng):
    """A Gram block whose eigenvalues all clear tol^2 is not 'deflated' (None, no crash):
    the caller then decides it by a full eigh."""
    from onnxcollide.linalg import spectral

    w = rng.standard_normal((400, 300))
    gram = spectral.gram_matrix(w)
    tol = 1e-3 * float(np.linalg.svd(w, compute_uv=False).min())
    assert spectral._deflated_rank(gram, tol, spectral._scratch_like(gram), 0.0) is None


def test_hadamard_with_dead_units():
    """A 1024 x 1024 Hadamard matrix (every singular value equal) with 7 zeroed rows: rank 1017.
    Equal eigenvalues defeat ARPACK and LAPACK's dsyevr; the engine must still decide."""
    from scipy.linalg import hadamard

    w = hadamard(1024).astype(np.float32)
    w[:7] = 0.0
    decision = decide_rank(w[None], EPS32)
    assert decision.rank == 1017
    assert decision.sigma_max == pytest.approx(32.0, rel=1e-12)


def test_sigma_max_falls_back_to_dense_when_lanczos_stalls(rng, monkeypatch):
    """With Lanczos allowed a single restart, sigma_max comes from all eigenvalues instead and
    is still exact."""
    from onnxcollide.linalg import spectral

    monkeypatch.setattr(spectral, "SIGMA_MAX_RESTARTS", 1)
    u = np.linalg.qr(rng.standard_normal((600, 400)))[0]
    v = np.linalg.qr(rng.standard_normal((400, 400)))[0]
    sigmas = np.concatenate([1.0 - 1e-7 * np.arange(200), np.linspace(0.5, 0.9, 200)])
    w = ((u * sigmas) @ v.T).astype(np.float32)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.rank == ref["rank"] == 400
    assert decision.sigma_max == pytest.approx(ref["sigma_max"], rel=1e-12)


# ------------------------------------------------------------------ printed digits


def test_significant_digits_and_bounds():
    """Digits follow the error; a value within its error of 0 becomes an upper bound."""
    assert spectral.significant_digits(0.123456789, 1e-6) == 5
    assert spectral.resolved(0.123456789, 1e-6) == (0.12346, 5)
    assert spectral.resolved(2.5, 0.0) == (2.5, 17)
    assert spectral.resolved(None, 1e-3) == (None, None)
    assert spectral._resolved_or_bound(3e-9, 5.16e-7) == (5.2e-7, 0)  # rounded up
    assert spectral._resolved_or_bound(0.0, 0.0) == (0.0, 17)  # exact zero stays exact
    assert spectral._round_to_two(137.5, math.floor) == 130.0


def _with_spectrum(rng: np.random.Generator, sigmas: np.ndarray) -> np.ndarray:
    """(n, n) float32 matrix with about these singular values (random orthogonal factors)."""
    n = sigmas.size
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return ((u * sigmas) @ v.T).astype(np.float32)


def _unit_of_last_digit(value: float, digits: int) -> float:
    return 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)


def _digits_case(rng: np.random.Generator, case: str) -> tuple[np.ndarray, str]:
    """(g, q, p) blocks and the method expected for one case of the printed-digits test."""
    n = 200 if case == "svd" else 300
    sigmas = np.linspace(1.0, 2.0, n)
    method = case
    if case in ("gram-ldl", "gram-deflated"):
        sigmas[:3] = [1e-5, 2e-5, 3e-9]  # below tol (7e-5); one at the Gram noise floor
    if case in ("gram-ldl-many", "gram-eigh"):
        sigmas[:100] = 1e-5  # more than MAX_DEFLATION values below tol
        method = "gram-ldl" if case == "gram-ldl-many" else case
    if case == "svd":
        sigmas[:2] = 1e-5
    if case == "clustered-top":  # an orthogonal matrix: every singular value 1
        sigmas, method = np.ones(512), "gram-cholesky"
    w = _with_spectrum(rng, sigmas)
    if case == "tiny":  # ARPACK's stopping test turns absolute for tiny Gram eigenvalues
        w, method = (rng.standard_normal((400, 300)) * 1e-10).astype(np.float32), "gram-cholesky"
    if case in ("grouped-zero-last", "grouped-zero-first"):
        sigmas[:3] = 0.0  # a dropped value at the Gram noise floor, beside an exact zero block
        pair = [_with_spectrum(rng, sigmas), np.zeros((n, n), np.float32)]
        blocks = np.stack(pair if case == "grouped-zero-last" else pair[::-1])
        return blocks, "gram-eigh+gram-ldl"
    return w[None], method


@pytest.mark.parametrize("case", ["svd", "gram-cholesky", "gram-ldl", "gram-ldl-many",
                                  "gram-deflated", "gram-eigh", "clustered-top", "tiny",
                                  "grouped-zero-last", "grouped-zero-first"])
def test_printed_digits_are_right(rng, case, monkeypatch):
    """Every printed value is within 1.5 units of its last printed digit of a float64 SVD
    (the error estimate's unit plus rounding's half); a bound (digits 0) is on the right side
    of the SVD's value. Each engine path (the deflated certificate and the full eigh with the
    Schur-complement path switched off), a clustered top, tiny weights, grouped blocks."""
    blocks, method = _digits_case(rng, case)
    if case in ("gram-deflated", "gram-eigh"):
        monkeypatch.setattr(spectral, "SCHUR_MAX_DIM", 0)
    decision = decide_rank(blocks, EPS32)
    assert decision.method == method
    _assert_digits_right(decision, blocks)
    assert decision.resolved()["sigma_max"][1] >= 9


@pytest.mark.parametrize(("q", "rank"), [(300, 1), (700, 2)])
def test_ldl_kept_value_digits_count_the_rounding_of_the_other_side(q, rank):
    """Low-rank products (seed 5012): the dropped values sit at the noise floor, so
    (G - tol^2 I)^{-1} is dominated by them and rounds at m eps64 times their size; the kept
    value's error counts that floor (it once printed 12 digits with 6 right)."""
    rng = np.random.default_rng(5012)
    w = (rng.standard_normal((q, rank)) @ rng.standard_normal((rank, q))).astype(np.float32)
    decision = decide_rank(w[None], EPS32)
    assert decision.rank == rank
    _assert_digits_right(decision, w[None])


def test_margin_is_the_smaller_ratio_before_rounding():
    """kept / tol = 2.9603 (7 digits) and tol / dropped = 2.9544 (1 digit, rounds to 3.0):
    the margin is the second, shown as 3.0, not the first because 2.9603 < 3.0."""
    decision = RankDecision(rank=10, sigma_max=1.0, tol=1e-3, eps=EPS32,
                            smallest_kept=2.9603e-3, largest_dropped=1e-3 / 2.9544,
                            method="gram-ldl", kept_error=1e-10, dropped_error=3e-6)
    shown, digits = decision.resolved()["margin"]
    assert shown is not None and digits is not None
    assert abs(shown - 2.9544) <= 1.5 * _unit_of_last_digit(2.9544, digits)


def _assert_digits_right(decision: RankDecision, blocks: np.ndarray) -> None:
    """Every printed value within 1.5 units of its last digit of a float64 SVD; bounds on
    the right side."""
    ref = reference(blocks, EPS32)
    ref["margin"] = min([ref["smallest_kept"] / ref["tol"]]
                        + ([ref["tol"] / ref["largest_dropped"]] if ref["largest_dropped"]
                           else []))
    for name, (shown, digits) in decision.resolved().items():
        if ref[name] is None:
            assert (shown, digits) == (None, None)
            continue
        assert shown is not None and digits is not None
        if digits == 0:  # a bound: dropped values from above, the margin from below
            assert (ref[name] <= shown) if name == "largest_dropped" else (ref[name] >= shown)
        else:
            assert abs(shown - ref[name]) <= 1.5 * _unit_of_last_digit(ref[name], digits), name


@pytest.mark.parametrize("method", ["gram-ldl", "gram-deflated"])
def test_deflated_report_is_schema_valid(tmp_path, rng, monkeypatch, method):
    """A layer decided by the Schur complement ('gram-ldl') or the deflated certificate
    ('gram-deflated') passes the shipped JSON schema (a method name was once missing from the
    schema's pattern)."""
    import json
    from importlib import resources

    import jsonschema
    from builders import init, make_model, value
    from onnx.helper import make_node as mk

    from onnxcollide.audit.model import audit_model
    from onnxcollide.report.json_format import report_dict

    sigmas = np.linspace(1.0, 2.0, 300)
    sigmas[:2] = [1e-5, 2e-5]
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 300])], [value("y", [1, 300])],
                      [init("W", _with_spectrum(rng, sigmas))])
    if method == "gram-deflated":
        monkeypatch.setattr(spectral, "SCHUR_MAX_DIM", 0)
    data = report_dict([audit_model(str(path))])
    assert data["models"][0]["layers"][0]["method"] == method
    schema = json.loads(resources.files("onnxcollide").joinpath(
        "schemas", "audit-report-v1.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator(schema).validate(data)


def _mirrored_pair_weight() -> np.ndarray:
    """1200 x 400: two mirrored units (16 e0 and -16 e0, sigma 16 sqrt(2), right singular
    vector (e0 - e1)/sqrt(2), orthogonal to all ones) beside a block of values 1e-3 (20) and
    0.05..0.1. Power-of-two entries keep every Krylov vector started from all ones exactly 0
    on the pair, so a Lanczos started there converged to 0.1 (rank 399, not 379)."""
    rng = np.random.default_rng(1)
    w = np.zeros((1200, 400), np.float32)
    u = np.linalg.qr(rng.standard_normal((1198, 398)))[0]
    v = np.linalg.qr(rng.standard_normal((398, 398)))[0]
    s = np.linspace(0.05, 0.1, 398)
    s[:20] = 1e-3
    w[2:, 2:] = ((u * s) @ v.T).astype(np.float32)
    w[0, 0], w[0, 1] = 16.0, -16.0
    return w


def test_sigma_max_of_mirrored_units_is_found():
    w = _mirrored_pair_weight()
    decision = decide_rank(w[None], EPS_OF["float"])
    reference = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert decision.rank == 379
    assert decision.sigma_max == pytest.approx(reference[0], rel=1e-10)


def test_a_lanczos_that_misses_the_top_is_caught_by_the_certificate(monkeypatch):
    """Lanczos made to return the second eigenpair: the Cholesky of bound*I - G fails, and the
    top comes from a dense eigensolver instead of the missed value."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((500, 300))
    gram = gram_matrix(w.astype(np.float32))
    lam, vec = np.linalg.eigh(np.triu(gram) + np.triu(gram, 1).T)

    def second_pair(*args, **kwargs):
        return lam[-2:-1] / float(np.diagonal(gram).max()), vec[:, -2:-1]

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", second_pair)  # imported on use
    value, error = spectral._largest_eigenvalue(gram)
    assert value == pytest.approx(lam[-1], rel=1e-12) and error == 0.0
    assert not spectral._nothing_above(gram, lam[-2] * (1 + 1e-9))
    assert spectral._nothing_above(gram, lam[-1] * (1 + 1e-9))


def test_a_tolerance_or_sigma_max_that_overflows_is_refused():
    w = np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32) * 1e9
    with pytest.raises(OverflowError, match="overflows float64"):
        decide_rank(w[None], EPS32, ToleranceRule(rtol=1e300))
    with pytest.raises(FloatingPointError, match="largest singular value overflows"):
        decide_rank(np.full((1, 40, 30), 1.5e308), EPS_OF["double"])


def test_a_tolerance_above_sigma_max_drops_everything_on_the_gram_path(recwarn):
    """atol 1e300: tol^2 overflows float64; every value is dropped without a warning."""
    w = np.random.default_rng(0).standard_normal((600, 400)).astype(np.float32)
    decision = decide_rank(w[None], EPS32, ToleranceRule(atol=1e300))
    assert decision.rank == 0 and decision.smallest_kept is None
    top = np.linalg.norm(w.astype(np.float64), 2)
    assert decision.largest_dropped == pytest.approx(top, rel=1e-9)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
# ------------------------------------------------------------------ streamed (TSQR) SVD path


def _stream_in_chunks(monkeypatch, m: int) -> int:
    """Chunks small enough that an m-wide test block streams in many of them; returns the
    chunk size (the rule needs at least 4 m lines a chunk). Blocks up to SVD_MAX_DIM wide
    stay on the SVD path whatever their length (since issue 16 a long one takes the cheaper
    Gram path; the streamed SVD still re-decides close calls and is tested here)."""
    chunk = max(32 * m * m, 8192)
    monkeypatch.setattr(spectral, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(spectral, "SVD_MAX_WORK", 1 << 62)
    return chunk


def _peak_allocation(run):
    """(run(), peak bytes traced by tracemalloc while it ran: numpy arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _assert_no_whole_copy(peak: int, chunk: int, shape: tuple[int, ...]) -> None:
    """The streamed path holds about two chunks (the buffer, a short last one) and R: far
    below a float64 copy of the block, which the bound must stay well under to mean it."""
    bound = 3 * chunk + (64 << 10)
    whole = 8 * math.prod(shape)
    assert 4 * bound <= whole
    assert peak < bound, f"peak {peak} B, a float64 copy is {whole} B"


def _near_tol_spectrum(q: int, p: int, groups: int = 1) -> tuple[np.ndarray, int]:
    """Singular values of a (q, p) block: 2 .. 1, then tol * 1.03, tol / 1.03, tol * 1e-3
    and 0 (tol from sigma_max 2 and the default float32 rule on ``groups`` such blocks):
    rank min(q, p) - 3."""
    m = min(q, p)
    tol = 2.0 * groups * max(q, p) * EPS32
    sigmas = np.linspace(2.0, 1.0, m)
    sigmas[-4:] = [tol * 1.03, tol / 1.03, tol * 1e-3, 0.0]
    return sigmas, m - 3


def _with_spectrum_shaped(rng: np.random.Generator, q: int, p: int, sigmas: np.ndarray
                          ) -> np.ndarray:
    """(q, p) float32 matrix with about these min(q, p) singular values."""
    m = min(q, p)
    u, _ = np.linalg.qr(rng.standard_normal((q, m)))
    v, _ = np.linalg.qr(rng.standard_normal((p, m)))
    return ((u * sigmas) @ v.T).astype(np.float32)


def _assert_within_errors(decision: RankDecision, ref: dict) -> None:
    """Rank equal to the float64 SVD's; sigma_max, the kept and the dropped values within
    the decision's own error estimates of it (the ref's rounding, ~1e-16 relative, aside)."""
    assert decision.rank == ref["rank"]
    slack = 4 * EPS64 * ref["sigma_max"]
    assert abs(decision.sigma_max - ref["sigma_max"]) <= decision.sigma_max_error + slack
    assert decision.smallest_kept is not None and decision.kept_error is not None
    assert abs(decision.smallest_kept - ref["smallest_kept"]) <= decision.kept_error + slack
    assert decision.largest_dropped is not None and decision.dropped_error is not None
    assert abs(decision.largest_dropped - ref["largest_dropped"]) \
        <= decision.dropped_error + slack


@pytest.mark.parametrize("shape", [(5, 60000), (60000, 5), (40, 12000), (12000, 40),
                                   (100, 16000)], ids=lambda s: "x".join(map(str, s)))
def test_streamed_svd_matches_float64_svd_near_tol(rng, monkeypatch, shape):
    """Long blocks of known rank with values 3% either side of tol, both orientations, aspect
    ratios 120 to 12000: the streamed QR decides as a float64 SVD of the whole block (rank,
    values within the reported errors, printed digits), without a float64 copy of it."""
    q, p = shape
    sigmas, rank = _near_tol_spectrum(q, p)
    w = _with_spectrum_shaped(rng, q, p, sigmas)
    ref = reference(w[None], EPS32)
    assert ref["rank"] == rank
    assert max(ref["smallest_kept"] / ref["tol"], ref["tol"] / ref["largest_dropped"]) < 1.05
    chunk = _stream_in_chunks(monkeypatch, min(shape))
    decision, peak = _peak_allocation(lambda: decide_rank(w[None], EPS32))
    _assert_no_whole_copy(peak, chunk, shape)
    assert decision.method == "svd"
    _assert_within_errors(decision, ref)
    _assert_digits_right(decision, w[None])
    assert decide_rank(w[None], EPS32) == decision  # deterministic


@pytest.mark.parametrize("layout", ["C", "F", "grouped"])
def test_streamed_svd_of_a_memmap(tmp_path, rng, monkeypatch, layout):
    """A memory-mapped long block, C-ordered, as a transposed (Fortran) view, or two groups:
    streamed from the file in chunks (no float64 copy), the float64 SVD's decision."""
    q, p = 30, 16000
    groups = 2 if layout == "grouped" else 1
    sigmas, rank = _near_tol_spectrum(q, p, groups)
    w = np.stack([_with_spectrum_shaped(rng, q, p, sigmas) for _ in range(groups)])
    path = tmp_path / "w.bin"
    w.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=w.shape)
    blocks = mapped.transpose(0, 2, 1) if layout == "F" else mapped
    chunk = _stream_in_chunks(monkeypatch, q)
    decision, peak = _peak_allocation(lambda: decide_rank(blocks, EPS32))
    _assert_no_whole_copy(peak, chunk, (q, p))
    assert decision.method == "svd"
    ref = reference(np.asarray(blocks), EPS32)
    assert ref["rank"] == rank * blocks.shape[0]
    _assert_within_errors(decision, ref)


@pytest.mark.parametrize("scale", [1e-160, 1e160])
def test_streamed_svd_of_float64_at_any_scale(rng, monkeypatch, scale):
    """float64 long blocks at 1e-160 and 1e160: the streamed QR (scaled Householder norms)
    neither under- nor overflows; rank and values as the float64 SVD's."""
    w = low_rank(rng, 20, 6000, 7, np.float64) * scale
    _stream_in_chunks(monkeypatch, 20)
    decision = decide_rank(w[None], EPS32)
    ref = reference(w[None], EPS32)
    assert decision.rank == ref["rank"] == 7
    assert decision.sigma_max == pytest.approx(ref["sigma_max"], rel=1e-12)
    assert decision.smallest_kept == pytest.approx(ref["smallest_kept"], rel=1e-10)


def test_streamed_svd_of_float16_and_nan(rng, monkeypatch):
    """float16 blocks stream like float32 ones (promoted chunk by chunk: an integer rank-3
    product keeps rank 3 under rtol 1e-9, which float16 arithmetic could not resolve); a NaN
    in the last chunk raises like the whole-block SVD."""
    w = (rng.integers(-3, 4, size=(9, 3)) @ rng.integers(-3, 4, size=(3, 5000))) \
        .astype(np.float16)
    _stream_in_chunks(monkeypatch, 9)
    rule = ToleranceRule(rtol=1e-9)
    assert decide_rank(w[None], EPS16, rule).rank == 3
    assert np.linalg.matrix_rank(w.astype(np.float64)) == 3
    w[-1, -1] = np.nan
    with pytest.raises(FloatingPointError):
        decide_rank(w[None], EPS16, rule)


def test_gram_close_call_redecided_by_a_streamed_svd(rng, monkeypatch):
    """A Gram-path block (300 wide) whose smallest value (1e-2) is a relative 1e-8 above tol
    (inside the Gram error bar, about 9e-8 there) is re-decided by SVD; a long one streams
    that SVD too (no float64 copy) and decides as the float64 SVD."""
    q, p = 300, 20000
    sigmas = np.linspace(2.0, 1.0, q)
    sigmas[-1] = 1e-2
    w = _with_spectrum_shaped(rng, q, p, sigmas)
    rule = _tol_just_below_smallest(w, 1e-8)
    chunk = _stream_in_chunks(monkeypatch, q)
    decision, peak = _peak_allocation(lambda: decide_rank(w[None], EPS32, rule))
    assert decision.method == "svd"
    assert peak < 4 * chunk + (2 << 20) < 8 * q * p / 3
    ref = reference(w[None], EPS32, atol=rule.atol)
    assert decision.rank == ref["rank"] == q
    assert decision.smallest_kept == pytest.approx(ref["smallest_kept"], rel=1e-9)


def test_streaming_rule():
    """A block streams when its float64 copy exceeds CHUNK_BYTES (64 MiB) and a chunk holds
    at least 4 lines per short-side line; smaller or squarer blocks keep the whole-block SVD."""
    assert not spectral.streams((256, 32768))  # exactly 64 MiB of float64
    assert spectral.streams((256, 32769)) and spectral.streams((32769, 256))
    assert spectral.streams((1448, 10**5)) and not spectral.streams((1449, 10**5))
    assert spectral.streams((1, 8 << 20 | 1)) and not spectral.streams((4096, 4096))


def test_many_small_groups_are_copied_a_chunk_at_a_time(rng, monkeypatch):
    """Unstreamed groups go to the SVD a CHUNK_BYTES batch at a time: the same decision as one
    batch (each block's SVD is the same), without a float64 copy of the whole stack."""
    blocks = rng.standard_normal((400, 6, 9)).astype(np.float32)
    blocks[::7, :, 4:] = 0.0
    whole = decide_rank(blocks, EPS32)
    monkeypatch.setattr(spectral, "CHUNK_BYTES", 8 * 6 * 9 * 16)
    batched, peak = _peak_allocation(lambda: decide_rank(blocks, EPS32))
    assert batched == whole
    assert peak < 8 * blocks.size / 4


@pytest.mark.parametrize("shape", [(12, 20000), (40, 9000)], ids=lambda s: "x".join(map(str, s)))
def test_kernel_space_of_a_long_wide_matrix_streams(rng, monkeypatch, shape):
    """kernel_space of a wide matrix (q inputs, p >> q outputs): the same rank, kernel and
    range as a float64 SVD, without a float64 copy of W or the p x p right factor a full SVD
    made (a 128 x 100000 layer needed 80 GB)."""
    q, p = shape
    sigmas, rank = _near_tol_spectrum(q, p)
    w = _with_spectrum_shaped(rng, q, p, sigmas)
    chunk = _stream_in_chunks(monkeypatch, q)
    space, peak = _peak_allocation(lambda: spectral.kernel_space(w, EPS32))
    _assert_no_whole_copy(peak, chunk, shape)
    u, s, _ = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    assert space.rank == rank == int(np.count_nonzero(s > s[0] * p * EPS32))
    assert space.sigma_max == pytest.approx(s[0], rel=1e-12)
    assert space.basis is not None and space.basis.shape == (q - rank, q)
    kernel = u[:, rank:]
    np.testing.assert_allclose(space.basis.T @ space.basis, kernel @ kernel.T, atol=1e-9)
    np.testing.assert_allclose(space.range_basis @ space.range_basis.T,
                               u[:, :rank] @ u[:, :rank].T, atol=1e-9)
    again = spectral.kernel_space(w, EPS32)  # deterministic
    assert np.array_equal(again.basis, space.basis)
    assert np.array_equal(again.range_basis, space.range_basis)


def test_narrow_blocks_take_the_svd_only_where_it_is_cheap(rng):
    """A 256 x 256 block (n m^2 = 2^24) keeps the float64 SVD; a 2304 x 256 conv block
    (ResNet-50's, 9x that work) takes the Gram matrix and its eigenvalues, with the SVD's
    rank and every printed value within its digits of the SVD's."""
    square = _with_spectrum_shaped(rng, 256, 256, np.linspace(2.0, 1.0, 256))
    assert decide_rank(square[None], EPS32).method == "svd"
    sigmas = np.linspace(2.0, 1.0, 256)
    sigmas[:3] = [1e-6, 2e-6, 3e-9]  # dropped, one at the noise floor
    tall = _with_spectrum_shaped(rng, 2304, 256, sigmas)
    decision = decide_rank(tall[None], EPS32)
    assert decision.method == "gram-eigh"
    assert decision.rank == reference(tall[None], EPS32)["rank"] == 253
    _assert_digits_right(decision, tall[None])
