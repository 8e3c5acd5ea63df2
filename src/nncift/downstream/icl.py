"""In-context-learning evaluation of a subset (``nncift evaluate --icl-pool SUBSET --k K``).

The second way the NN-CIFT paper scores a selected subset, next to fine-tuning: the model is not
trained; each held-out query is answered with the K records of the subset most similar to it as
worked examples in its prompt. Similarity is the cosine of the sentence embeddings
(:mod:`nncift.models.embeddings`) of the query's text (instruction and input, never its answer) and of each
subset record's instruction and input, ties broken by the lowest subset index.

The prompt holds the examples in increasing similarity, so the most similar one stands right before
the query. With a chat template they are earlier user/assistant turns; without one, plain
``### Instruction`` / ``### Response`` blocks (:func:`nncift.data.templates.plain_prompt`). When a prompt
would exceed ``icl_max_length`` tokens, the least similar examples are dropped first; a query that
still does not fit alone is cut at its start, as in :func:`nncift.downstream.evaluate.generate_answers`.

The answers are scored exactly as in the fine-tuning path (:func:`nncift.downstream.evaluate.score_answers`);
the loss is the teacher-forced loss of the reference answer after the same prompt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data import templates
from nncift.data.records import Record, read_many
from nncift.downstream.evaluate import EvaluateSettings, EvaluationResult, example_losses, generate_from_prompts, score_answers
from nncift.downstream.finetune import IGNORE_INDEX, EncodedExample, uses_chat_template
from nncift.files.errors import InputError

__all__ = ["nearest_examples", "icl_prompt_ids", "icl_prompts", "evaluate_icl", "read_icl_pool", "query_vectors"]


def nearest_examples(queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` rows of ``pool`` with the highest dot product with each row of ``queries``.

    Rows are L2-normalised embeddings, so the dot product is the cosine. Returns an int array of shape
    (len(queries), min(k, len(pool))), most similar first; equal similarities go to the lowest index.
    """
    if len(pool) == 0:
        raise InputError("the in-context pool is empty")
    k = min(int(k), len(pool))
    similarity = np.asarray(queries, dtype=np.float64) @ np.asarray(pool, dtype=np.float64).T
    order = np.argsort(-similarity, axis=1, kind="stable")  # stable: ties keep the lower index first
    return order[:, :k].astype(np.int64)


def query_vectors(records: Sequence[Record], settings: EvaluateSettings) -> np.ndarray:
    """Embeddings of the records' queries (instruction and input; the answer is left out), L2-normalised."""
    from nncift.models.embeddings import embed_texts

    return embed_texts([record.query for record in records], model=settings.embedder, device=settings.device, progress=False)


def _turns(examples: Sequence[Record], query: Record) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for example in examples:
        messages += [*templates.chat_messages(example), {"role": "assistant", "content": example.output}]
    return messages + templates.chat_messages(query)


def _plain(examples: Sequence[Record], query: Record) -> str:
    return "".join(templates.plain_prompt(example) + example.output + "\n\n" for example in examples) + templates.plain_prompt(query)


def icl_prompt_ids(tokenizer: Any, examples: Sequence[Record], query: Record, *, chat: bool, max_tokens: int) -> tuple[list[int], int]:
    """Token ids of the prompt of ``query`` after ``examples`` (least similar first), and how many examples it kept.

    Examples are dropped from the front (the least similar) until the prompt has at most ``max_tokens``
    tokens; a lone query that is still too long keeps its last ``max_tokens`` tokens.
    """
    examples = list(examples)
    while True:
        if chat:
            text = tokenizer.apply_chat_template(_turns(examples, query), add_generation_prompt=True, tokenize=False)
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            ids = list(tokenizer(_plain(examples, query), add_special_tokens=True)["input_ids"])
        if len(ids) <= max_tokens or not examples:
            return ids[-max_tokens:], len(examples)
        examples = examples[1:]


def read_icl_pool(path: str | Path) -> list[Record]:
    """The records of an in-context pool: a data file or folder, or a run's ``selected.jsonl`` (read by :func:`nncift.data.records.read_many`)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: in-context pool not found (--icl-pool)")
    records, _ = read_many([str(path)])
    return records


def icl_prompts(tokenizer: Any, records: Sequence[Record], pool: Sequence[Record], neighbours: np.ndarray,
                settings: EvaluateSettings) -> tuple[list[list[int]], list[int]]:
    """Per record: the prompt ids with its neighbours (pool indices, most similar first) as examples, and how many fit."""
    chat = uses_chat_template(tokenizer, settings.chat_template)
    room = max(1, settings.icl_max_length - settings.max_new_tokens)
    prompts, kept = [], []
    for record, chosen in zip(records, neighbours):
        ids, used = icl_prompt_ids(tokenizer, [pool[int(i)] for i in chosen[::-1]], record, chat=chat, max_tokens=room)
        prompts.append(ids)
        kept.append(used)
    return prompts, kept


def evaluate_icl(model: Any, tokenizer: Any, records: Sequence[Record], pool: Sequence[Record], settings: EvaluateSettings,
                 *, pool_vectors: np.ndarray | None = None) -> EvaluationResult:
    """Answer each record with its ``settings.k`` nearest ``pool`` records as examples; score as :func:`nncift.downstream.evaluate.evaluate_records`.

    ``pool_vectors``: the pool's query embeddings when the caller has them (default: computed).
    Each example row also names the pool indices used (``icl_examples``, most similar first).
    """
    if not records:
        raise InputError("no records to evaluate on")
    start = time.perf_counter()
    model.eval()
    pool = list(pool)
    vectors = query_vectors(pool, settings) if pool_vectors is None else pool_vectors
    neighbours = nearest_examples(query_vectors(records, settings), vectors, settings.k)
    prompts, kept = icl_prompts(tokenizer, records, pool, neighbours, settings)
    sums = counts = None
    if settings.with_loss:
        encoded = [_with_reference(tokenizer, prompt, record.output, settings.icl_max_length) for prompt, record in zip(prompts, records)]
        sums, counts = example_losses(model, tokenizer, encoded, settings)
    answers = generate_from_prompts(model, tokenizer, prompts, settings)
    result = score_answers(records, answers, sums, counts, settings, start)
    for row, chosen, used in zip(result.examples, neighbours, kept):
        row["icl_examples"] = [int(i) for i in chosen[:used]]
    result.metrics.update(mode="icl", k=settings.k, pool_size=len(pool), mean_examples_in_prompt=float(np.mean(kept)),
                          mean_prompt_tokens=float(np.mean([len(p) for p in prompts])))
    return result


def _with_reference(tokenizer: Any, prompt: list[int], output: str, max_length: int) -> EncodedExample:
    """The prompt followed by the reference answer and EOS, labels on the answer only (prompt cut at its start to fit)."""
    response = list(tokenizer(output, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    response = response[: max_length // 2] if len(prompt) + len(response) > max_length else response
    prompt = prompt[max(0, len(prompt) + len(response) - max_length):]
    return EncodedExample(prompt + response, [IGNORE_INDEX] * len(prompt) + response, len(prompt), len(prompt) + len(response) > max_length)
