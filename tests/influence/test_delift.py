"""DELIFT (influence/delift.py): the formula, the logit shift, prefix reuse, batching, truncation, cost.

A tiny random model gives the true next token a probability of about 1/vocabulary, so every d is
≈ 1 and every U ≈ 0 whether the computation is right or wrong. The tests therefore compare the
per-token **log-probabilities** (which differ by O(1) when a position, a mask or the shift is wrong),
using tiny models with large random weights (initializer_range 0.5, peaked predictions), and check
the utilities themselves on the real SmolLM2 (slow-marked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data

from nncift.data.records import Record, read_records
from nncift.data.templates import delift_example, delift_example_header, delift_prompt_with_example, delift_prompt_without_example, delift_query_suffix
from nncift.influence import influence_class
from nncift.influence.delift import _PROBE_RECORDS, Delift, DeliftSettings, LengthShares, part_cuts
from nncift.influence.lm_scoring import CausalScorer, rms_distance
from nncift.settings.stages import RunContext

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
"""Llama-3's pre-tokenizer pattern: whitespace before a word is split differently from GPT-2's."""


def _save_sharp(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sharp_llama_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """Tiny Llama (2 layers, width 32, rotary positions) with peaked predictions, real SmolLM2 tokenizer."""
    from transformers import AutoTokenizer

    return _sharp_llama(AutoTokenizer.from_pretrained(smollm_tokenizer_dir), tmp_path_factory.mktemp("sharp-llama"))


def _sharp_llama(tokenizer, folder: Path) -> Path:
    """A tiny Llama (2 layers, width 32) with peaked predictions for ``tokenizer``, saved in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.5, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return _save_sharp(LlamaForCausalLM(config), tokenizer, folder)


@pytest.fixture(scope="module")
def sharp_gpt2_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """Tiny GPT-2 (Conv1D, learned absolute positions: wrong position ids would show) with peaked predictions."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                        initializer_range=0.5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return _save_sharp(GPT2LMHeadModel(config), tokenizer, tmp_path_factory.mktemp("sharp-gpt2"))


@pytest.fixture(scope="module")
def llama3_style_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """Tiny sharp Llama whose tokenizer has SmolLM2's byte-level BPE vocabulary but Llama-3's pre-tokenizer.

    No other causal-LM tokenizer (GPT-2's files included) is available offline; this one tokenizes
    the DELIFT part boundaries differently from SmolLM2's GPT-2 pre-tokenizer (``"\\n\\n\\n" "Query"``
    instead of ``"\\n\\n" "\\n" "Query"``), so the cut points must adapt to it.
    """
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return _sharp_llama(tokenizer, tmp_path_factory.mktemp("llama3-style"))


def _delift(model_dir: Path, targets, candidates=None, **options) -> Delift:
    function = Delift(DeliftSettings(**options), run=RunContext(model=str(model_dir), device="cpu"), progress=False)
    function.prepare(targets, candidates if candidates is not None else targets, Path("."))
    return function


def _manual_log_probabilities(model, ids: list[int], n_scored: int, *, shift: bool = True) -> np.ndarray:
    """log p_t of the last n_scored tokens by hand: full logits of the unbatched sequence, read at t-1."""
    with torch.inference_mode():
        log_p = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return np.array([float(log_p[t - 1 if shift else t, ids[t]]) for t in range(len(ids) - n_scored, len(ids))])


def _distance(log_p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((1.0 - np.exp(log_p)) ** 2)))


def test_logit_shift_matches_a_manual_single_sequence_computation(sharp_llama_dir, demo_pool):
    function = _delift(sharp_llama_dir, demo_pool[:4])
    model = function.scorer.model
    ids, n_scored = function.sequence_without(1)
    manual = _manual_log_probabilities(model, ids, n_scored)
    unshifted = _manual_log_probabilities(model, ids, n_scored, shift=False)
    computed = function.response_log_probabilities(np.array([1]))[0]
    assert np.abs(computed - manual).max() <= 1e-4
    assert np.abs(unshifted - manual).max() > 1.0  # the check can tell the shift from no shift
    assert function.d_without(np.array([1]))[0] == pytest.approx(_distance(manual), abs=1e-9)

    ids_with, n_with = function.sequence_with(1, 3)
    assert n_with == n_scored and ids_with[-n_with:] == ids[-n_scored:]  # the same response tokens are scored
    manual_with = _manual_log_probabilities(model, ids_with, n_with)
    assert np.abs(function.response_log_probabilities(np.array([1]), 3)[0] - manual_with).max() <= 1e-4
    u = function.compute_block(np.array([1]), np.array([3]))[0, 0]
    assert u == pytest.approx(_distance(manual) - _distance(manual_with), abs=1e-8)


def test_scored_tokens_are_the_response_and_final_eos(sharp_llama_dir, demo_pool):
    function = _delift(sharp_llama_dir, demo_pool[:2])
    tokenizer = function.tokenizer
    ids, n_scored = function.sequence_without(0)
    response = tokenizer(demo_pool[0].output, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert ids[-n_scored:] == response + [eos]
    assert ids[-n_scored - 1] == eos  # prompt, EOS, response, EOS
    prompt = tokenizer.decode(ids[: -n_scored - 1])
    assert prompt.startswith("Instruction: Please generate a response") and prompt.endswith(f"Query: {demo_pool[0].query}\n")
    with_ids, _ = function.sequence_with(0, 1)
    text = tokenizer.decode(with_ids[: -n_scored - 1])
    assert text == delift_example_header() + f"Example:\n{demo_pool[1].query}\n{demo_pool[1].output}\n\n\nQuery:\n{demo_pool[0].query}\n"


@pytest.mark.parametrize("model_fixture", ["sharp_llama_dir", "sharp_gpt2_dir", "tiny_lm_dir", "llama3_style_dir"])
def test_prefix_reuse_equals_plain_computation(model_fixture, request, demo_pool):
    model_dir = request.getfixturevalue(model_fixture)
    targets, candidates = demo_pool[:7], demo_pool[20:25]
    rows, cols = np.arange(7), np.arange(5)
    reuse = _delift(model_dir, targets, candidates, prefix_reuse=True, token_budget=400)
    plain = _delift(model_dir, targets, candidates, prefix_reuse=False, token_budget=400)
    assert np.abs(reuse.compute_block(rows, cols) - plain.compute_block(rows, cols)).max() <= 1e-4
    for candidate in (0, 4):
        fast, slow = reuse.response_log_probabilities(rows, candidate), plain.response_log_probabilities(rows, candidate)
        assert np.abs(np.concatenate(fast) - np.concatenate(slow)).max() <= 1e-4
    assert reuse.counters["prefix_passes"] == len(cols) + 2
    assert reuse.counters["tokens_saved_by_prefix_reuse"] > 0
    assert reuse.counters["tokens"] < plain.counters["tokens"]


def test_prefix_reuse_positions_match_unbatched_one_shot_sequences(sharp_gpt2_dir, demo_pool):
    """GPT-2 learns absolute positions: suffix position ids that did not continue the prefix would show here."""
    function = _delift(sharp_gpt2_dir, demo_pool[:5], prefix_reuse=True, token_budget=10_000)
    log_ps = function.response_log_probabilities(np.arange(5), 2)
    for row in range(5):
        ids, n_scored = function.sequence_with(row, 2)
        manual = _manual_log_probabilities(function.scorer.model, ids, n_scored)
        assert np.abs(log_ps[row] - manual).max() <= 1e-4


def test_token_budget_and_order_do_not_change_values(sharp_llama_dir, demo_pool):
    records = demo_pool[:9]
    rows, cols = np.array([4, 0, 8, 2]), np.array([3, 5])
    functions = [_delift(sharp_llama_dir, records, token_budget=budget) for budget in (1, 300, 100_000)]
    results = [f.compute_block(rows, cols) for f in functions]
    log_ps = [np.concatenate(f.response_log_probabilities(rows, 5)) for f in functions]
    assert functions[0].counters["model_calls"] > functions[2].counters["model_calls"]
    for other, other_log_p in zip(results[1:], log_ps[1:]):
        assert np.abs(other - results[0]).max() <= 1e-5
        assert np.abs(other_log_p - log_ps[0]).max() <= 1e-4
    permuted = _delift(sharp_llama_dir, records).compute_block(rows[::-1], cols[::-1])
    assert np.abs(permuted[::-1, ::-1] - results[0]).max() <= 1e-5


def test_non_square_block_orientation_rows_are_targets(sharp_llama_dir, demo_pool):
    targets, candidates = demo_pool[:3], demo_pool[10:17]
    function = _delift(sharp_llama_dir, targets, candidates)
    block = function.compute_block(np.arange(3), np.arange(7))
    assert block.shape == (3, 7) and block.dtype == np.float32
    d_without = function.d_without(np.arange(3))
    for r, c in [(0, 6), (2, 1), (1, 4)]:
        log_p = function.response_log_probabilities(np.array([r]), c)[0]  # target r's response after example c
        assert block[r, c] == pytest.approx(d_without[r] - _distance(log_p), abs=1e-8)
        ids, _ = function.sequence_with(r, c)
        text = function.tokenizer.decode(ids)
        assert f"Example:\n{candidates[c].query}" in text and f"Query:\n{targets[r].query}" in text
    assert function.compute_block(np.arange(0), np.arange(7)).shape == (0, 7)
    with pytest.raises(IndexError, match="candidate index out of range"):
        function.compute_block(np.arange(3), np.array([7]))


def test_deterministic_across_instances(sharp_llama_dir, demo_pool):
    first = _delift(sharp_llama_dir, demo_pool[:6]).compute_block(np.arange(4), np.arange(3))
    second = _delift(sharp_llama_dir, demo_pool[:6]).compute_block(np.arange(4), np.arange(3))
    assert np.array_equal(first, second)


def test_d_without_is_computed_once_per_target(sharp_llama_dir, demo_pool):
    function = _delift(sharp_llama_dir, demo_pool[:6])
    function.compute_block(np.arange(4), np.arange(2))
    function.compute_block(np.arange(4), np.arange(2, 5))
    assert function.counters["forward_passes"] == 4 + 4 * 5  # N without + N·M with
    assert function.counters["evaluations"] == 4 * 5


def test_truncation_policy(sharp_llama_dir):
    long_query = " ".join(f"word{k}" for k in range(200))
    long_output = " ".join(f"answer{k}" for k in range(300))
    records = [Record("Summarise this.", long_query, long_output), Record("Say hi.", "", "Hi!")]
    function = _delift(sharp_llama_dir, records, max_length=128)
    tokenizer = function.tokenizer
    shares = LengthShares.of(128)
    assert (shares.prefix, shares.query, shares.response, shares.prompt_without) == (64, 16, 46, 80)
    for target in range(2):
        for candidate in range(2):
            ids, _ = function.sequence_with(target, candidate)
            assert len(ids) <= 128
        assert len(function.sequence_without(target)[0]) <= 128
    ids, n_scored = function.sequence_without(0)
    full_response = tokenizer(long_output, add_special_tokens=False)["input_ids"]
    assert ids[-n_scored:-1] == full_response[:46]  # responses keep their start
    prefix_ids, _ = function.sequence_with(1, 0)
    header = tokenizer(delift_example_header()[:-1], add_special_tokens=False)["input_ids"]  # cut before its last "\n"
    assert function.part_cuts == (1, 1) and function._header == header
    assert prefix_ids[: len(header)] == header  # the instruction header is never cut
    assert tokenizer.decode(prefix_ids[len(header) : 64]).endswith("answer299\n\n")  # examples keep their end
    assert tokenizer.decode(prefix_ids[64:]).startswith("\nQuery:\nSay hi.")
    query_part = function._target(0).query
    assert len(query_part) == 16 and tokenizer.decode(query_part).endswith("word199\n")  # queries keep their end
    short_ids, short_n = function.sequence_without(1)
    assert tokenizer.decode(short_ids[-short_n:-1]) == "Hi!"
    counts = function.counters
    assert (counts["truncated_responses"], counts["truncated_queries"], counts["truncated_examples"]) == (1, 1, 1)
    assert counts["truncated_prompts"] == 1
    prompt_ids = function._target(0).prompt_without
    assert len(prompt_ids) == 80 and tokenizer.decode(prompt_ids).endswith("word199\n")  # zero-shot prompt keeps its end
    values = function.compute_block(np.arange(2), np.arange(2))
    assert np.isfinite(values).all()


def test_max_length_is_clamped_to_the_model_context(sharp_gpt2_dir, demo_pool):
    function = _delift(sharp_gpt2_dir, demo_pool[:2], max_length=4096)
    function.scorer  # noqa: B018 - loads the model
    assert function.max_length == 1024
    with pytest.raises(ValueError, match="max_length must be at least"):
        LengthShares.of(32)


def test_masked_output_layer_matches_full_logits(sharp_llama_dir, demo_pool):
    function = _delift(sharp_llama_dir, demo_pool[:4])
    scorer = function.scorer
    assert scorer.head == "masked"
    sequences = [function.sequence_without(i) for i in range(4)]
    ids, n_scored = [s[0] for s in sequences], [s[1] for s in sequences]
    full_scorer = CausalScorer(scorer.model, scorer.pad_token_id, head="full")
    masked, full = scorer.log_probabilities(ids, n_scored), full_scorer.log_probabilities(ids, n_scored)
    for a, b in zip(masked, full):
        assert np.abs(a - b).max() <= 1e-4
    assert scorer.counters["output_positions"] == sum(n_scored)
    assert full_scorer.counters["output_positions"] == 4 * max(len(x) for x in ids)
    assert rms_distance(np.array([1.0, 0.0])) == pytest.approx(np.sqrt(0.5))


def test_registered_and_exposed_on_the_command_line():
    from nncift.cli.commands import build_parser

    assert influence_class("delift") is Delift
    help_text = build_parser()._subparsers._group_actions[0].choices["select"].format_help()  # noqa: SLF001
    for flag in ("--delift.token-budget", "--delift.max-length", "--delift.prefix-reuse", "--no-delift.prefix-reuse", "--dtype"):
        assert flag in help_text


@pytest.mark.e2e
def test_select_with_delift_end_to_end(sharp_llama_dir, demo_pool, tmp_path):
    from nncift.models.embeddings import embed_records
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import run_select

    settings = SelectSettings.build(influence="delift", model=str(sharp_llama_dir), **{"sampling.fraction": 0.25, "selection.budget": 8,
            "executor.block_size": 8},
                              device="cpu", quiet=True, **{"network.epochs": 2, "sampling.blocks": 1, "network.max_steps": 40})
    result = run_select(settings, tmp_path / "run", pool=demo_pool[:32])
    assert len(result.indices) == 8 and len(set(result.indices.tolist())) == 8
    counters = result.manifest["cost"]["counters"]
    assert counters["forward_passes"] == 10 + 10 * 10  # min_sampled 10 targets and candidates
    assert "truncated_responses" in counters and counters["tokens"] > 0
    q1 = np.load(tmp_path / "run" / "q1.npy")
    assert q1.shape == (10, 10) and np.isfinite(q1).all()
    assert result.manifest["label_scaling"]["source"] == "min-max of Q1"
    # the default input (auto) is DELIFT's own choice: the text beside the response, at the default weight
    assert result.manifest["settings"]["network"]["input"] == "auto"
    assert result.manifest["network_input"] == {"network_input": "text+response", "response_weight": 0.2}
    text_dim = embed_records(demo_pool[:1], progress=False).shape[1]
    assert np.load(tmp_path / "run" / "col_embeddings.npy").shape == (32, 2 * text_dim)
    # DELIFT's own default design: the same pairs in 4 blocks over twice the records (2 × min_sampled)
    spread = run_select(settings.updated(**{"sampling.blocks": 0}), tmp_path / "spread", pool=demo_pool[:32])
    q1 = np.load(tmp_path / "spread" / "q1.npy")
    assert spread.manifest["sampling_blocks"] == 4 and q1.shape == (20, 20) and int(np.isfinite(q1).sum()) == 4 * 5 * 5
    assert spread.manifest["cost"]["counters"]["forward_passes"] == 20 + 4 * 5 * 5


@pytest.mark.e2e
def test_smollm2_prefix_reuse_and_logit_shift_on_real_records(smollm_dir):
    records, _ = read_records(shared_data("alpaca_en_demo.json"))
    records = [r for r in records if len(r.output) < 120][:5]
    reuse = _delift(smollm_dir, records[:3], records[3:], prefix_reuse=True)
    plain = _delift(smollm_dir, records[:3], records[3:], prefix_reuse=False)
    fast = reuse.compute_block(np.arange(3), np.arange(2))
    assert np.abs(fast - plain.compute_block(np.arange(3), np.arange(2))).max() <= 1e-4
    assert np.abs(fast).max() > 1e-3  # a real model gives real utilities
    ids, n_scored = reuse.sequence_with(0, 1)
    manual = _manual_log_probabilities(reuse.scorer.model, ids, n_scored)
    assert np.abs(reuse.response_log_probabilities(np.array([0]), 1)[0] - manual).max() <= 1e-4
    unshifted = _manual_log_probabilities(reuse.scorer.model, ids, n_scored, shift=False)
    assert abs(_distance(unshifted) - _distance(manual)) > 1e-2
    d_without = reuse.d_without(np.arange(3))
    assert np.all((d_without > 0) & (d_without < 1)) and np.ptp(d_without) > 1e-3


def test_plan_batches_respects_budget_and_padding_share():
    from nncift.influence.lm_scoring import plan_batches

    lengths = np.random.default_rng(0).integers(5, 400, size=300)
    batches = plan_batches(lengths, 2048, max_padding_share=0.1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    for batch in batches:
        padded = len(batch) * lengths[batch].max()
        assert len(batch) == 1 or padded <= 2048
        assert len(batch) == 1 or padded - lengths[batch].sum() <= 0.1 * padded
    assert np.mean([len(b) for b in batches]) > 3  # still batches, not one sequence per call


# -- tokenization of the parts equals tokenization of the joint prompt ---------------------------------


def _joint_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """The reference layout: ``tokenizer(prompt)`` (its own special tokens), EOS, response, EOS."""
    eos = tokenizer.eos_token_id
    return tokenizer(prompt)["input_ids"] + [eos] + tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]


def _assert_sequences_are_joint_tokenizations(function: Delift, targets, candidates) -> None:
    tokenizer = function.tokenizer
    for i, target in enumerate(targets):
        ids, n_scored = function.sequence_without(i)
        assert ids == _joint_ids(tokenizer, delift_prompt_without_example(target), target.output)
        for j, candidate in enumerate(candidates):
            ids, n_with = function.sequence_with(i, j)
            assert ids == _joint_ids(tokenizer, delift_prompt_with_example(target, candidate), target.output), (i, j)
            assert n_with == n_scored
            prefix = function._prefix(j)
            assert ids[: len(prefix)] == prefix  # the prefix (reused key/value cache) is the same for every target


def test_one_shot_prompt_is_the_reference_text(demo_pool):
    target, example = demo_pool[0], demo_pool[1]
    assert delift_prompt_with_example(target, example) == (
        "Instruction:\nUse the following example as a guide to answer the query in the same format and style, "
        "providing a clear and concise response.\n\n\n"
        f"Example:\n{example.query}\n{example.output}\n\n\nQuery:\n{target.query}\n")


@pytest.mark.parametrize("model_fixture, cuts", [("sharp_llama_dir", (1, 1)), ("llama3_style_dir", (0, 0))])
def test_part_cut_points_adapt_to_the_tokenizer(model_fixture, cuts, request):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model_fixture))
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = [tokenizer.decode([t]) for t in encode("done.\n\n\nQuery:")]
    assert pieces[2:-2] == (["\n\n", "\n"] if cuts == (1, 1) else ["\n\n\n"])  # the two pre-tokenizers differ
    assert part_cuts(encode) == cuts
    # The template's own part boundaries would not do for the GPT-2 pre-tokenizer: "\n\n\n" became one token.
    target, example = _PROBE_RECORDS[2], _PROBE_RECORDS[0]
    naive = encode(delift_example_header()) + encode(delift_example(example)) + encode(delift_query_suffix(target))
    assert (naive == encode(delift_prompt_with_example(target, example))) == (cuts == (0, 0))


@pytest.mark.parametrize("model_fixture", ["sharp_llama_dir", "llama3_style_dir"])
def test_sequences_equal_the_joint_tokenization_on_demo_and_probe_records(model_fixture, request, demo_pool):
    records = demo_pool[::8] + list(_PROBE_RECORDS) + [
        Record("Translate:", "  two leading spaces", "trailing newlines\n\n"),
        Record("Count to 3", "", "1 2 3"),
        Record("Quote", "\"quoted\"", "\tTab first and last\t"),
    ]
    function = _delift(request.getfixturevalue(model_fixture), records)
    _assert_sequences_are_joint_tokenizations(function, records, records)


@pytest.mark.parametrize("model_fixture", ["sharp_llama_dir", "llama3_style_dir"])
@pytest.mark.e2e
def test_sequences_equal_the_joint_tokenization_on_real_records(model_fixture, request):
    records, _ = read_records(shared_data("alpaca_en_demo.json"))
    records = records[:12]
    function = _delift(request.getfixturevalue(model_fixture), records[:6], records[6:])
    _assert_sequences_are_joint_tokenizations(function, records[:6], records[6:])
    reuse = function.compute_block(np.arange(6), np.arange(6))
    plain = _delift(request.getfixturevalue(model_fixture), records[:6], records[6:], prefix_reuse=False)
    assert np.abs(reuse - plain.compute_block(np.arange(6), np.arange(6))).max() <= 1e-4
