"""Tests for nncift.selection: greedy FL / FLMI / FLCG, top-k, budgets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nncift.selection import (
    OBJECTIVES,
    ObjectiveSpec,
    Selection,
    budget_to_count,
    choose_subset,
    facility_location,
    fl_conditional_gain,
    fl_mutual_information,
    objective_value,
    top_k,
)
from nncift.selection import kernels as sel

# shapes (n_rows, n_candidates): square, more rows than columns, fewer rows than columns, rows not a
# multiple of the 32 accumulator lanes, and very few rows
SHAPES = [(64, 64), (75, 40), (40, 75), (101, 57), (5, 30)]


def dyadic(rng: np.random.Generator, shape: tuple[int, int], levels: int = 8) -> np.ndarray:
    """Values in {0, 1/levels, ..., 1}: many exact ties, and float sums of them are exact."""
    return (rng.integers(0, levels + 1, size=shape) / levels).astype(np.float32)


def reference_greedy(s: np.ndarray, k: int, cap: np.ndarray | None = None, initial: np.ndarray | None = None) -> list[int]:
    """Plain greedy in float64 numpy, written independently of the kernels (ties: lowest index)."""
    c = np.maximum(s.astype(np.float64), 0.0)
    if cap is not None:
        c = np.minimum(c, cap.astype(np.float64)[:, None])
    cur = np.zeros(c.shape[0]) if initial is None else initial.astype(np.float64).copy()
    singleton = np.maximum(c - cur[:, None], 0.0).sum(axis=0)
    chosen: list[int] = []
    for _ in range(k):
        gains = np.maximum(c - cur[:, None], 0.0).sum(axis=0)
        gains[chosen] = -1.0
        j = int(np.argmax(gains))  # first maximum = lowest index
        if gains[j] <= 0:  # out of signal: the rest by singleton value, then lowest index
            rest = [int(i) for i in sorted(range(c.shape[1]), key=lambda i: (-singleton[i], i)) if i not in chosen]
            return chosen + rest[: k - len(chosen)]
        chosen.append(j)
        cur = np.maximum(cur, c[:, j])
    return chosen


def brute_force_best(value, n_candidates: int, k: int) -> float:
    return max(value(list(subset)) for subset in itertools.combinations(range(n_candidates), k))


# ------------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("budget, n, expected", [
    (0.3, 10, 3), (0.25, 10, 3), (0.24, 10, 2), (0.01, 10, 1), (1.0, 7, 7), (0.5, 3, 2),
    (0, 5, 0), (1, 5, 1), (5, 5, 5), (np.int64(4), 5, 4), (np.float32(0.5), 8, 4),
    (0.5, 0, 0), (0, 0, 0), (2.0, 5, 2), (np.float64(5.0), 5, 5),  # a whole float above 1 is a count (--budget 50.0)
])
def test_budget_to_count(budget, n, expected):
    assert budget_to_count(budget, n) == expected


@pytest.mark.parametrize("budget, n", [
    (6, 5), (-1, 5), (1.5, 5), (0.0, 5), (-0.1, 5), (float("nan"), 5), (float("inf"), 5), (True, 5), ("3", 5), (None, 5),
    (1, 0), (6.0, 5),
])
def test_bad_budgets_raise(budget, n):
    with pytest.raises(ValueError):
        budget_to_count(budget, n)


def test_bad_candidate_count_raises():
    with pytest.raises(ValueError):
        budget_to_count(1, -1)


def test_selection_budget_edges():
    s = dyadic(np.random.default_rng(0), (20, 12))
    empty = facility_location(s, 0)
    assert isinstance(empty, Selection) and empty.name == "fl"
    assert empty.indices.shape == (0,) and empty.indices.dtype == np.int64
    assert empty.gains.shape == (0,) and empty.gains.dtype == np.float64 and empty.objective == 0.0

    one = facility_location(s, 1)
    column_sums = s.astype(np.float64).sum(axis=0)
    assert one.indices.tolist() == [int(np.argmax(column_sums))]
    assert one.gains[0] == pytest.approx(column_sums.max()) and one.objective == pytest.approx(column_sums.max())

    everything = facility_location(s, 12)
    assert sorted(everything.indices.tolist()) == list(range(12))
    assert everything.objective == pytest.approx(s.astype(np.float64).max(axis=1).sum())

    assert facility_location(s, 0.5).indices.tolist() == facility_location(s, 6).indices.tolist()
    assert len(facility_location(s, 0.01).indices) == 1
    for bad in (13, -1, 1.5):
        with pytest.raises(ValueError):
            facility_location(s, bad)


# -------------------------------------------------------------------------- lazy == plain == reference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fl_lazy_equals_plain_and_reference(shape, seed):
    rng = np.random.default_rng(seed)
    s = dyadic(rng, shape)
    s[:, 3] = s[:, 7]  # duplicate columns: exact ties between candidates
    k = shape[1] if seed == 0 else max(1, shape[1] // 2)  # seed 0: all columns (zero-gain tail)
    lazy = facility_location(s, k, lazy=True)
    plain = facility_location(s, k, lazy=False)
    np.testing.assert_array_equal(lazy.indices, plain.indices)
    np.testing.assert_array_equal(lazy.gains, plain.gains)  # bit-for-bit
    assert lazy.objective == plain.objective
    assert lazy.indices.tolist() == reference_greedy(s, k)
    assert lazy.objective == objective_value(s, lazy.indices)  # dyadic values: exact
    assert np.all(np.diff(lazy.gains) <= 0)  # submodular: greedy gains never increase
    assert len(set(lazy.indices.tolist())) == k


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fl_lazy_equals_plain_continuous(seed):
    # continuous values, float64 input: no exact ties, but the kernels must still agree bit for bit
    rng = np.random.default_rng(100 + seed)
    x = rng.standard_normal((90, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = (x @ x[:70].T + 1.0) / 2.0  # 90 rows x 70 candidates
    if seed >= 2:
        s = s ** 24  # values over many decades: float64 gain sums are no longer exact
    lazy = facility_location(s, 0.4, lazy=True)
    plain = facility_location(s, 0.4, lazy=False)
    np.testing.assert_array_equal(lazy.indices, plain.indices)
    np.testing.assert_array_equal(lazy.gains, plain.gains)
    assert lazy.objective == pytest.approx(objective_value(s, lazy.indices), rel=1e-6)
    assert lazy.gains.sum() == pytest.approx(lazy.objective, rel=1e-9)


def test_compacted_gain_is_bitwise_the_dense_gain():
    # the invariant lazy == plain rests on: a candidate's gain is the same float64 whether its column
    # is evaluated dense or from its compacted (alive entries only) form
    rng = np.random.default_rng(3)
    n = 333
    half = n // 2

    def spread() -> np.ndarray:  # values over 9 decades: float64 sums of their differences round
        return (10.0 ** (-9.0 * rng.random(n))).astype(np.float32)

    for _ in range(40):
        col = spread()
        low = spread()  # coverage when the column gets compacted
        if int((col > low).sum()) > half:
            low = np.maximum(low, np.float32(np.median(col)))
        alive = int((col > low).sum())
        high = np.maximum(low, spread())  # coverage later (coverage only grows)
        st = np.zeros((2, n), np.float32)
        st[1] = col
        m = sel._compact_dense(st, st.view(np.int32), 1, low, half, np.empty(n, np.int32))
        assert m == alive
        dense_low, count_low = sel.dense_gain(col, low)
        assert count_low == alive
        acc = np.zeros(sel.LANES)
        sparse_low, m_low = sel._compact_gain(st, st.view(np.int32), 1, m, low, half, acc)
        assert sparse_low == dense_low and m_low == m
        sparse_high, m_high = sel._compact_gain(st, st.view(np.int32), 1, m, high, half, acc)
        dense_high, count_high = sel.dense_gain(col, high)
        assert sparse_high == dense_high  # exact, not approximately
        assert m_high == count_high and dense_high <= dense_low
        assert dense_high == pytest.approx(np.maximum(col.astype(np.float64) - high, 0).sum(), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_flmi_and_flcg_lazy_equal_plain_and_reference(shape):
    rng = np.random.default_rng(sum(shape))
    s = dyadic(rng, shape)
    q = dyadic(rng, (shape[0], 3))
    p = dyadic(rng, (shape[0], 4)) * np.float32(0.75)
    k = max(1, (2 * shape[1]) // 3)
    for name, choose, terms in (("flmi", lambda lazy: fl_mutual_information(s, q, k, lazy=lazy), {"cap": q.max(axis=1)}),
                                ("flcg", lambda lazy: fl_conditional_gain(s, p, k, lazy=lazy), {"initial": p.max(axis=1)})):
        lazy, plain = choose(True), choose(False)
        np.testing.assert_array_equal(lazy.indices, plain.indices)
        np.testing.assert_array_equal(lazy.gains, plain.gains)
        assert lazy.name == name
        assert lazy.indices.tolist() == reference_greedy(s, k, **terms)
        assert lazy.objective == objective_value(s, lazy.indices, **terms)


def test_eta_and_nu_scale_the_cap_and_the_initial_coverage():
    rng = np.random.default_rng(7)
    s = dyadic(rng, (30, 20))
    q = dyadic(rng, (30, 2))
    p = dyadic(rng, (30, 2))
    mi = fl_mutual_information(s, q, 6, eta=0.5)
    assert mi.indices.tolist() == reference_greedy(s, 6, cap=0.5 * q.max(axis=1))
    assert mi.objective == objective_value(s, mi.indices, cap=0.5 * q.max(axis=1))
    cg = fl_conditional_gain(s, p, 6, nu=0.5)
    assert cg.indices.tolist() == reference_greedy(s, 6, initial=0.5 * p.max(axis=1))
    assert cg.objective == objective_value(s, cg.indices, initial=0.5 * p.max(axis=1))
    # no private items = plain FL; no query items = nothing to gain
    empty_p = fl_conditional_gain(s, np.zeros((30, 0), np.float32), 6)
    assert empty_p.indices.tolist() == facility_location(s, 6).indices.tolist()
    empty_q = fl_mutual_information(s, np.zeros((30, 0), np.float32), 4)
    assert empty_q.indices.tolist() == [0, 1, 2, 3] and empty_q.objective == 0.0
    with pytest.raises(ValueError):
        fl_mutual_information(s, q, 3, eta=-1.0)
    with pytest.raises(ValueError):
        fl_conditional_gain(s, p, 3, nu=-0.1)
    with pytest.raises(ValueError):
        fl_mutual_information(s, q[:10], 3)  # query rows must match data rows


def test_zero_gains_fill_by_singleton_value_not_index_order():
    s = np.full((10, 8), 0.25, np.float32)
    s[:, 5] = 1.0  # column 5 covers every row completely
    s[:, 7] = 0.75  # the best of the rest on its own, then 2 and 6 (0.5), then the 0.25 columns by index
    s[:, 2] = s[:, 6] = 0.5
    result = facility_location(s, 6)
    assert result.indices.tolist() == [5, 7, 2, 6, 0, 1]
    assert result.gains.tolist() == [10.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert result.n_positive == 1
    assert result.objective == 10.0
    assert facility_location(s, 6, lazy=False).indices.tolist() == [5, 7, 2, 6, 0, 1]
    no_rows = facility_location(np.zeros((0, 4), np.float32), 3)
    assert no_rows.indices.tolist() == [0, 1, 2] and no_rows.objective == 0.0 and no_rows.n_positive == 0


# --------------------------------------------------------------------------------- vs submodlib


def _maximize(function, budget: int) -> tuple[list[int], float]:
    result = function.maximize(budget=budget, optimizer="LazyGreedy", stopIfZeroGain=False,
                               stopIfNegativeGain=False, verbose=False)
    return [int(i) for i, _ in result], float(sum(g for _, g in result))


def _cosine(rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    x = rng.standard_normal((max(n_rows, n_cols), 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return ((x[:n_rows] @ x[:n_cols].T + 1.0) / 2.0).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_fl_matches_submodlib_square(seed):
    submodlib = pytest.importorskip("submodlib")
    rng = np.random.default_rng(seed)
    s = _cosine(rng, 40, 40)
    f = submodlib.FacilityLocationFunction(n=40, mode="dense", sijs=s, separate_rep=False)
    theirs, their_value = _maximize(f, 12)
    ours = facility_location(s, 12)
    assert ours.objective == pytest.approx(their_value, rel=1e-5)
    assert ours.objective == pytest.approx(f.evaluate(set(ours.indices.tolist())), rel=1e-5)
    assert f.evaluate(set(theirs)) == pytest.approx(objective_value(s, theirs), rel=1e-5)


@pytest.mark.parametrize("n_rows", [25, 60])
def test_fl_matches_submodlib_non_square(n_rows):
    submodlib = pytest.importorskip("submodlib")
    rng = np.random.default_rng(n_rows)
    s = _cosine(rng, n_rows, 40)
    f = submodlib.FacilityLocationFunction(n=40, mode="dense", sijs=s, separate_rep=True, n_rep=n_rows)
    _, their_value = _maximize(f, 10)
    ours = facility_location(s, 10)
    assert ours.objective == pytest.approx(their_value, rel=1e-5)
    assert ours.objective == pytest.approx(f.evaluate(set(ours.indices.tolist())), rel=1e-5)


@pytest.mark.parametrize("objective,scale", [("flmi", 1.0), ("flmi", 0.8), ("flcg", 1.0), ("flcg", 0.5)])
def test_flmi_and_flcg_match_submodlib(objective, scale):
    """FLMI at η = ``scale`` (sharper query similarities: the caps bind for many rows); FLCG at ν = ``scale``."""
    submodlib = pytest.importorskip("submodlib")
    rng = np.random.default_rng(11 if objective == "flmi" else 12)
    s = _cosine(rng, 40, 40)
    if objective == "flmi":
        q = _cosine(rng, 40, 5) ** 4
        f = submodlib.FacilityLocationMutualInformationFunction(n=40, num_queries=5, data_sijs=s, query_sijs=q, magnificationEta=scale)
        ours = fl_mutual_information(s, q, 10, eta=scale)
    else:
        p = _cosine(rng, 40, 3) * np.float32(0.9)
        f = submodlib.FacilityLocationConditionalGainFunction(n=40, num_privates=3, data_sijs=s, private_sijs=p, privacyHardness=scale)
        ours = fl_conditional_gain(s, p, 10, nu=scale)
    _, their_value = _maximize(f, 10)
    assert ours.objective > 0
    assert ours.objective == pytest.approx(their_value, rel=1e-5)
    assert ours.objective == pytest.approx(f.evaluate(set(ours.indices.tolist())), rel=1e-5)


# ------------------------------------------------------------------------------ greedy guarantee


@pytest.mark.parametrize("seed", range(6))
def test_greedy_within_one_minus_one_over_e_of_optimum(seed):
    rng = np.random.default_rng(seed)
    n_rows, n_cols = int(rng.integers(3, 9)), int(rng.integers(4, 9))
    s = rng.random((n_rows, n_cols)).astype(np.float32) ** 3
    q = rng.random((n_rows, 2)).astype(np.float32)
    p = rng.random((n_rows, 2)).astype(np.float32) * np.float32(0.5)
    cap, initial = q.max(axis=1), p.max(axis=1)
    bound = 1.0 - 1.0 / math.e
    for k in range(1, min(4, n_cols) + 1):
        for result, value in (
            (facility_location(s, k), lambda a: objective_value(s, a)),
            (fl_mutual_information(s, q, k), lambda a: objective_value(s, a, cap=cap)),
            (fl_conditional_gain(s, p, k), lambda a: objective_value(s, a, initial=initial)),
        ):
            best = brute_force_best(value, n_cols, k)
            assert result.objective == pytest.approx(value(result.indices), rel=1e-6)
            assert result.objective <= best * (1 + 1e-6)
            assert result.objective >= bound * best - 1e-6


# ------------------------------------------------------------------------------- inputs, numerics


def test_inputs_memmap_float64_fortran_and_negative_values(tmp_path):
    rng = np.random.default_rng(5)
    s = rng.random((50, 35)).astype(np.float32) - np.float32(0.2)  # some negative entries
    expected = facility_location(np.maximum(s, 0), 10)
    assert facility_location(s, 10).indices.tolist() == expected.indices.tolist()  # negatives clipped at 0
    path = tmp_path / "s.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=s.shape)
    mm[:] = s
    mm.flush()
    readonly = np.memmap(path, dtype=np.float32, mode="r", shape=s.shape)
    from_memmap = facility_location(readonly, 10)
    np.testing.assert_array_equal(from_memmap.indices, expected.indices)
    np.testing.assert_array_equal(from_memmap.gains, expected.gains)
    np.testing.assert_array_equal(facility_location(np.asfortranarray(s), 10).indices, expected.indices)
    np.testing.assert_array_equal(facility_location(s.astype(np.float64), 10).indices, expected.indices)
    wide = np.zeros((50, 70), np.float32)
    wide[:, ::2] = s
    np.testing.assert_array_equal(facility_location(wide[:, ::2], 10).indices, expected.indices)  # strided view


def test_invalid_matrices_raise():
    s = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    bad = s.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        facility_location(bad, 2)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        facility_location(bad, 2)
    with pytest.raises(ValueError, match="non-finite"):
        fl_mutual_information(s, np.full((6, 2), np.nan), 2)
    with pytest.raises(ValueError):
        facility_location(s[0], 2)  # 1-D


def test_objective_value():
    s = np.array([[1.0, 0.2, 0.0], [0.1, 0.9, -1.0], [0.3, 0.3, 0.8]])
    assert objective_value(s, []) == 0.0
    assert objective_value(s, [0]) == pytest.approx(1.4)
    assert objective_value(s, [0, 1]) == pytest.approx(1.0 + 0.9 + 0.3)
    assert objective_value(s, [2]) == pytest.approx(0.8)  # -1 clipped to 0
    assert objective_value(s, [0, 1], cap=np.array([0.5, 0.5, 0.5])) == pytest.approx(1.3)
    assert objective_value(s, [0, 1], initial=np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5 + 0.4)


# ------------------------------------------------------------------------------------------ top-k


def test_top_k_order_ties_and_objective():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, -2.0])
    result = top_k(scores, 3)
    assert result.name == "topk"
    assert result.indices.tolist() == [1, 3, 0]
    assert result.indices.dtype == np.int64 and result.gains.dtype == np.float64
    assert result.gains.tolist() == [0.9, 0.9, 0.5]
    assert result.objective == pytest.approx(2.3)
    assert top_k(scores, 1.0).indices.tolist() == [1, 3, 0, 2, 4, 5]
    assert top_k(scores, 0.5).indices.tolist() == [1, 3, 0]
    assert top_k(scores, 0).indices.tolist() == []
    assert top_k(np.array([1.0, 1.0, 1.0], np.float32), 2).indices.tolist() == [0, 1]
    with pytest.raises(ValueError):
        top_k(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError):
        top_k(np.ones((2, 2)), 1)
    with pytest.raises(ValueError):
        top_k(scores, 7)


# ------------------------------------------------------------------------------------- the one entry point


def test_choose_subset_is_the_one_dispatch_by_objective():
    rng = np.random.default_rng(9)
    s = dyadic(rng, (15, 15))  # pool rows × pool candidates
    q = dyadic(rng, (2, 15))  # target rows below them (FLMI queries, FLCG existing set)
    layout = np.vstack([s, q])
    scores = rng.random(15)
    assert choose_subset(s, ObjectiveSpec("fl", 5)).indices.tolist() == facility_location(s, 5).indices.tolist()
    assert choose_subset(layout, ObjectiveSpec("flmi", 5, n_pool_rows=15, eta=0.5)).indices.tolist() == \
        fl_mutual_information(s, q.T, 5, eta=0.5).indices.tolist()
    assert choose_subset(layout, ObjectiveSpec("flcg", 5, n_pool_rows=15)).indices.tolist() == fl_conditional_gain(s, q.T, 5).indices.tolist()
    assert choose_subset(s, ObjectiveSpec("topk", 5, candidate_scores=lambda _: scores)).indices.tolist() == top_k(scores, 5).indices.tolist()
    assert set(OBJECTIVES) == {"fl", "flmi", "flcg", "topk"}
    with pytest.raises(ValueError, match="unknown objective"):
        choose_subset(layout, ObjectiveSpec("random", 5, n_pool_rows=15))
