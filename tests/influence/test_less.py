"""LESS: aggregation, top-k direction, the exact matrix on a tiny model, caching, warm-up resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_data
from safetensors.torch import load_file

from nncift.data.records import Record, read_records
from nncift.gradients import collate, encode_example, layer_shape, parameter_matrix, trainable_layers
from nncift.gradients.batches import per_example_losses
from nncift.influence import InfluenceSpec, build_influence
from nncift.influence.less import Less, LessSettings, aggregate_scores
from nncift.influence.less_warmup import add_lora, checkpoint_weights, learning_rate, load_checkpoint, run_warmup
from nncift.selection import top_k
from nncift.settings.fields import SettingsError
from nncift.settings.stages import RunContext


def test_aggregation_is_max_over_subtasks_of_the_mean_over_targets():
    matrix = np.array([  # rows = 5 targets, cols = 3 candidates
        [0.9, 0.1, 0.0],
        [0.7, 0.3, 0.2],   # subtask "a": means 0.8, 0.2, 0.1
        [0.0, 0.6, 0.2],
        [0.2, 0.8, 0.0],   # subtask "b": means 0.1, 0.7, 0.1
        [0.1, 0.1, 0.5],   # no label: its own subtask
    ])
    scores = aggregate_scores(matrix, ["a", "a", "b", "b", None])
    np.testing.assert_allclose(scores, [0.8, 0.7, 0.5])
    np.testing.assert_allclose(aggregate_scores(matrix, [None] * 5), matrix.mean(axis=0))
    np.testing.assert_allclose(aggregate_scores(matrix, ["a", "a", "b", "b", None], max_block_elements=5), scores)
    with pytest.raises(ValueError, match="rows = targets"):
        aggregate_scores(matrix.T, ["a"] * 5)


def test_selection_keeps_the_highest_scores():
    targets = [Record("q", "", "a", task="t1"), Record("q", "", "a", task="t2")]
    matrix = np.array([[0.1, 0.9, -0.3, 0.5, 0.0], [0.2, -0.1, 0.0, 0.4, 0.95]])
    less = build_influence(InfluenceSpec("less", {}), progress=False)
    assert less.default_objective == "topk"
    chosen = top_k(less.candidate_scores(matrix, targets), 2)
    assert set(chosen.indices.tolist()) == {1, 4}  # the two highest, never the lowest (-0.3)


def test_settings_are_checked():
    with pytest.raises(SettingsError, match="^compressor: expected one of 'identity', 'projection'"):
        LessSettings(compressor="sketch")
    with pytest.raises(SettingsError, match="^adam_form: expected one of 'exact', 'reference', got 'approx'"):
        LessSettings(adam_form="approx")
    assert learning_rate(0, 10, 2, 1.0) == 0.5 and learning_rate(2, 10, 2, 1.0) == 1.0 and learning_rate(9, 10, 2, 1.0) == 0.125


def records(n, task_of=lambda i: "odd" if i % 2 else "even"):
    return [Record(f"Add {i} and {i + 1}.", "" if i % 3 else "Show the sum only.", f"{2 * i + 1}", task=task_of(i)) for i in range(n)]


def tiny_run(model_dir):
    """The run's context: the tiny model on the CPU (the model, device and seed are never LESS's own settings)."""
    return RunContext(model=str(model_dir), device="cpu")


def tiny_settings(**changes):
    base = dict(lora_r=4, lora_alpha=8, warmup_epochs=2, warmup_fraction=0.5,
                warmup_batch_size=2, gradient_batch_size=3, max_length=96, compressor="identity",
                warmup_learning_rate=5e-3, lora_targets="q_proj,v_proj")
    return LessSettings(**{**base, **changes})


def exact_less_matrix(settings, run, targets, candidates, checkpoints):
    """The LESS matrix from first principles: per-example autograd gradients, Adam by hand, cosines."""
    from nncift.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(run.model, device="cpu")
    model = add_lora(model, settings, seed=run.seed).eval()
    layers = trainable_layers(model)
    shapes = [layer_shape(n, m) for n, m in layers]

    def gradients(record_list):
        rows = []
        for record in record_list:
            model.zero_grad(set_to_none=True)
            per_example_losses(model, collate([encode_example(tokenizer, record, settings.max_length)], tokenizer.pad_token_id)).sum().backward()
            rows.append(torch.cat([parameter_matrix(s, m.weight.grad).flatten() for s, (_, m) in zip(shapes, layers)]))
        return torch.stack(rows).double()

    total = np.zeros((len(targets), len(candidates)))
    for weight, checkpoint in zip(checkpoint_weights(checkpoints), checkpoints):
        state = load_checkpoint(model, layers, checkpoint)
        m, v = torch.cat(state.exp_avg).double(), torch.cat(state.exp_avg_sq).double()
        g = gradients(candidates)
        t = state.step + 1
        train = ((0.9 * m + 0.1 * g) / (1 - 0.9 ** t)) / (((0.999 * v + 0.001 * g * g) / (1 - 0.999 ** t)).sqrt() + 1e-8)
        val = gradients(targets)
        train = train / train.norm(dim=1, keepdim=True)
        val = val / val.norm(dim=1, keepdim=True)
        total += weight * (val @ train.T).numpy()
    return total


def test_less_matrix_is_exact_cached_and_blockwise_invariant(tiny_lm_dir, tmp_path):
    settings, run = tiny_settings(), tiny_run(tiny_lm_dir)
    candidates, targets = records(8), records(11)[8:]
    less = Less(settings, run=run, progress=False)
    less.prepare(targets, candidates, tmp_path)
    checkpoints = less._checkpoints
    assert [c.epoch for c in checkpoints] == [1, 2] and checkpoints[-1].step == 4  # 4 warm-up records, 2 per step
    assert less.counters["warmup_forward_backward_passes"] == 8
    matrix = less.compute_block(np.arange(3), np.arange(8))
    assert matrix.shape == (3, 8) and np.all(np.abs(matrix) <= 1 + 1e-6)
    np.testing.assert_allclose(matrix, exact_less_matrix(settings, run, targets, candidates, checkpoints), rtol=2e-4, atol=2e-5)
    assert less.counters["backward_passes"] == 2 * (3 + 8)
    weights = checkpoint_weights(checkpoints)
    assert weights.sum() == pytest.approx(1.0) and weights[0] > weights[1]  # linear decay: epoch 1 had larger rates

    again = Less(settings, run=run, progress=False)  # same folder: warm-up and features are reused
    again.prepare(targets, candidates, tmp_path)
    block = again.compute_block(np.array([2, 0]), np.array([7, 1, 4]))
    assert again.counters["warmup_forward_backward_passes"] == 0 and again.counters["backward_passes"] == 0
    np.testing.assert_allclose(block, matrix[np.ix_([2, 0], [7, 1, 4])], rtol=1e-6)


def test_warmup_resumes_after_the_last_saved_epoch(tiny_lm_dir, tmp_path):
    from nncift.models.loading import load_causal_lm

    settings, run = tiny_settings(warmup_learning_rate=1e-2), tiny_run(tiny_lm_dir)
    data = records(6)

    def warm(folder):
        model, tokenizer = load_causal_lm(run.model, device="cpu")
        return run_warmup(add_lora(model, settings, seed=run.seed), tokenizer, data, settings, folder, run=run)

    full = warm(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "checkpoint-2.safetensors").unlink()  # killed during epoch 2
    resumed = warm(tmp_path / "b")
    assert [c.step for c in resumed] == [c.step for c in full] == [3, 6]
    first, second = load_file(full[-1].path), load_file(resumed[-1].path)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-5, atol=1e-7)
    assert any(k.startswith("exp_avg_sq/") and second[k].abs().sum() > 0 for k in second)


def test_compressed_less_is_deterministic_and_tracks_the_exact_matrix_on_conv1d(tiny_gpt2_dir, tmp_path):
    candidates, targets = records(5), records(8)[5:]

    def matrix(folder, **changes):
        less = Less(tiny_settings(lora_targets="c_attn", warmup_epochs=1, **changes), run=tiny_run(tiny_gpt2_dir), progress=False)
        less.prepare(targets, candidates, tmp_path / folder)
        return less.compute_block(np.arange(3), np.arange(5))

    reference = matrix("exact")
    for compressor in ("projection", "dropout", "dropout-structured"):
        first = matrix(f"{compressor}-1", compressor=compressor, dim=512)
        np.testing.assert_array_equal(first, matrix(f"{compressor}-2", compressor=compressor, dim=512))
        assert not np.array_equal(first, reference)
        assert np.corrcoef(first.ravel(), reference.ravel())[0, 1] > 0.5, compressor


@pytest.mark.e2e
def test_select_with_less_through_the_pipeline(tiny_lm_dir, tmp_path):
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import run_select

    pool, targets = records(24), records(30, task_of=lambda i: "sum" if i % 2 else "add")[24:]  # two target tasks
    settings = SelectSettings.build(influence="less", model=str(tiny_lm_dir), device="cpu", **{"sampling.fraction": 0.25,
            "sampling.min_sampled": 4, "selection.budget": 0.25, "network.epochs": 2, "network.max_steps": 20,
            "network.folds": 3}, quiet=True)
    options = dataclasses.asdict(tiny_settings(compressor="dropout-structured", dim=256))
    result = run_select(settings, tmp_path / "run", pool=pool, targets=targets, influence_options=options)
    assert result.manifest["objective"] == "topk" and len(result.indices) == 6
    assert result.manifest["sampling_design"] == "block"  # auto: a u × u block (BENCHMARKS.md: it beat all-targets on LESS)
    assert result.manifest["sampled_rows"] == 4 and result.manifest["sampled_cols"] == 6
    assert np.all(np.diff(result.scores) <= 0)  # highest first
    assert result.manifest["settings"]["selection"]["task_share"] == 0.1  # each task's best first: one each here
    assert 0 <= result.manifest["task_floor_added"] <= 2
    from nncift.steps.inspect import inspect_run

    assert inspect_run(tmp_path / "run")["run"]["task_floor_added"] == result.manifest["task_floor_added"]
    # select --add keeps the floor over the union's budget: the added picks are top_k_with_task_floor's on the union's matrix
    from nncift.influence.less import subtask_scores
    from nncift.selection import top_k_with_task_floor
    from nncift.steps.add import add_to_run

    new = [Record(f"Subtract {i} from {3 * i}.", "", f"{2 * i}", task="odd") for i in range(8)]
    grown = add_to_run(tmp_path / "run", new, tmp_path / "grown", budget=10.0, pool=pool, targets=targets, progress=False)
    assert grown.indices[:6].tolist() == result.indices.tolist() and len(grown.indices) == 10
    assert "task_floor_added" in grown.manifest and grown.manifest["settings"]["selection"]["task_share"] == 0.1
    parts = subtask_scores(np.load(tmp_path / "grown" / "predicted.npy"), [t.task for t in targets])
    expected = top_k_with_task_floor(parts, 10, 0.1, kept=result.indices)
    assert grown.indices[6:].tolist() == expected.indices.tolist() and grown.manifest["task_floor_added"] == expected.floor_added
    features = list((tmp_path / "run" / "less" / "features").glob("candidates-checkpoint-*.done.jsonl"))
    assert len(features) == 2  # one per checkpoint, holding only the sampled candidates
    stored = sorted(int(r) for line in features[0].read_text().splitlines() for r in json.loads(line)["rows"])
    assert len(stored) == 6


@pytest.mark.e2e
def test_cli_select_less_on_real_data_with_smollm(tmp_path, smollm_dir):
    from nncift.cli.commands import main

    pool_file = shared_data("p3/ag_news_classify.jsonl")
    target_file = shared_data("p3/ag_news_classify_question_first.jsonl")
    pool, _ = read_records(pool_file)
    targets, _ = read_records(target_file)
    small_pool, small_targets = tmp_path / "pool.jsonl", tmp_path / "targets.jsonl"
    small_pool.write_text("".join(json.dumps(r.raw) + "\n" for r in pool[:20]))
    small_targets.write_text("".join(json.dumps(r.raw) + "\n" for r in targets[100:104]))
    code = main(["select", "--influence", "less", "--data", str(small_pool), "--targets", str(small_targets),
                 "--out", str(tmp_path / "run"), "--less.compressor", "dropout-structured", "--less.dim", "1024",
                 "--less.lora-r", "4", "--less.warmup-epochs", "1", "--less.warmup-fraction", "0.1", "--less.max-length", "128",
                 "--fraction", "0.25", "--sampling.min-sampled", "4", "--budget", "5", "--network.max-steps", "20", "--network.folds", "3",
                 "--device", "cpu", "--quiet"])
    assert code == 0
    selected = (tmp_path / "run" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == 5
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"]["targets"] == 4 and manifest["objective"] == "topk"
