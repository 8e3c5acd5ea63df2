"""``score``, ``select --add`` and ``inspect`` on a run that selected on a neighbour graph (``--selection.neighbours``, no
``predicted.npy``): the values a dense twin run (same settings, same network, ``--selection.neighbours 0``) reads from its
matrix, computed block by block; ``--add`` on the union's graph (unit tier: a tiny LM embeds)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from nncift import SelectSettings, open_run
from nncift.cli.commands import main
from nncift.data.demo import demo_records
from nncift.data.records import write_jsonl
from nncift.models.embeddings import embed_records
from nncift.network.files import load_network
from nncift.network.paper import predict_pairwise
from nncift.run.layout import Layout
from nncift.selection import extend_greedy
from nncift.selection.sparse import extend_on_graph, graph_values, sparse_facility_location
from nncift.selection.sparse_index import GraphPlan
from nncift.steps.add import add_to_run, union_graph
from nncift.steps.inspect import inspect_run, to_markdown
from nncift.steps.score import ObjectiveState, score_records
from nncift.steps.select import run_select
from nncift.steps.select_sparse import select_on_graph


def _settings(embedder: Path, **overrides) -> SelectSettings:
    base = dict(influence="delift-se", embedder=f"lm:{embedder}", device="cpu", **{
        "sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 8, "network.max_steps": 60, "network.folds": 3},
        quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


def _twins(tmp_path: Path, embedder: Path, demo_pool, objective: str, neighbours: int = 6) -> tuple[Path, Path]:
    """A dense and a sparse run of 40 pool records (12 targets for flmi / flcg) with the same network: (dense, sparse)."""
    targets = demo_pool[40:52] if objective != "fl" else None
    settings = {"selection.objective": objective}
    for name, k in (("dense", 0), ("sparse", neighbours)):
        run_select(_settings(embedder, **settings, **{"selection.neighbours": k}), tmp_path / name, pool=demo_pool[:40], targets=targets)
    dense, sparse = tmp_path / "dense", tmp_path / "sparse"
    assert (dense / "network.safetensors").read_bytes() == (sparse / "network.safetensors").read_bytes()  # the twins share the network
    assert not (sparse / "predicted.npy").exists()
    return dense, sparse


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_select_on_a_faiss_graph_is_recorded_and_matches_the_exact_graph(tmp_path: Path, tiny_lm_dir: Path, demo_pool, index: str) -> None:
    """``--selection.graph ivf|hnsw`` searches the run's inner-product form with that FAISS index; on 40 records every index
    finds the exact neighbours, so the subset is the exact graph's, and the manifest names the index and its recall."""
    pytest.importorskip("faiss")
    for name, graph in (("exact", "exact"), (index, index)):
        run_select(_settings(tiny_lm_dir, **{"selection.neighbours": 6, "selection.graph": graph}), tmp_path / name, pool=demo_pool[:40])
    manifest = json.loads((tmp_path / index / "manifest.json").read_text())
    assert (manifest["graph_builder"], manifest["neighbours"]) == (f"faiss-{index}", 6)
    assert manifest["graph_recall"] >= 0.95  # (near-)ties of a tiny embedder may swap the K-th neighbour
    assert manifest["settings"]["selection"]["graph"] == index
    assert (tmp_path / index / "subset.jsonl").read_text() == (tmp_path / "exact" / "subset.jsonl").read_text()


@pytest.mark.parametrize("objective", ["fl", "flmi", "flcg"])
def test_score_on_a_sparse_run_gives_the_dense_values(tmp_path: Path, tiny_lm_dir: Path, demo_pool, objective: str) -> None:
    dense, sparse = _twins(tmp_path, tiny_lm_dir, demo_pool, objective)
    new = demo_pool[52:64]
    scored = score_records(sparse, new, tmp_path / "scored", top_targets=4, progress=False)
    twin = score_records(dense, new, tmp_path / "twin", top_targets=4, progress=False)
    # float32 values summed in another order (blocks against the stored matrix): a few ulps of 1 apart, also near 0
    np.testing.assert_allclose([r["value"] for r in scored.rows], [r["value"] for r in twin.rows], rtol=1e-5, atol=1e-6)
    # the gains: the dense implementation on the dense twin's matrix, with the sparse run's own picks
    matrix = np.load(dense / "predicted.npy")
    settings = json.loads((sparse / "manifest.json").read_text())["settings"]["selection"]
    n_pool_rows = json.loads((sparse / "rows.json").read_text())["n_pool_rows"]
    state = ObjectiveState.of(objective, matrix, n_pool_rows, open_run(sparse).scores[0], eta=settings["eta"], nu=settings["nu"])
    block = predict_pairwise(load_network(sparse / "network.safetensors"), np.load(sparse / "row_embeddings.npy"),
                             embed_records(new, model=f"lm:{tiny_lm_dir}", device="cpu", progress=False))
    values, gains = state.values_and_gains(block)
    np.testing.assert_allclose([r["value"] for r in scored.rows], values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["gain"] for r in scored.rows], gains, rtol=1e-5, atol=1e-6)
    assert any(g > 0 for g in gains) and any(g < v for g, v in zip(gains, values))  # the subset's coverage counts
    for mine, theirs in zip(scored.rows, twin.rows):
        np.testing.assert_allclose([t["value"] for t in mine["top_targets"]], [t["value"] for t in theirs["top_targets"]], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_inspect_a_sparse_run_describes_the_graph_and_looks_up_predicted_rows_and_columns(tmp_path: Path, tiny_lm_dir: Path, demo_pool,
                                                                                        objective: str) -> None:
    dense, sparse = _twins(tmp_path, tiny_lm_dir, demo_pool, objective)
    q_rows, q_cols = np.load(sparse / "q1.rows.npy"), np.load(sparse / "q1.cols.npy")
    n_shown = 12 if objective == "flmi" else 40
    target = int(q_rows[-1]) - (40 if objective == "flmi" else 0)  # a sampled row: some of its values are exact
    report = inspect_run(sparse, target=target, candidate=int(q_cols[0]), top=40)
    twin = inspect_run(dense, target=target, candidate=int(q_cols[0]), top=40)
    assert report["run"]["selection_mode"] == "sparse" and twin["run"]["selection_mode"] == "dense" and "graph" not in twin["run"]
    assert report["run"]["graph"] == {"neighbours": 6, "graph_builder": "exact", "graph_recall": None}
    assert "Selected on a neighbour graph: 6 neighbours per row (exact graph)" in to_markdown(report)
    matrix = np.load(dense / "predicted.npy")
    row = report["target"]["row"]
    listed = report["target"]["top_candidates"]
    np.testing.assert_allclose([c["value"] for c in listed], [matrix[row, c["index"]] for c in listed], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([c["value"] for c in listed], np.sort(matrix[row])[::-1], rtol=1e-5, atol=1e-6)
    origins = {c["index"]: c["origin"] for c in twin["target"]["top_candidates"]}
    assert {c["index"]: c["origin"] for c in listed} == origins and "exact" in origins.values()
    served = report["candidate"]["top_targets"]
    assert len(served) == n_shown and all(t["kind"] == ("target" if objective == "flmi" else "pool") for t in served)
    np.testing.assert_allclose([t["value"] for t in served], [matrix[t["row"], report["candidate"]["index"]] for t in served], rtol=1e-5,
                               atol=1e-6)
    column = matrix[40:, report["candidate"]["index"]] if objective == "flmi" else matrix[:, report["candidate"]["index"]]
    np.testing.assert_allclose([t["value"] for t in served], np.sort(column)[::-1], rtol=1e-5, atol=1e-6)


def _union_layout_reference(view_folder: Path, grown: Path, objective: str, budget: int):
    """A fresh sparse selection over the union with the run's network, as ``select`` makes it, from the grown folder's files."""
    rows = json.loads((grown / "rows.json").read_text())
    run = open_run(grown)
    low, high = run.label_scaling
    labels = (np.load(grown / "q1.npy") - low) / (high - low)
    layout = Layout([None] * len(rows["rows"]), np.load(grown / "q1.rows.npy"), np.load(grown / "q1.cols.npy"), rows["n_pool_rows"])
    network = load_network(view_folder / "network.safetensors")
    selection = dataclasses.replace(run.settings.selection, budget=budget)
    chosen, _ = select_on_graph(GraphPlan(True, run.graph["neighbours"], "exact"), network, layout, np.load(grown / "row_embeddings.npy"),
                                np.load(grown / "col_embeddings.npy"), labels, objective, selection)
    return chosen


@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_add_on_a_sparse_run_continues_the_greedy_on_the_unions_graph(tmp_path: Path, tiny_lm_dir: Path, demo_pool, objective: str) -> None:
    _, sparse = _twins(tmp_path, tiny_lm_dir, demo_pool, objective)
    run = open_run(sparse)
    new = demo_pool[52:64]
    targets = demo_pool[40:52] if objective == "flmi" else None
    grown = run.add(new, tmp_path / "grown", budget=14.0, pool=demo_pool[:40], targets=targets, progress=False)
    kept = run.scores[0]
    assert grown.indices[:8].tolist() == kept.tolist() and len(set(grown.indices.tolist())) == 14
    folder = tmp_path / "grown"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["selection_mode"], manifest["neighbours"], manifest["graph_builder"]) == ("sparse", 6, "exact")
    assert not (folder / "predicted.npy").exists()
    n_rows = 52 + (12 if objective == "flmi" else 0)
    assert all(np.load(path, mmap_mode="r").size < n_rows * 52 for path in folder.glob("*.npy"))  # no array of rows × union
    # the union's graph as a fresh sparse select over the union builds it (its values and its picks from scratch agree) ...
    network = load_network(sparse / "network.safetensors")
    n_pool_rows = json.loads((folder / "rows.json").read_text())["n_pool_rows"]
    embeddings = (np.load(folder / "row_embeddings.npy"), np.load(folder / "col_embeddings.npy"))
    graph, predict, exact = union_graph(run, network, embeddings, n_pool_rows, len(new), 6)
    fresh = _union_layout_reference(sparse, folder, objective, 14)
    cap = None
    if objective == "flmi":
        from nncift.selection.sparse import column_maxima

        cap = np.maximum(column_maxima(predict, n_pool_rows, len(embeddings[0]), 52, exact=exact), 0).astype(np.float32)
    np.testing.assert_array_equal(graph_values(graph, cap=cap), fresh.values)
    if objective == "fl":
        assert sparse_facility_location(graph, 14).indices.tolist() == fresh.indices.tolist()
    with (folder / "scores.csv").open() as handle:
        np.testing.assert_allclose([float(r["value"]) for r in csv.DictReader(handle)], fresh.values, rtol=1e-5)
    # ... and the added picks: the dense greedy continued from the kept picks on that graph (zeros outside it)
    reference = extend_greedy(graph.to_dense(), 6, kept, cap=cap, name=objective)
    assert grown.indices[8:].tolist() == reference.indices.tolist()
    assert grown.indices[8:].tolist() == extend_on_graph(graph, 6, kept, cap=cap).indices.tolist()
    # the grown run is a sparse run too: inspect, score and another --add work on it
    assert inspect_run(folder, candidate=51)["candidate"]["index"] == 51
    assert len(score_records(folder, demo_pool[:2], tmp_path / "s", progress=False).rows) == 2
    again = add_to_run(folder, demo_records(3, seed=5), tmp_path / "again", budget=15.0, pool=demo_pool[:40] + new, targets=targets, progress=False)
    assert again.indices[:14].tolist() == grown.indices.tolist() and len(again.indices) == 15


def test_add_with_a_graph_over_the_whole_union_picks_what_the_dense_add_picks(tmp_path: Path, tiny_lm_dir: Path, demo_pool) -> None:
    dense, sparse = _twins(tmp_path, tiny_lm_dir, demo_pool, "fl", neighbours=64)  # K = 64 ≥ the union: every entry kept
    new = demo_pool[52:64]
    from_sparse = add_to_run(sparse, new, tmp_path / "g_sparse", budget=14.0, pool=demo_pool[:40], progress=False)
    from_dense = add_to_run(dense, new, tmp_path / "g_dense", budget=14.0, pool=demo_pool[:40], progress=False)
    assert from_sparse.indices.tolist() == from_dense.indices.tolist()
    assert from_sparse.objective == pytest.approx(from_dense.objective, rel=1e-5)
    assert json.loads((tmp_path / "g_sparse" / "manifest.json").read_text())["neighbours"] == 52


def test_score_add_and_inspect_on_a_sparse_run_from_the_command_line(tmp_path: Path, tiny_lm_dir: Path, demo_pool,
                                                                     capsys: pytest.CaptureFixture) -> None:
    pool_file, new_file = tmp_path / "pool.jsonl", tmp_path / "new.jsonl"
    write_jsonl(pool_file, [r.raw for r in demo_pool[:40]])
    write_jsonl(new_file, [r.raw for r in demo_pool[40:48]])
    run = tmp_path / "run"
    assert main(["select", "--influence", "delift-se", "--embedder", f"lm:{tiny_lm_dir}", "--device", "cpu", "--data", str(pool_file),
                 "--fraction", "0.25", "--budget", "8", "--network.max-steps", "30", "--selection.neighbours", "6", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run), "--target", "3", "--candidate", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["graph"]["neighbours"] == 6 and len(report["target"]["top_candidates"]) == 10
    assert main(["score", "--run", str(run), "--data", str(new_file), "--out", str(tmp_path / "scored"), "--quiet"]) == 0
    assert len((tmp_path / "scored" / "scores.jsonl").read_text().splitlines()) == 8
    assert main(["select", "--run", str(run), "--add", str(new_file), "--budget", "10", "--out", str(tmp_path / "grown"), "--quiet"]) == 0
    assert "kept the run's 8 picks and added 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "grown" / "manifest.json").read_text())["selection_mode"] == "sparse"
    # where the union's graph runs may change (--executor.*): the same picks, the union's settings say which executor ran
    assert main(["select", "--run", str(run), "--add", str(new_file), "--budget", "10", "--executor.block-size", "3", "--out",
                 str(tmp_path / "grown-blocks"), "--quiet"]) == 0
    capsys.readouterr()
    blocks = json.loads((tmp_path / "grown-blocks" / "manifest.json").read_text())
    assert blocks["settings"]["executor"]["block_size"] == 3 and blocks["graph_executor"] == "local"
    assert (tmp_path / "grown-blocks" / "selected.jsonl").read_text() == (tmp_path / "grown" / "selected.jsonl").read_text()
    assert main(["inspect", str(run), "--target", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--target 40: the run has 40 pool records as rows" in err and len(err.splitlines()) == 1


def test_score_add_and_inspect_on_a_large_sparse_run_form_nothing_of_rows_by_pool(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """10,000 pool records (500 distinct texts, each embedded once): a (rows × pool) float32 array would be 390 MiB; the traced
    peak of each command stays below half of that (the graph is built in row blocks of 16M entries, 64 MiB)."""
    import tracemalloc

    distinct = demo_records(500, seed=2)
    pool, new = distinct * 20, demo_records(100, seed=9)
    settings = _settings(tiny_lm_dir, **{"sampling.fraction": 0.005, "selection.budget": 0.02, "selection.neighbours": 8})
    run_select(settings, tmp_path / "run", pool=pool)
    n_union = len(pool) + len(new)
    dense_bytes = 4 * n_union * n_union
    commands = {
        "inspect": lambda: inspect_run(tmp_path / "run", target=3, candidate=7),
        "score": lambda: score_records(tmp_path / "run", new, tmp_path / "scored", progress=False),
        "add": lambda: add_to_run(tmp_path / "run", new, tmp_path / "grown", pool=pool, progress=False),
    }
    for name, command in commands.items():
        tracemalloc.start()
        try:
            command()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < dense_bytes / 2, f"{name}: traced peak {peak / 2**20:.0f} MiB"
    grown = tmp_path / "grown"
    assert json.loads((grown / "manifest.json").read_text())["counts"]["selected"] == round(0.02 * n_union)
    assert all(np.load(path, mmap_mode="r").size < n_union * n_union // 100 for path in grown.glob("*.npy"))


def test_add_on_a_greedi_run_grows_by_parts_on_the_unions_graph(tmp_path: Path, tiny_lm_dir: Path, demo_pool) -> None:
    """A run that selected by GreeDi (``--selection.partitions 3``) grows by GreeDi: each part's greedy and the second round
    start from the kept picks' coverage; the added picks are :func:`extend_greedi`'s on the union's graph with the run's
    seed and parts, and the manifest says so."""
    from nncift.selection.distributed import extend_greedi

    run_select(_settings(tiny_lm_dir, **{"selection.neighbours": 6, "selection.partitions": 3}), tmp_path / "run", pool=demo_pool[:40])
    run = open_run(tmp_path / "run")
    new = demo_pool[52:64]
    grown = run.add(new, tmp_path / "grown", budget=14.0, pool=demo_pool[:40], progress=False)
    kept = run.scores[0]
    assert grown.indices[:8].tolist() == kept.tolist() and len(set(grown.indices.tolist())) == 14
    manifest = json.loads((tmp_path / "grown" / "manifest.json").read_text())
    assert manifest["greedi"]["partitions"] == 3 and manifest["greedi"]["executor"] == "local" and manifest["graph_executor"] == "local"
    folder = tmp_path / "grown"
    n_pool_rows = json.loads((folder / "rows.json").read_text())["n_pool_rows"]
    embeddings = (np.load(folder / "row_embeddings.npy"), np.load(folder / "col_embeddings.npy"))
    graph, _, _ = union_graph(run, load_network(tmp_path / "run" / "network.safetensors"), embeddings, n_pool_rows, len(new), 6)
    expected, info = extend_greedi(graph, 6, kept, 3, seed=3)
    assert grown.indices[8:].tolist() == expected.indices.tolist()
    assert manifest["greedi"]["part_objectives"] == info["part_objectives"]
    single = extend_on_graph(graph, 6, kept)
    assert expected.objective >= 0.98 * single.objective
