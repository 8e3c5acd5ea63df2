"""Fine-tuning: labels on the response only, loss on response tokens only, loss falls, saved safely."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nncift.data import templates
from nncift.data.records import Record
from nncift.downstream.finetune import (
    IGNORE_INDEX,
    FinetuneSettings,
    collate,
    encode_example,
    fast_head_matches,
    finetune,
    response_loss,
)

RECORDS = [
    Record("Classify the sentiment of this review.", "A wonderful, moving film.", "positive"),
    Record("Name the capital of France.", "", "Paris is the capital of France."),
    Record("Add the numbers.", "2 + 3", "5"),
    Record("Reverse the word.", "stressed", "desserts"),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def _model(folder: Path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_labels_are_ignored_exactly_on_prompt_and_padding(tokenizer) -> None:
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in RECORDS]
    batch = collate(examples, tokenizer.pad_token_id)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # padding by id would also hide the final EOS
    for row, (record, example) in enumerate(zip(RECORDS, examples)):
        expected_prompt = tokenizer(tokenizer.apply_chat_template(templates.chat_messages(record), add_generation_prompt=True,
                                                                  tokenize=False), add_special_tokens=False)["input_ids"]
        expected_response = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n, p = len(example.input_ids), example.prompt_length
        assert p == len(expected_prompt) and n == p + len(expected_response)
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert ids[:p].tolist() == expected_prompt
        assert (labels[:p] == IGNORE_INDEX).all()                      # prompt: ignored
        assert labels[p:n].tolist() == ids[p:n].tolist() == expected_response  # response + EOS: teacher-forced
        assert labels[n - 1].item() == tokenizer.eos_token_id
        assert (labels[n:] == IGNORE_INDEX).all() and (mask[n:] == 0).all() and (mask[:n] == 1).all()  # padding
        assert tokenizer.decode(ids[p : n - 1]) == record.output


def test_plain_prompt_when_no_chat_template(tokenizer) -> None:
    example = encode_example(tokenizer, RECORDS[1], 256, chat=False)
    prompt_text = tokenizer.decode(example.input_ids[: example.prompt_length], skip_special_tokens=True)
    assert prompt_text == templates.plain_prompt(RECORDS[1])
    assert example.labels[: example.prompt_length] == [IGNORE_INDEX] * example.prompt_length


def test_truncation_keeps_the_generation_cue_and_the_response_start(tokenizer) -> None:
    long_record = Record("Summarise. " + "word " * 400, "", "short answer " * 100)
    example = encode_example(tokenizer, long_record, 64, chat=True)
    assert example.truncated and len(example.input_ids) == 64
    cue = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert example.input_ids[example.prompt_length - len(cue) : example.prompt_length] == cue
    response = tokenizer(long_record.output, add_special_tokens=False)["input_ids"]
    assert example.input_ids[example.prompt_length :] == response[: 64 - example.prompt_length]
    assert example.prompt_length == 32  # the response keeps half of the room


def _manual_loss(model, batch, examples, *, include_prompt: bool) -> torch.Tensor:
    """Cross-entropy computed independently from full logits, on response positions (or all real tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = []
    for row, example in enumerate(examples):
        start = 1 if include_prompt else example.prompt_length
        positions = torch.arange(start, len(example.input_ids))
        losses.append(torch.nn.functional.cross_entropy(logits[row, positions - 1], batch["input_ids"][row, positions], reduction="none"))
    return torch.cat(losses).mean()


@pytest.mark.parametrize("fast_head", [True, False])
def test_loss_is_computed_on_response_tokens_only(tiny_lm_dir: Path, tokenizer, fast_head: bool) -> None:
    model = _model(tiny_lm_dir)
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in RECORDS]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        loss = response_loss(model, batch, fast_head=fast_head)
        response_only = _manual_loss(model, batch, examples, include_prompt=False)
        with_prompt = _manual_loss(model, batch, examples, include_prompt=True)
    assert loss.item() == pytest.approx(response_only.item(), rel=1e-5)
    assert abs(with_prompt.item() - response_only.item()) > 1e-3  # the check can tell the two apart
    # a change in the prompt's labels must not matter: marking them -100 again is the same batch
    relabelled = dict(batch, labels=batch["labels"].clone())
    for row, example in enumerate(examples):
        relabelled["labels"][row, : example.prompt_length] = batch["input_ids"][row, : example.prompt_length]
    with torch.no_grad():
        assert response_loss(model, relabelled, fast_head=fast_head).item() == pytest.approx(with_prompt.item(), rel=1e-5)


def test_fast_head_matches_full_logits_on_llama_and_gpt2(tiny_lm_dir: Path, tiny_gpt2_dir: Path, tokenizer) -> None:
    batch = collate([encode_example(tokenizer, record, 256, chat=True) for record in RECORDS], tokenizer.pad_token_id)
    assert fast_head_matches(_model(tiny_lm_dir), batch)
    assert fast_head_matches(_model(tiny_gpt2_dir), batch)


def _prompt_and_response_loss(model, tokenizer, records) -> tuple[float, float]:
    """Mean next-token loss on the prompt tokens and on the response tokens, from full logits."""
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in records]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    prompt, response = [], []
    for row, example in enumerate(examples):
        losses = torch.nn.functional.cross_entropy(logits[row, : len(example.input_ids) - 1], batch["input_ids"][row, 1 : len(example.input_ids)],
                                                   reduction="none")
        prompt.append(losses[: example.prompt_length - 1])
        response.append(losses[example.prompt_length - 1 :])
    return torch.cat(prompt).mean().item(), torch.cat(response).mean().item()


def _drops(tiny_lm_dir: Path, tokenizer, examples, folder: Path) -> tuple[float, float]:
    """(fall of the prompt loss, fall of the response loss) after LoRA training on ``examples`` (TRL's trainer).

    The tiny model's tied embeddings are small, so no loss can fall far below ln(vocabulary) ≈ 10.8:
    what tells the two apart is which part falls.
    """
    from nncift.downstream import sft

    settings = FinetuneSettings(model=str(tiny_lm_dir), learning_rate=3e-2, epochs=6, batch_size=4, seed=1, quiet=True)
    prompt_before, response_before = _prompt_and_response_loss(_model(tiny_lm_dir), tokenizer, RECORDS)
    model, losses, _ = sft.train(_model(tiny_lm_dir), tokenizer, examples, settings, folder, device="cpu", precision="fp32", response_head=True)
    assert np.mean(losses[-2:]) < losses[0] - 0.15  # the training loss falls
    prompt_after, response_after = _prompt_and_response_loss(model, tokenizer, RECORDS)
    return prompt_before - prompt_after, response_before - response_after


@pytest.mark.e2e
def test_training_lowers_the_response_loss_and_never_trains_on_the_prompt(tiny_lm_dir: Path, tokenizer, tmp_path: Path) -> None:
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in RECORDS * 2]
    prompt_drop, response_drop = _drops(tiny_lm_dir, tokenizer, examples, tmp_path)
    assert response_drop > 0.15
    assert prompt_drop < 0.4 * response_drop  # the prompt was not learnt


@pytest.mark.e2e
def test_control_training_on_the_prompt_is_detected(tiny_lm_dir: Path, tokenizer, tmp_path: Path) -> None:
    """The same training with the prompt labelled (the reference bug) fails the check above."""
    examples = [encode_example(tokenizer, record, 256, chat=True) for record in RECORDS * 2]
    for example in examples:
        example.labels = [IGNORE_INDEX] + example.input_ids[1:]
    prompt_drop, response_drop = _drops(tiny_lm_dir, tokenizer, examples, tmp_path)
    assert prompt_drop > 0.4 * response_drop and prompt_drop > 0.15


@pytest.mark.e2e
def test_finetune_loss_falls_and_the_adapter_learns(tiny_lm_dir: Path, tokenizer, tmp_path: Path) -> None:
    from peft import PeftModel

    settings = FinetuneSettings(model=str(tiny_lm_dir), learning_rate=3e-2, epochs=6, batch_size=4, seed=1, quiet=True)
    result = finetune(RECORDS * 2, settings, tmp_path / "adapter")
    assert np.mean(result.losses[-2:]) < result.losses[0] - 0.15
    _, response_before = _prompt_and_response_loss(_model(tiny_lm_dir), tokenizer, RECORDS)
    tuned = PeftModel.from_pretrained(_model(tiny_lm_dir), tmp_path / "adapter").eval()
    _, response_after = _prompt_and_response_loss(tuned, tokenizer, RECORDS)
    assert response_after < response_before - 0.15  # the saved adapter holds what was learnt


@pytest.mark.e2e
def test_adapter_saved_with_safetensors_and_settings(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    settings = FinetuneSettings(model=str(tiny_gpt2_dir), epochs=1, batch_size=2, quiet=True)
    result = finetune(RECORDS, settings, tmp_path / "gpt2-adapter")
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "finetune.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pickle")) for name in files)
    summary = json.loads((result.adapter_dir / "finetune.json").read_text())
    assert summary["settings"]["lora_r"] == 8 and summary["settings"]["lora_alpha"] == 16
    assert summary["environment"]["packages"]["peft"] and summary["records"] == 4
    assert summary["trainable_parameters"] > 0 and len(summary["losses"]) == 2
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["lora_dropout"] == 0.05
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {"c_attn", "c_proj", "c_fc"}  # every Conv1D layer


@pytest.mark.e2e
def test_same_seed_same_adapter_and_refuses_other_settings(tiny_lm_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from nncift.files.errors import SettingsMismatch

    settings = FinetuneSettings(model=str(tiny_lm_dir), epochs=1, batch_size=2, seed=3, quiet=True)
    first = load_file(finetune(RECORDS, settings, tmp_path / "a").adapter_dir / "adapter_model.safetensors")
    second = load_file(finetune(RECORDS, settings, tmp_path / "b").adapter_dir / "adapter_model.safetensors")
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    with pytest.raises(SettingsMismatch):
        finetune(RECORDS, FinetuneSettings(model=str(tiny_lm_dir), epochs=2, quiet=True), tmp_path / "a")


def test_grouped_order_covers_every_index_once_in_full_batches_of_similar_length() -> None:
    from nncift.downstream.sft import grouped_order

    lengths = np.random.default_rng(0).integers(5, 300, size=101)
    order = grouped_order(lengths, 8, np.random.default_rng(1))
    assert sorted(order) == list(range(101))
    batches = [order[i : i + 8] for i in range(0, 101, 8)]
    assert [len(b) for b in batches] == [8] * 12 + [5]  # the short batch last: the Trainer cuts the same batches
    shuffled = np.random.default_rng(2).permutation(101)
    random_spread = np.mean([np.ptp(lengths[shuffled[i : i + 8]]) for i in range(0, 96, 8)])
    assert np.mean([np.ptp(lengths[b]) for b in batches]) < 0.5 * random_spread  # similar lengths: less padding
    assert order == grouped_order(lengths, 8, np.random.default_rng(1))


@pytest.mark.e2e
def test_cli_finetunes_on_a_selection_file(tiny_lm_dir: Path, tmp_path: Path) -> None:
    from nncift.cli.commands import main
    from nncift.data.records import write_jsonl

    selected = tmp_path / "selected.jsonl"
    write_jsonl(selected, [{"index": i, "score": 1.0, "record": {"instruction": r.instruction, "input": r.input, "output": r.output}}
                           for i, r in enumerate(RECORDS)])
    code = main(["finetune", "--data", str(selected), "--model", str(tiny_lm_dir), "--out", str(tmp_path / "cli"),
                 "--epochs", "1", "--batch-size", "2", "--quiet"])
    assert code == 0
    assert json.loads((tmp_path / "cli" / "finetune.json").read_text())["records"] == len(RECORDS)
