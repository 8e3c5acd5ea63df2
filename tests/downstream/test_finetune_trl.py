"""Fine-tuning on TRL's SFTTrainer: its loss is ours, resume after a kill gives the uninterrupted adapter without reading
a pickle, accumulation and packing change no result, bad settings are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nncift.data.records import Record
from nncift.downstream.finetune import FinetuneSettings, collate, encode_example, finetune

RECORDS = [
    Record("Classify the sentiment of this review.", "A wonderful, moving film.", "positive"),
    Record("Name the capital of France.", "", "Paris is the capital of France."),
    Record("Add the numbers.", "2 + 3", "5"),
    Record("Reverse the word.", "stressed", "desserts"),
    Record("Translate to French.", "Good morning", "Bonjour"),
    Record("Give the opposite.", "hot", "cold"),
]


def _adapter(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _settings(tiny_lm_dir: Path, **changes) -> FinetuneSettings:
    values = dict(model=str(tiny_lm_dir), learning_rate=1e-2, epochs=2, batch_size=2, seed=4, quiet=True, lora_dropout=0.1)
    return FinetuneSettings(**{**values, **changes})


class Killed(RuntimeError):
    """Stands for a kill: raised by :class:`KillAfter` in the middle of an epoch."""


def _kill_after(step: int):
    from transformers import TrainerCallback

    class KillAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed(f"killed after step {step}")

    return KillAfter()


def test_trl_loss_is_the_response_loss(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """The trainer's loss on the CPU (output head on labelled positions) equals TRL's own fused-head loss."""
    from transformers import AutoTokenizer

    from nncift.downstream import sft

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in RECORDS]
    settings = _settings(tiny_lm_dir, lora_dropout=0.0)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    config = sft.sft_config(settings, tmp_path / "checkpoints", device="cpu", precision="fp32")
    trainer = sft.make_trainer(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), tokenizer, dataset, config, sft.lora_config(settings),
                               quiet=True, response_head=True, curve=tmp_path / "loss.jsonl")
    batch = collate(examples, tokenizer.pad_token_id)
    trainer.model.train()
    ours = trainer.compute_loss(trainer.model, dict(batch))
    trainer.response_head = False
    theirs = trainer.compute_loss(trainer.model, dict(batch))
    full = torch.nn.functional.cross_entropy(trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].flatten(0, 1),
                                             batch["labels"][:, 1:].flatten())  # mean over labelled tokens (-100 ignored)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5) == pytest.approx(full.item(), rel=1e-5)


def test_kill_mid_epoch_and_resume_gives_the_uninterrupted_adapter_without_pickles(tiny_lm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    settings = _settings(tiny_lm_dir, checkpoint_steps=2)  # 3 steps per epoch: checkpoints at 2 (mid-epoch 1) and 4 (mid-epoch 2)
    whole = finetune(RECORDS, settings, tmp_path / "whole")
    with pytest.raises(Killed):
        finetune(RECORDS, settings, tmp_path / "killed", callbacks=[_kill_after(5)])
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-4"
    written = sorted(p.name for p in checkpoint.iterdir())
    assert {"adapter_model.safetensors", "optimizer.safetensors", "rng_state.safetensors", "scheduler.json", "trainer_state.json"} <= set(written)
    assert not [name for name in written if name.endswith((".bin", ".pt", ".pth", ".pkl"))], written  # nothing pickled to load

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load called on resume: {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)  # the resume reads no pickle (safetensors and JSON only)
    resumed = finetune(RECORDS, settings, tmp_path / "killed")
    assert resumed.summary["resumed_from"] == "checkpoint-4"
    assert len(resumed.losses) == len(whole.losses) == 6
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-6)
    first, second = _adapter(tmp_path / "whole"), _adapter(tmp_path / "killed")
    assert first.keys() == second.keys()
    for name in first:  # same data order, dropout masks and optimiser state: equal to float32 rounding
        np.testing.assert_allclose(second[name], first[name], rtol=0, atol=1e-6)
    curve = [json.loads(line) for line in (tmp_path / "killed" / "loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == list(range(1, 7))  # the steps after the checkpoint are not listed twice
    assert (tmp_path / "killed" / "loss.png").stat().st_size > 0
    assert not (tmp_path / "killed" / "checkpoints").exists()


def test_gradient_accumulation_and_checkpointing_give_the_same_adapter(tiny_lm_dir: Path, tmp_path: Path) -> None:
    plain = _settings(tiny_lm_dir, lora_dropout=0.0, batch_size=4, epochs=1, checkpoint_steps=0)
    base = _adapter(finetune(RECORDS, plain, tmp_path / "plain").adapter_dir)
    other = FinetuneSettings(**{**plain.__dict__, "gradient_accumulation": 2, "gradient_checkpointing": True})
    split = _adapter(finetune(RECORDS, other, tmp_path / "split").adapter_dir)
    changed = max(float(np.abs(base[k]).max()) for k in base if "lora_B" in k)
    assert changed > 1e-4  # training moved the adapter, so the comparison below means something
    for name in base:
        np.testing.assert_allclose(split[name], base[name], rtol=0, atol=1e-5)


def test_packed_rows_keep_records_apart(tiny_lm_dir: Path) -> None:
    """A packed (padding-free) row gives each record's loss as if it were alone: no attention across records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from nncift.downstream.sft import labelled_loss_sum

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in (encode_example(tokenizer, r, 256, chat=True) for r in RECORDS)]
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    with torch.no_grad():
        together, count = labelled_loss_sum(model, packed)
        alone = [labelled_loss_sum(model, DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)([e])) for e in examples]
    assert int(count) == sum(int(c) for _, c in alone)
    assert together.item() == pytest.approx(sum(t.item() for t, _ in alone), rel=1e-4)


def test_packing_trains(tiny_lm_dir: Path, tmp_path: Path) -> None:
    result = finetune(RECORDS * 2, _settings(tiny_lm_dir, packing=True, max_length=128, epochs=4, learning_rate=3e-2), tmp_path / "packed")
    steps_per_epoch = len(result.losses) // 4
    assert len(result.losses) == 4 * steps_per_epoch and steps_per_epoch < 6  # unpacked: 12 records / batch 2 = 6 steps
    assert np.mean(result.losses[-steps_per_epoch:]) < np.mean(result.losses[:steps_per_epoch])


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "--epochs: expected a value ≥ 1, got -1"),
    (["--learning-rate", "abc"], "--learning-rate: invalid float value: 'abc'"),
    (["--learning-rate", "nan"], "--learning-rate: expected a number, got nan"),
    (["--device", "tpu"], "--device: expected one of 'auto', 'cpu', 'cuda'"),
    (["--precision", "fp8"], "--precision: expected one of 'auto', 'fp32', 'bf16', 'fp16'"),
    (["--batch-size", "8", "--gradient-accumulation", "3"], "--gradient-accumulation: batch_size 8 is not a multiple of 3"),
    (["--device", "cpu", "--precision", "bf16"], "bf16 mixed precision needs a CUDA device, and this run is on the cpu"),
])
def test_bad_settings_are_refused_before_any_work(tiny_lm_dir: Path, tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    from nncift.cli.commands import main

    missing = tmp_path / "no-such-data.jsonl"  # never read: the settings are refused first
    try:
        code = main(["finetune", "--data", str(missing), "--model", str(tiny_lm_dir), "--out", str(tmp_path / "out"), *flags])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2 and message in error, error
    assert "Traceback" not in error and not (tmp_path / "out").exists()


def test_bad_settings_in_yaml_name_the_file(tiny_lm_dir: Path, tmp_path: Path, capsys) -> None:
    from nncift.cli.commands import main

    config = tmp_path / "ft.yaml"
    config.write_text("learning_rate: fast\n")
    code = main(["finetune", "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "out"), "--config", str(config)])
    assert code == 2 and f"{config}: learning_rate: expected a number, got 'fast'" in capsys.readouterr().err


def test_progress_bar_and_finished_folder_returned_as_it_is(tiny_lm_dir: Path, tmp_path: Path, capsys) -> None:
    settings = _settings(tiny_lm_dir, epochs=1, quiet=False)
    first = finetune(RECORDS, settings, tmp_path / "a")
    bar = capsys.readouterr().err
    assert "fine-tuning" in bar and "3/3" in bar and "loss=" in bar  # tqdm over the 3 steps, with the loss
    finetune(RECORDS, _settings(tiny_lm_dir, epochs=1), tmp_path / "quiet")
    assert "fine-tuning" not in capsys.readouterr().err
    stamp = (tmp_path / "a" / "adapter_model.safetensors").stat().st_mtime_ns
    again = finetune(RECORDS, settings, tmp_path / "a")
    assert again.losses == first.summary["losses"] and (tmp_path / "a" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    summary = json.loads((tmp_path / "a" / "finetune.json").read_text())
    assert summary["trainer"] == "trl.SFTTrainer" and summary["environment"]["packages"]["trl"] != "not installed"
    assert summary["precision"] == "fp32" and summary["loss_head"] == "labelled positions only"


def test_mixed_precision_on_the_cpu_is_refused_before_the_folder_is_made(tiny_lm_dir: Path, tmp_path: Path) -> None:
    from nncift.settings.fields import SettingsError

    for precision in ("bf16", "fp16"):
        with pytest.raises(SettingsError, match=f"precision: {precision} mixed precision needs a CUDA device"):
            finetune(RECORDS, _settings(tiny_lm_dir, device="cpu", precision=precision), tmp_path / precision)
        assert not (tmp_path / precision).exists()
    with pytest.raises(SettingsError, match="gradient_accumulation: batch_size 6 is not a multiple of 4"):
        _settings(tiny_lm_dir, batch_size=6, gradient_accumulation=4)


@pytest.mark.e2e
def test_sigkill_mid_run_then_the_same_command_resumes_to_the_uninterrupted_adapter(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """A real kill (SIGKILL once a checkpoint is on disk: a stale lock, maybe a half-written checkpoint), then the same command.

    The killed command and its rerun are real processes; the uninterrupted reference runs the same command in-process
    (``main(argv)``, one torch thread like the processes), which spares a fresh process's ~7 s of imports."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from nncift.data.records import write_jsonl

    data = tmp_path / "records.jsonl"
    write_jsonl(data, [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in RECORDS * 10])

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "nncift.cli", "finetune", "--data", str(data), "--model", str(tiny_lm_dir), "--out", str(out),
                "--epochs", "6", "--batch-size", "2", "--checkpoint-steps", "5", "--seed", "2", "--quiet"]

    from nncift.cli.commands import main

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the processes (OMP_NUM_THREADS=1)
    try:
        assert main(command(tmp_path / "whole")[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "whole" / "finetune.json").is_file()
    killed = subprocess.Popen(command(tmp_path / "killed"), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "killed" / "checkpoints").glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    if (tmp_path / "killed" / "finetune.json").exists():
        pytest.skip("the run finished before it could be killed (machine too fast for this timing)")
    subprocess.run(command(tmp_path / "killed"), check=True, env=environment, capture_output=True)
    summary = json.loads((tmp_path / "killed" / "finetune.json").read_text())
    assert summary["resumed_from"] and summary["resumed_from"].startswith("checkpoint-")
    whole, resumed = _adapter(tmp_path / "whole"), _adapter(tmp_path / "killed")
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], rtol=0, atol=1e-6)
