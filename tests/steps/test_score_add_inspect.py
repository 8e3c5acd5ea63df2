"""Valuing new data with a finished run (score), growing its subset (select --add), looking inside it
(inspect), the files a trainer loads, and re-selection without recomputing the influence block."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from nncift import SelectSettings
from nncift.cli.commands import main
from nncift.data.records import read_records, write_jsonl
from nncift.files.errors import SettingsMismatch
from nncift.models.embeddings import embed_records
from nncift.network.files import load_network
from nncift.network.paper import predict_pairwise, predict_pointwise
from nncift.selection import fl_conditional_gain
from nncift.selection.subset_quality import ObjectiveSpec, objective_on
from nncift.steps.add import add_to_run
from nncift.steps.inspect import inspect_run, to_markdown
from nncift.steps.score import score_records
from nncift.steps.select import run_select


def _settings(**overrides) -> SelectSettings:
    base = dict(influence="delift-se", **{"sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 0.25, "network.max_steps": 60,
            "network.folds": 3}, quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


@pytest.fixture()
def files(tmp_path: Path, demo_pool) -> dict[str, Path]:
    """The demo pool as files: 48 pool records (extra fields, their own field order), 16 new ones, 12 targets."""
    raw = [{"id": f"r{i}", "output": r.output, "instruction": r.instruction, "input": r.input, "task": r.task, "meta": {"n": i}}
           for i, r in enumerate(demo_pool)]
    paths = {"pool": tmp_path / "pool.jsonl", "new": tmp_path / "new.jsonl", "targets": tmp_path / "targets.jsonl"}
    write_jsonl(paths["pool"], raw[:48])
    write_jsonl(paths["new"], raw[48:64])
    write_jsonl(paths["targets"], raw[36:48])
    return paths


@pytest.mark.e2e
def test_subset_and_scores_files_hold_the_chosen_records_as_read(tmp_path: Path, files) -> None:
    result = run_select(_settings(data=(str(files["pool"]),)), tmp_path / "run")
    originals = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    subset = datasets.load_dataset("json", data_files=str(tmp_path / "run" / "subset.jsonl"), split="train")
    assert len(subset) == len(result.indices) == 12
    for row, index in zip(subset, result.indices):
        assert row == originals[index]  # field by field, nested fields included
    lines = (tmp_path / "run" / "subset.jsonl").read_text().splitlines()
    assert [list(json.loads(line)) for line in lines] == [list(originals[i]) for i in result.indices]  # field order kept
    with (tmp_path / "run" / "scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 48 and [int(r["index"]) for r in table] == list(range(48))
    assert all(r["source_file"].endswith("pool.jsonl") and int(r["line"]) == i + 1 for i, r in enumerate(table))
    ranked = sorted((r for r in table if r["picked"] == "1"), key=lambda r: int(r["rank"]))
    assert [int(r["index"]) for r in ranked] == result.indices.tolist()
    np.testing.assert_allclose([float(r["gain"]) for r in ranked], result.scores, rtol=1e-5)
    q1_cols = set(np.load(tmp_path / "run" / "q1.cols.npy").tolist())
    assert {int(r["index"]) for r in table if r["influence"] == "partly exact"} == q1_cols
    assert {r["influence"] for r in table} == {"partly exact", "predicted"}
    # value = the singleton value f({j}) on the selection matrix; the first pick has the largest
    matrix = np.maximum(np.load(tmp_path / "run" / "predicted.npy"), 0)
    np.testing.assert_allclose([float(r["value"]) for r in table], matrix.sum(axis=0), rtol=1e-4)
    assert float(ranked[0]["gain"]) == pytest.approx(max(float(r["value"]) for r in table), rel=1e-4)


def _copy_model(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "lm"
    shutil.copytree(source, target)
    return target


@pytest.mark.e2e
def test_score_values_new_records_without_the_language_model(tmp_path: Path, files, tiny_lm_dir) -> None:
    model = _copy_model(tiny_lm_dir, tmp_path)
    settings = SelectSettings.build(influence="delift", model=str(model), data=(str(files["pool"]),), targets=(str(files["targets"]),),
                              **{"sampling.fraction": 0.25, "sampling.min_sampled": 6, "selection.budget": 8, "sampling.blocks": 1}, device="cpu",
                                      quiet=True, **{"network.max_steps": 40, "network.folds": 3})
    run_select(settings, tmp_path / "run")
    shutil.rmtree(model)  # the LM is gone: scoring must not need it
    new, report = read_records(files["new"])
    result = score_records(tmp_path / "run", new, tmp_path / "scores", reports=[report], top_targets=3, progress=False)
    manifest = result.manifest
    assert manifest["cost"]["counters"]["language_model_loads"] == 0 and manifest["cost"]["influence_evaluations_made"] == 0
    assert manifest["run"]["objective"] == "fl" and manifest["counts"]["records"] == 16 and len(manifest["network_sha256"]) == 64
    # the values are the run's network on the stored target embeddings and the new records' embeddings
    network = load_network(tmp_path / "run" / "network.safetensors")
    reading = json.loads((tmp_path / "run" / "manifest.json").read_text())["network_input"]
    assert reading == {"network_input": "text+response", "response_weight": 0.2}  # DELIFT's own choice (auto): score reads records alike
    block = predict_pairwise(network, np.load(tmp_path / "run" / "row_embeddings.npy"), embed_records(new, progress=False, **reading))
    np.testing.assert_allclose([row["value"] for row in result.rows], np.maximum(block, 0).sum(axis=0), rtol=1e-4)
    for j, row in enumerate(result.rows):
        assert [t["row"] for t in row["top_targets"]] == np.argsort(-block[:, j], kind="stable")[:3].tolist()
        assert all(t["kind"] == "target" for t in row["top_targets"]) and 0.0 <= row["gain"] <= row["value"] + 1e-6
    written = [json.loads(line) for line in (tmp_path / "scores" / "scores.jsonl").read_text().splitlines()]
    assert [w["value"] for w in written] == [r["value"] for r in result.rows]
    with (tmp_path / "scores" / "scores.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 16


@pytest.mark.e2e
def test_score_and_add_for_a_pointwise_run(tmp_path: Path, files, tiny_gpt2_dir) -> None:
    model = _copy_model(tiny_gpt2_dir, tmp_path)
    settings = SelectSettings.build(influence="selectit", model=str(model), data=(str(files["pool"]),), **{"sampling.fraction": 0.25,
            "sampling.min_sampled": 6, "selection.budget": 6.0}, device="cpu", quiet=True, **{"network.max_steps": 40, "network.folds": 3})
    run = run_select(settings, tmp_path / "run", influence_options={"max_length": 0, "n_instructions": 2})
    shutil.rmtree(model)
    new, _ = read_records(files["new"])
    result = score_records(tmp_path / "run", new, tmp_path / "scores", progress=False)
    network = load_network(tmp_path / "run" / "network.safetensors")
    expected = predict_pointwise(network, embed_records(new, progress=False))
    np.testing.assert_allclose([row["value"] for row in result.rows], expected, rtol=1e-5)
    assert result.manifest["cost"]["counters"]["language_model_loads"] == 0 and "top_targets" not in result.rows[0]
    grown = add_to_run(tmp_path / "run", new, tmp_path / "grown", budget=10.0, progress=False)
    assert grown.indices[:6].tolist() == run.indices.tolist() and len(grown.indices) == 10
    union_scores = np.concatenate([np.load(tmp_path / "run" / "predicted_scores.npy"), expected])
    rest = np.setdiff1d(np.arange(64), run.indices)
    best = rest[np.argsort(-union_scores[rest], kind="stable")][:4]
    assert grown.indices[6:].tolist() == best.tolist()


@pytest.mark.e2e
def test_add_keeps_the_old_picks_and_continues_the_greedy_on_the_union(tmp_path: Path, files) -> None:
    run = run_select(_settings(data=(str(files["pool"]),), **{"selection.budget": 0.25}), tmp_path / "run")
    new, report = read_records(files["new"])
    grown = add_to_run(tmp_path / "run", new, tmp_path / "grown", reports=[report], new_paths=[str(files["new"])], progress=False)
    k = int(np.floor(0.25 * 64 + 0.5))
    assert len(grown.indices) == k == 16 and grown.indices[:12].tolist() == run.indices.tolist()
    manifest = grown.manifest
    assert manifest["picks"]["kept"] == run.indices.tolist() and len(manifest["picks"]["added"]) == 4
    assert manifest["counts"]["added_from_new_records"] == sum(i >= 48 for i in manifest["picks"]["added"])
    assert manifest["cost"]["influence_evaluations_made"] == 0
    # reference: the union's matrix built here (the run's block as stored, the network for the rest) and
    # a fresh greedy on it started from the old picks (FLCG with the old picks as the existing set, ν = 1)
    network = load_network(tmp_path / "run" / "network.safetensors")
    embeddings = np.concatenate([np.load(tmp_path / "run" / "col_embeddings.npy"), embed_records(new, progress=False)])
    union = predict_pairwise(network, embeddings, embeddings, self_cols=np.arange(64))
    union[:48, :48] = np.load(tmp_path / "run" / "predicted.npy")
    np.testing.assert_allclose(np.load(tmp_path / "grown" / "predicted.npy"), union, rtol=1e-5, atol=1e-6)
    clipped = np.maximum(union, 0)
    fresh = fl_conditional_gain(clipped, clipped[:, run.indices], 4, nu=1.0)
    positive = fresh.gains > 0
    assert grown.indices[12:][positive].tolist() == fresh.indices[positive].tolist()
    assert grown.objective == pytest.approx(objective_on(union, grown.indices, ObjectiveSpec("fl", 16)), rel=1e-5)
    # the grown folder is a complete run of the union: it can be inspected, scored and grown again
    assert [json.loads(line)["id"] for line in (tmp_path / "grown" / "subset.jsonl").read_text().splitlines()] == \
        [f"r{i}" for i in grown.indices]
    assert inspect_run(tmp_path / "grown")["run"]["pool"] == 64
    assert manifest["settings"]["data"] == [str(files["pool"]), str(files["new"])]
    with pytest.raises(ValueError, match="fewer than the run's 16 picks"):
        add_to_run(tmp_path / "grown", new[:2], tmp_path / "again", budget=10.0, progress=False)


@pytest.mark.e2e
def test_score_and_add_read_new_records_as_the_run_s_network_read_its_own(tmp_path: Path, files) -> None:
    """A network trained on ``text+response`` inputs (response weight 0.5, not the default): score and --add embed new records
    the same way (two halves, the same weight), and DELIFT-SE's prior is no longer its exact function on them, so the network
    is trained."""
    run = run_select(_settings(data=(str(files["pool"]),), **{"network.input": "text+response", "network.response_weight": 0.5}), tmp_path / "run")
    assert run.manifest["settings"]["network"]["input"] == "text+response"
    assert run.manifest["settings"]["network"]["response_weight"] == 0.5
    assert "nothing was trained" not in run.manifest["network_training"]["note"]
    col_embeddings = np.load(tmp_path / "run" / "col_embeddings.npy")
    new, _ = read_records(files["new"])
    both = embed_records(new, progress=False, network_input="text+response", response_weight=0.5)
    assert col_embeddings.shape[1] == both.shape[1] == 2 * embed_records(new[:1], progress=False).shape[1]
    network = load_network(tmp_path / "run" / "network.safetensors")
    scored = score_records(tmp_path / "run", new, tmp_path / "scores", top_targets=0, progress=False)
    block = predict_pairwise(network, np.load(tmp_path / "run" / "row_embeddings.npy"), both)
    np.testing.assert_allclose([row["value"] for row in scored.rows], np.maximum(block, 0).sum(axis=0), rtol=1e-4)
    grown = add_to_run(tmp_path / "run", new, tmp_path / "grown", progress=False)
    assert grown.indices[: len(run.indices)].tolist() == run.indices.tolist()
    np.testing.assert_allclose(np.load(tmp_path / "grown" / "col_embeddings.npy"), np.concatenate([col_embeddings, both]), atol=1e-6)


@pytest.mark.e2e
def test_add_with_targets_and_flmi_keeps_picks_and_moves_the_targets_below_the_new_rows(tmp_path: Path, files) -> None:
    run = run_select(_settings(data=(str(files["pool"]),), targets=(str(files["targets"]),), **{"selection.objective": "flmi",
            "selection.budget": 8.0}), tmp_path / "run")
    new, _ = read_records(files["new"])
    grown = add_to_run(tmp_path / "run", new, tmp_path / "grown", budget=12.0, progress=False)
    assert grown.indices[:8].tolist() == run.indices.tolist() and len(set(grown.indices.tolist())) == 12
    old, union = np.load(tmp_path / "run" / "predicted.npy"), np.load(tmp_path / "grown" / "predicted.npy")
    assert union.shape == (48 + 16 + 12, 64)
    np.testing.assert_array_equal(union[:48, :48], old[:48])  # old pool rows kept
    np.testing.assert_array_equal(union[64:, :48], old[48:])  # target rows moved below the new pool rows
    rows = json.loads((tmp_path / "grown" / "rows.json").read_text())
    assert rows["n_pool_rows"] == 64 and [r["kind"] for r in rows["rows"]].count("target") == 12


@pytest.mark.e2e
def test_inspect_marks_exact_and_predicted_values(tmp_path: Path, files, capsys) -> None:
    run_select(_settings(data=(str(files["pool"]),), targets=(str(files["targets"]),), **{"selection.budget": 8.0}), tmp_path / "run")
    folder = tmp_path / "run"
    q1, q_rows, q_cols = np.load(folder / "q1.npy"), np.load(folder / "q1.rows.npy"), np.load(folder / "q1.cols.npy")
    target = int(q_rows[0])
    report = inspect_run(folder, target=target, candidate=int(q_cols[0]), top=48)
    matrix = np.load(folder / "predicted.npy")
    listed = report["target"]["top_candidates"]
    assert [c["index"] for c in listed] == np.argsort(-matrix[target], kind="stable").tolist()
    exact = {int(c) for c, v in zip(q_cols, q1[0]) if np.isfinite(v)}
    assert {c["index"] for c in listed if c["origin"] == "exact"} == exact and len(exact) >= 6
    low, high = report_scale(folder)
    assert listed[0]["raw"] == pytest.approx(listed[0]["value"] * (high - low) + low)
    assert sum(report["subset_by"]["counts"].values()) == 8 and report["subset_by"]["key"] == "task"
    served = report["candidate"]["top_targets"]
    assert len(served) == 12 and all(t["kind"] == "target" for t in served)
    assert "## Most influential pool records for target" in to_markdown(report)
    assert main(["inspect", str(folder), "--target", "99"]) == 2
    assert "the run has 12 targets" in capsys.readouterr().err
    assert main(["inspect", str(folder), "--json", "--top", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["most_valuable"]) == 3


def report_scale(folder: Path) -> tuple[float, float]:
    scaling = json.loads((folder / "manifest.json").read_text())["label_scaling"]
    return scaling["low"], scaling["high"]


@pytest.mark.e2e
def test_reselect_reuses_the_influence_block_and_matches_a_fresh_run(tmp_path: Path, files) -> None:
    settings = _settings(data=(str(files["pool"]),))
    run_select(settings, tmp_path / "run")
    done = (tmp_path / "run" / "q1.done.jsonl").read_text()
    q1_mtime = (tmp_path / "run" / "q1.npy").stat().st_mtime_ns
    wider = settings.updated(**{"selection.budget": 0.5})
    again = run_select(wider, tmp_path / "run")
    fresh = run_select(wider, tmp_path / "fresh")
    assert again.indices.tolist() == fresh.indices.tolist() and len(again.indices) == 24
    assert (tmp_path / "run" / "q1.done.jsonl").read_text() == done and (tmp_path / "run" / "q1.npy").stat().st_mtime_ns == q1_mtime
    assert again.manifest["reselected"]["changed"] == {"selection.budget": {"stored": 0.25, "now": 0.5}}
    assert "reused" in again.manifest["network_training"]  # same network settings: not retrained
    other_network = run_select(wider.updated(**{"network.architecture": "paper", "network.epochs": 2}), tmp_path / "run")
    assert "reused" not in other_network.manifest["network_training"] and other_network.manifest["network_training"]["architecture"] == "paper"
    assert (tmp_path / "run" / "q1.done.jsonl").read_text() == done
    assert run_select(wider, tmp_path / "fresh").manifest == fresh.manifest  # finished with the same settings: returned as it is
    for changed in ({"sampling.fraction": 0.5}, {"seed": 4}, {"influence": "delift"}):
        with pytest.raises(SettingsMismatch, match=next(iter(changed)).rpartition(".")[2]):
            run_select(wider.updated(**changed), tmp_path / "run")
    targeted = settings.updated(targets=(str(files["targets"]),))
    run_select(targeted, tmp_path / "targeted")
    with pytest.raises(SettingsMismatch, match="matrix_rows: stored 'targets', now 'pool\\+targets'"):
        run_select(targeted.updated(**{"selection.objective": "flmi"}), tmp_path / "targeted")
    assert run_select(targeted.updated(**{"selection.objective": "topk"}), tmp_path / "targeted").manifest["objective"] == "topk"


@pytest.mark.e2e
def test_score_and_add_refuse_bad_input_with_one_line(tmp_path: Path, files, capsys) -> None:
    run_select(_settings(data=(str(files["pool"]),)), tmp_path / "run")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    assert main(["score", "--run", str(tmp_path / "run"), "--data", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["score", "--run", str(tmp_path / "nothing"), "--data", str(files["new"]), "--out", str(tmp_path / "s")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["select", "--run", str(tmp_path / "run"), "--add", str(files["new"]), "--fraction", "0.5", "--out", str(tmp_path / "g")]) == 2
    assert "only --selection.budget (--budget), --executor.* and --quiet apply (got --fraction)" in capsys.readouterr().err
    assert main(["select", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "g")]) == 2
    assert "--run and --add go together" in capsys.readouterr().err
    assert main(["select", "--run", str(tmp_path / "run"), "--add", str(files["new"]), "--budget", "5", "--selection.budget", "6",
                 "--out", str(tmp_path / "g")]) == 2
    assert "--budget and --selection.budget (one setting) are given twice (5.0 and 6.0)" in capsys.readouterr().err
    assert main(["select", "--run", str(tmp_path / "run"), "--add", str(files["new"]), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    assert "kept the run's 12 picks and added 4" in capsys.readouterr().out


@pytest.mark.e2e
def test_score_add_and_inspect_from_the_command_line_on_real_data(tmp_path: Path, capsys) -> None:
    """The real Alpaca file: ``run_select`` on it (formerly test_select.py::test_real_alpaca_file: 300 records, u = 0.05), then
    the command line's select, score, select --add and inspect, on the same first 120 records (formerly 240): embedding real
    records is most of this test's time (~90 ms each here), and they are embedded once. The fraction u = 0.1 keeps u·n above
    ``min_sampled`` (8), so the count of evaluations still checks that u is applied."""
    from conftest import shared_data

    pool, report = read_records(shared_data("alpaca_en_demo.json"))
    settings = _settings(**{"sampling.fraction": 0.1, "selection.budget": 0.3, "network.epochs": 5})  # test_select.py's settings
    result = run_select(settings, tmp_path / "library", pool=pool[:120], reports=[report])
    assert len(result.indices) == 36  # 0.3 of 120
    assert result.manifest["cost"]["influence_evaluations_made"] == 12 * 12  # u = 0.1 of 120 targets and candidates

    alpaca = tmp_path / "alpaca.json"  # the first 120 real records: embedding all 999 dominated the suite's time
    alpaca.write_text(json.dumps(json.loads(shared_data("alpaca_en_demo.json").read_text())[:120]))
    code = json.loads(shared_data("code_alpaca_2k.json").read_text())[:40]
    new = tmp_path / "code.json"
    new.write_text(json.dumps(code))
    run, scores, grown = tmp_path / "run", tmp_path / "scores", tmp_path / "grown"
    assert main(["select", "--data", str(alpaca), "--budget", "50", "--out", str(run), "--quiet"]) == 0
    assert main(["score", "--run", str(run), "--data", str(new), "--out", str(scores), "--quiet"]) == 0
    assert "0 language-model loads, 0 influence evaluations" in capsys.readouterr().out
    rows = [json.loads(line) for line in (scores / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["top_targets"]) == 5 and r["top_targets"][0]["kind"] == "pool" for r in rows)
    assert main(["select", "--run", str(run), "--add", str(new), "--budget", "60", "--out", str(grown), "--quiet"]) == 0
    manifest = json.loads((grown / "manifest.json").read_text())
    n_old = json.loads((run / "manifest.json").read_text())["counts"]["pool"]
    assert n_old == len(json.loads(alpaca.read_text()))
    assert manifest["counts"]["pool"] == n_old + 40 and len(manifest["picks"]["kept"]) == 50 and len(manifest["picks"]["added"]) == 10
    subset = [json.loads(line) for line in (grown / "subset.jsonl").read_text().splitlines()]
    originals = json.loads(alpaca.read_text()) + code
    assert subset == [originals[i] for i in manifest["picks"]["kept"] + manifest["picks"]["added"]]
    capsys.readouterr()
    assert main(["inspect", str(grown), "--candidate", str(n_old), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["pool"] == n_old + 40 and report["candidate"]["top_targets"][0]["origin"] == "predicted"


@pytest.mark.e2e
def test_run_select_takes_dicts_and_a_datasets_dataset(tmp_path: Path, files) -> None:
    rows = [json.loads(line) for line in files["pool"].read_text().splitlines()]
    from_records = run_select(_settings(), tmp_path / "records", pool=read_records(files["pool"])[0])
    from_dicts = run_select(_settings(), tmp_path / "dicts", pool=rows + [{"instruction": "x", "output": ""}])
    from_dataset = run_select(_settings(), tmp_path / "dataset", pool=datasets.Dataset.from_list(rows))
    assert from_dicts.indices.tolist() == from_records.indices.tolist() == from_dataset.indices.tolist()
    assert from_dicts.manifest["counts"]["skipped"] == {"empty output": 1}
    assert json.loads((tmp_path / "dicts" / "subset.jsonl").read_text().splitlines()[0]) == rows[from_dicts.indices[0]]
    with pytest.raises(ValueError, match="<pool>:2: field 'instruction'"):
        run_select(_settings(), tmp_path / "bad", pool=[rows[0], {"instruction": 5, "output": "y"}])


def test_top_targets_keep_the_sort_order_and_its_tie_rule() -> None:
    """The top rows per column come from a partition, not a full sort: they equal the stable argsort, ties at the k-th value included."""
    from nncift.steps.score import _top_rows

    rng = np.random.default_rng(4)
    for shape, k in (((7, 5), 3), ((60, 40), 5), ((3, 9), 5), ((20, 30), 1)):
        block = rng.integers(0, 4, size=shape).astype(np.float32)  # few distinct values: many ties
        assert _top_rows(block, k).tolist() == np.argsort(-block, axis=0, kind="stable")[: min(k, shape[0])].tolist()
    assert _top_rows(np.zeros((0, 3), np.float32), 5).shape == (0, 3)
