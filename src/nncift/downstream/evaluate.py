"""Evaluation of a (fine-tuned) model on held-out records (docs/methods.md §6).

Four numbers (five with the LLM judge), each also kept per example:

- ``loss``: mean cross-entropy per token of the reference answers (+ EOS), teacher-forced with the
  same prompt as fine-tuning (:mod:`nncift.downstream.finetune`); lower is better;
- ``rouge_l``: ROUGE-L F-measure of the generated answer against the reference (``rouge-score``,
  Porter stemming);
- ``embedding_cosine``: cosine of the sentence embeddings (:mod:`nncift.models.embeddings`) of generated and
  reference answers;
- ``exact_match``: 1 when the generated and the reference answer are equal after normalisation
  (lower case, punctuation, the articles a/an/the and extra white space removed); meaningful for
  short-answer tasks;
- with ``judge.mode`` generate or constrained, ``judge_score``: the mean 1–5 score an LLM judge gives each answer against the
  reference (:mod:`nncift.downstream.judge`), with the count and share of judgements that did not parse
  (``judge_unparseable``, ``judge_unparseable_share``).

Generation is greedy (deterministic), batched with left padding, and stops at EOS or after
``max_new_tokens``. With ``icl_pool`` (``--icl-pool SUBSET --k K``) the model is not fine-tuned:
each record is answered with its K most similar subset records as in-context examples
(:mod:`nncift.downstream.icl`), and scored with the same metrics. ``with_loss: false`` skips the loss.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.downstream.finetune import collate, encode_example, prompt_ids, response_loss, uses_chat_template
from nncift.downstream.judge import JudgeSettings, judge_answers, make_judge
from nncift.files.errors import InputError
from nncift.models.loading import cache_dir
from nncift.settings.choices import BUNDLED_EMBEDDER
from nncift.settings.fields import setting
from nncift.settings.stages import EmbedderChoice, ModelContext, Progress

METRICS = ("loss", "rouge_l", "embedding_cosine", "exact_match")
"""Names of the metrics, in the order they are reported."""


@dataclass(frozen=True)
class EvaluateSettings(Progress, EmbedderChoice, ModelContext):
    """Settings of ``nncift evaluate``."""

    adapter: str = ""
    """LoRA adapter folder from ``nncift finetune`` (empty: the base model as it is)."""
    max_new_tokens: int = setting(64, at_least=1)
    """Most tokens generated per answer (keep it small for short-answer tasks)."""
    batch_size: int = setting(8, at_least=1)
    """Records per forward pass or generation call."""
    max_length: int = setting(256, at_least=1)
    """Most tokens per record for the loss (as in fine-tuning); prompts are cut at their start to fit."""
    chat_template: bool = True
    """Use the tokenizer's chat template when it has one (as in fine-tuning)."""
    limit: int = setting(0, at_least=0)
    """Evaluate only the first N records (0: all)."""
    with_loss: bool = True
    """Also compute the teacher-forced loss of the reference answers (one more forward pass per record)."""
    icl_pool: str = ""
    """In-context-learning mode: file of the records (a selected subset) from which each query gets its K most similar records as examples; empty: answer
    each query alone."""
    k: int = setting(3, at_least=1)
    """In-context-learning mode: examples per query (the K pool records most similar to it by embedding cosine)."""
    icl_max_length: int = setting(1024, at_least=1)
    """In-context-learning mode: most tokens of a prompt with its examples (the least similar examples are dropped to fit)."""
    judge: JudgeSettings = setting(factory=JudgeSettings)
    """The LLM judge that scores each answer 1–5 against the reference (off by default)."""


@dataclass
class EvaluationResult:
    """Mean metrics (``metrics``) and one row per record (``examples``: prediction and its scores)."""

    metrics: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"metrics": self.metrics, "examples": self.examples}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure per pair (``rouge_score.rouge_scorer`` with stemming), shape (n,)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(reference, prediction)["rougeL"].fmeasure
                     for prediction, reference in zip(predictions, references)], dtype=np.float64)


def embedding_cosines(predictions: Sequence[str], references: Sequence[str], *, embedder: str = BUNDLED_EMBEDDER,
                      device: str = "auto") -> np.ndarray:
    """Cosine of the L2-normalised sentence embeddings of each (prediction, reference) pair, shape (n,)."""
    from nncift.models.embeddings import embed_texts

    if not predictions:
        return np.zeros(0)
    vectors = embed_texts(list(predictions) + list(references), model=embedder, device=device, progress=False)
    n = len(predictions)
    return np.einsum("ij,ij->i", vectors[:n], vectors[n:]).astype(np.float64)


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def reference_losses(model: Any, tokenizer: Any, records: Sequence[Record], settings: EvaluateSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per record: summed cross-entropy of the reference answer (+ EOS) and its token count, each (n,)."""
    chat = uses_chat_template(tokenizer, settings.chat_template)
    return example_losses(model, tokenizer, [encode_example(tokenizer, record, settings.max_length, chat=chat) for record in records], settings)


def example_losses(model: Any, tokenizer: Any, examples: Sequence[Any], settings: EvaluateSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per encoded example (:class:`nncift.downstream.finetune.EncodedExample`): summed cross-entropy of its labelled tokens and their count."""
    import torch

    sums, counts = np.zeros(len(examples)), np.zeros(len(examples), dtype=np.int64)
    with torch.no_grad():
        for batch in _batches_by_length([len(e.input_ids) for e in examples], settings.batch_size):
            chosen = [examples[i] for i in batch]
            sums[batch] = response_loss(model, collate(chosen, tokenizer.pad_token_id), reduction="none").double().cpu().numpy()
            counts[batch] = [sum(label != -100 for label in e.labels[1:]) for e in chosen]
    return sums, counts


def generate_answers(model: Any, tokenizer: Any, records: Sequence[Record], settings: EvaluateSettings) -> list[str]:
    """Greedy answers to the records' prompts (batched, left-padded), special tokens removed."""
    chat = uses_chat_template(tokenizer, settings.chat_template)
    room = max(1, settings.max_length - settings.max_new_tokens)
    return generate_from_prompts(model, tokenizer, [prompt_ids(tokenizer, record, chat=chat)[-room:] for record in records], settings)


def generate_from_prompts(model: Any, tokenizer: Any, prompts: Sequence[list[int]], settings: EvaluateSettings) -> list[str]:
    """Greedy answers to prompts given as token ids (batched by length, left-padded), special tokens removed."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    answers = [""] * len(prompts)
    batches = _batches_by_length([len(p) for p in prompts], settings.batch_size)
    for batch in tqdm(batches, desc="generating", unit="batch", disable=settings.quiet):
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]):] = 1
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
    return answers


def evaluate_records(model: Any, tokenizer: Any, records: Sequence[Record], settings: EvaluateSettings, *,
                     judge_cache: str | Path | None = None) -> EvaluationResult:
    """All metrics of ``model`` on ``records`` (means in ``metrics``, per record in ``examples``); ``judge_cache``: see
    :func:`score_answers`."""
    if not records:
        raise InputError("no records to evaluate on")
    start = time.perf_counter()
    model.eval()
    sums, counts = reference_losses(model, tokenizer, records, settings) if settings.with_loss else (None, None)
    answers = generate_answers(model, tokenizer, records, settings)
    return score_answers(records, answers, sums, counts, settings, start, judge_cache=judge_cache)


def default_judge_cache() -> Path:
    """Where judgements are cached when no evaluation folder is given: ``$NNCIFT_CACHE/judge/judgements.jsonl``."""
    return cache_dir() / "judge" / "judgements.jsonl"


def score_answers(records: Sequence[Record], answers: Sequence[str], loss_sums: np.ndarray | None, loss_counts: np.ndarray | None,
                  settings: EvaluateSettings, start: float, *, judge_cache: str | Path | None = None) -> EvaluationResult:
    """The metrics of generated ``answers`` against the records' outputs (loss None when not computed); ``start``: perf_counter at the start.

    With the judge on, its judgements are cached in ``judge_cache`` (JSON lines; default :func:`default_judge_cache`)."""
    references = [record.output for record in records]
    rouge = rouge_l_scores(answers, references)
    cosine = embedding_cosines(answers, references, embedder=settings.embedder, device=settings.device)
    exact = np.array([exact_match(a, r) for a, r in zip(answers, references)])
    has_loss = loss_sums is not None and loss_counts is not None
    sums: np.ndarray = loss_sums if loss_sums is not None and has_loss else np.full(len(records), np.nan)
    counts: np.ndarray = loss_counts if loss_counts is not None and has_loss else np.ones(len(records), dtype=np.int64)
    metrics = {
        "n": len(records),
        "loss": float(sums.sum() / max(1, counts.sum())) if has_loss else None,
        "rouge_l": float(rouge.mean()),
        "embedding_cosine": float(cosine.mean()),
        "exact_match": float(exact.mean()),
        "empty_answers": sum(not a for a in answers),
        "seconds": round(time.perf_counter() - start, 3),
    }
    examples = [
        {"source": record.source, "task": record.task, "reference": record.output, "prediction": answer,
         "loss": float(s / max(1, c)) if has_loss else None, "rouge_l": float(r), "embedding_cosine": float(e), "exact_match": float(x)}
        for record, answer, s, c, r, e, x in zip(records, answers, sums, counts, rouge, cosine, exact)
    ]
    result = EvaluationResult(metrics, examples)
    if settings.judge.mode != "off":
        add_judgements(result, records, settings, judge_cache=judge_cache)
    return result


def add_judgements(result: EvaluationResult, records: Sequence[Record], settings: EvaluateSettings, *,
                   judge_cache: str | Path | None = None) -> EvaluationResult:
    """Judge each example's prediction against its reference (``settings.judge``): ``judge_score`` and ``judge_output`` per
    example, the judge's metrics (:meth:`nncift.downstream.judge.JudgeOutcome.metrics`) in ``result.metrics``, and the time
    added to its ``seconds``. Judgements are cached in ``judge_cache`` (default :func:`default_judge_cache`)."""
    start = time.perf_counter()
    judge = make_judge(settings.judge, device=settings.device, dtype=settings.dtype, trust_remote_code=settings.trust_remote_code,
                       quiet=settings.quiet)
    outcome = judge_answers([record.query for record in records], [row["reference"] for row in result.examples],
                            [row["prediction"] for row in result.examples], settings.judge, judge=judge,
                            cache=judge_cache or default_judge_cache())
    seconds = time.perf_counter() - start
    result.metrics.update(outcome.metrics())
    result.metrics["judge"]["seconds"] = round(seconds, 3)
    result.metrics["seconds"] = round(result.metrics.get("seconds", 0.0) + seconds, 3)
    for row, score, output in zip(result.examples, outcome.scores, outcome.outputs):
        row.update(judge_score=score, judge_output=output)
    return result


def load_model_for_evaluation(settings: EvaluateSettings) -> tuple[Any, Any]:
    """The base model with the adapter merged in (when one is given), in eval mode, and its tokenizer."""
    from nncift.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(settings.model, device=settings.device, dtype=settings.dtype,
                                      trust_remote_code=settings.trust_remote_code)
    if settings.adapter:
        from peft import PeftModel

        if not (Path(settings.adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{settings.adapter}: no adapter_config.json (expected a folder from `nncift finetune`)")
        model = PeftModel.from_pretrained(model, settings.adapter).merge_and_unload()
    return model.eval(), tokenizer
