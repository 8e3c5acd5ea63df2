"""SelectIT (arXiv 2402.16705): the model rates each instruction/response pair itself (docs/methods.md §3).

Three levels of "self-reflection", all from one forward pass per (model, rating instruction, example):

- **Token level.** The rating prompt (:func:`nncift.data.templates.selectit_prompt`) ends with the cue
  ``"\\nThe answer is: \\n"``. At its last position we read the next-token probabilities ``P_k`` of the
  rating tokens ``"1".."5"`` (ids looked up in the tokenizer in use, :func:`rating_token_ids`) and
  renormalise them, ``P′_k = P_k / Σ_j P_j``. With ``k*`` the rating (1..R) of the most likely token,
  the token-level score is ``S_token = k* · (1/(R−1)) · Σ_i |P′_i − P′_{k*}|``: the rating, times the
  mean gap between the chosen rating's probability and the others (a confident rating keeps most of
  its value; a near-uniform one shrinks toward 0). Range ``[0, R]``; ties in the argmax go to the
  lower rating. This is the paper's formula and our reading of "argmax_k P′_k" in it: the argmax is
  the rating *value* ``k*`` (the reference multiplies by ``argmax + 1``), not the probability.
- **Sentence level.** The same pair is rated under ``K`` paraphrased rating instructions
  (:data:`nncift.data.templates.SELECTIT_RATING_INSTRUCTIONS`, default all 5):
  ``S_sent = mean(S_token) / (1 + α · std(S_token))``, population std, ``α = 0.2``.
- **Model level.** Several models (e.g. sizes of one family) rate the same pairs:
  ``S = Σ_m (θ_m / Σ θ) · S_sent,m`` with ``θ_m`` the parameter count read from the loaded model
  (the reference hard-codes weights that do not even sum to 1).

``form="reference"``: the two public reference copies differ here. Both compute ``exp(P′_k)`` for a
second softmax, ``P″ = softmax(P′)``, before the formula above; one public copy (the SelectIT
authors' repository) discards that result, so its scores equal the paper form, while the other (the
NN-CIFT authors' copy) applies it. nncift follows the paper by default (``form="paper"``, no second
softmax); ``form="reference"`` applies the second softmax, as the NN-CIFT authors' copy does, which
flattens the distribution (every gap shrinks, the argmax is unchanged): scores shrink toward 0 and
their ranks may change slightly.

Differences from the reference, on purpose: token ids are looked up in the tokenizer in use (the
reference hard-codes Llama-2 ids); batches are packed by a token budget with right padding (scores do
not depend on the batch); a forward pass that fails is retried example by example and, if it still
fails, that example alone gets NaN with the reason in :attr:`failures` (the reference printed the
exception and appended nothing, so every later score moved onto the wrong example).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.data.templates import SELECTIT_RATING_INSTRUCTIONS, selectit_prompt
from nncift.influence.base import PointwiseInfluence
from nncift.influence.settings import SelectITSettings
from nncift.influence.token_batches import plan_token_batches, right_padded, shorten_middle
from nncift.models.loading import ModelError, load_causal_lm
from nncift.settings.choices import SELECTIT_FORMS as FORMS
from nncift.settings.stages import RunContext

RATINGS: tuple[str, ...] = ("1", "2", "3", "4", "5")
"""The rating tokens, lowest first: rating value k is ``RATINGS[k - 1]``."""


# ----------------------------------------------------------------------------------------------
# the formulas (plain arrays in, plain arrays out)


def token_level_scores(probabilities: np.ndarray, form: str = "paper") -> np.ndarray:
    """Token-level scores from raw rating-token probabilities.

    Args:
        probabilities: ``(..., R)`` next-token probabilities of the ratings 1..R (not renormalised).
        form: ``paper`` (P′ = P / ΣP) or ``reference`` (P″ = softmax(P′)); see the module docstring.

    Returns:
        ``(...)`` float64: ``k* · Σ_i |P′_i − P′_{k*}| / (R − 1)``; NaN where a row holds NaN.
    """
    raw = np.asarray(probabilities, dtype=np.float64)
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got '{form}'")
    n_ratings = raw.shape[-1]
    renormalised = raw / raw.sum(axis=-1, keepdims=True)
    if form == "reference":
        shifted = np.exp(renormalised - renormalised.max(axis=-1, keepdims=True))
        renormalised = shifted / shifted.sum(axis=-1, keepdims=True)
    valid = np.isfinite(renormalised).all(axis=-1)
    best = np.argmax(np.where(np.isfinite(renormalised), renormalised, -np.inf), axis=-1)
    best_probability = np.take_along_axis(renormalised, best[..., None], axis=-1)
    mean_gap = np.abs(renormalised - best_probability).sum(axis=-1) / (n_ratings - 1)
    return np.where(valid, (best + 1) * mean_gap, np.nan)


def sentence_level_scores(token_scores: np.ndarray, alpha: float = 0.2) -> np.ndarray:
    """``(n, K)`` token-level scores under K rating instructions → ``(n,)`` mean / (1 + α·std), std with ddof 0."""
    scores = np.asarray(token_scores, dtype=np.float64)
    return scores.mean(axis=-1) / (1.0 + alpha * scores.std(axis=-1))


def model_weights(parameter_counts: Sequence[int]) -> np.ndarray:
    """Model-level weights ``θ_m / Σ θ`` from parameter counts, float64 ``(n_models,)``."""
    counts = np.asarray(parameter_counts, dtype=np.float64)
    if counts.size == 0 or (counts <= 0).any():
        raise ValueError(f"parameter counts must be positive, got {list(parameter_counts)}")
    return counts / counts.sum()


def selectit_scores(probabilities: Sequence[np.ndarray], weights: np.ndarray, *, alpha: float = 0.2, form: str = "paper") -> np.ndarray:
    """Model-level SelectIT scores.

    Args:
        probabilities: one ``(n, K, R)`` array per model: raw probabilities of the R rating tokens for
            n examples under K rating instructions (NaN rows where a forward pass failed).
        weights: ``(n_models,)`` model weights summing to 1 (:func:`model_weights`).
        alpha: sentence-level std weight.
        form: token-level form.

    Returns:
        ``(n,)`` float64 scores, NaN for an example with any failed rating.
    """
    if len(probabilities) != len(weights):
        raise ValueError(f"{len(probabilities)} probability arrays for {len(weights)} model weights")
    total = np.zeros(np.asarray(probabilities[0]).shape[0], dtype=np.float64)
    for weight, model_probabilities in zip(weights, probabilities):
        total += weight * sentence_level_scores(token_level_scores(model_probabilities, form), alpha)
    return total


# ----------------------------------------------------------------------------------------------
# models and tokenizers


def rating_token_ids(tokenizer: Any, ratings: Sequence[str] = RATINGS, *, name: str = "") -> list[int]:
    """Ids of the single tokens that spell each rating, looked up in ``tokenizer``.

    The vocabulary entry spelled exactly like the rating is used; otherwise the rating must encode to
    one token that is not the unknown token. Raises ``ValueError`` naming the rating otherwise.
    """
    vocabulary = tokenizer.get_vocab()
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for rating in ratings:
        token_id = vocabulary.get(rating)
        if token_id is None:
            encoded = tokenizer.encode(rating, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] != unknown:
                token_id = encoded[0]
            else:
                raise ModelError(
                    f"the tokenizer{f' of {name!r}' if name else ''} has no single token for the rating "
                    f"'{rating}' (it encodes to {encoded}{', the unknown token' if unknown in encoded else ''}); "
                    f"SelectIT reads the next-token probabilities of the single-token ratings "
                    f"{', '.join(ratings)}: use a model whose tokenizer has single-digit tokens")
        ids.append(int(token_id))
    if len(set(ids)) != len(ids):
        raise ModelError(f"the tokenizer{f' of {name!r}' if name else ''} maps different ratings to one token: {ids}")
    return ids


def parameter_count(model: Any) -> int:
    """Number of parameters of a loaded model (shared, e.g. tied, tensors counted once)."""
    return int(sum(parameter.numel() for parameter in model.parameters()))


@dataclass
class Rater:
    """One loaded rating model with what SelectIT needs from it."""

    name: str
    model: Any
    tokenizer: Any
    rating_ids: list[int]
    parameters: int
    max_length: int
    """Longest prompt fed to the model (0: no limit)."""

    @classmethod
    def load(cls, name: str, settings: SelectITSettings, run: RunContext) -> "Rater":
        """Load ``name`` on the run's device and dtype, and look up its rating tokens (clear error if it has none)."""
        import torch

        torch.manual_seed(run.seed)
        model, tokenizer = load_causal_lm(name, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
        rating_ids = rating_token_ids(tokenizer, name=name)
        positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        limit = settings.max_length
        if limit > 0 and positions:
            limit = min(limit, int(positions))
        return cls(name, model, tokenizer, rating_ids, parameter_count(model), limit)

    def prompt_ids(self, record: Record, instruction: str) -> tuple[list[int], bool]:
        """Token ids of the rating prompt (shortened in the middle if too long) and whether it was shortened."""
        ids = list(self.tokenizer(selectit_prompt(instruction, record))["input_ids"])
        shortened = shorten_middle(ids, self.max_length)
        return shortened, len(shortened) < len(ids)

    def forward(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Next-token probabilities of the ratings after each sequence: float64 ``(len(sequences), R)``."""
        import torch

        input_ids, attention_mask = right_padded(sequences, int(self.tokenizer.pad_token_id or 0))
        device = next(self.model.parameters()).device
        last = torch.as_tensor([len(sequence) - 1 for sequence in sequences], device=device)
        with torch.inference_mode(), _logits_only_at(self.model, last):
            logits = self.model(input_ids=torch.from_numpy(input_ids).to(device),
                                attention_mask=torch.from_numpy(attention_mask).to(device), use_cache=False).logits
        if logits.shape[1] != 1:  # the output layer saw every position: pick each row's last one
            logits = logits[torch.arange(len(sequences), device=logits.device), last.to(logits.device)][:, None]
        probabilities = torch.softmax(logits[:, -1].float(), dim=-1)[:, self.rating_ids]
        return probabilities.double().cpu().numpy()


@contextmanager
def _logits_only_at(model: Any, positions: Any) -> Iterator[None]:
    """Feed the output layer only each row's hidden state at ``positions`` (no full-vocabulary logits
    for every position). A model whose logits bypass its output-embedding module gets full logits,
    which :meth:`Rater.forward` then indexes itself."""
    import torch

    head = model.get_output_embeddings()
    if head is None:
        yield
        return

    def keep_last(module: Any, args: tuple) -> tuple | None:
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[1] == 1:
            return None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, positions.to(hidden.device)][:, None], *args[1:])

    handle = head.register_forward_pre_hook(keep_last)
    try:
        yield
    finally:
        handle.remove()


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


# ----------------------------------------------------------------------------------------------
# the influence function


class SelectIT(PointwiseInfluence):
    """SelectIT scores, one per example (higher = better rated); NaN with a reason where rating failed."""

    name: ClassVar[str] = "selectit"
    label_range: ClassVar[tuple[float, float] | None] = None
    """Scores lie in [0, 5], but real ones fill a narrow band of it: labels are min–max scaled."""
    Settings: ClassVar[type] = SelectITSettings

    def prepare(self, records: Sequence[Record], workdir: Path) -> None:
        """Bind the records; the models load on the first :meth:`score`."""
        self._records = list(records)
        self._raters: list[Rater] = []

    @property
    def raters(self) -> list[Rater]:
        """The loaded rating models (loaded on first use)."""
        if not self._raters:
            self._raters = [Rater.load(name, self.settings, self.run) for name in self.settings.model_list(self.run.model)]
        return self._raters

    def model_weights(self) -> dict[str, float]:
        """Model-level weight of each rating model (∝ its parameter count)."""
        weights = model_weights([rater.parameters for rater in self.raters])
        return {rater.name: float(weight) for rater, weight in zip(self.raters, weights)}

    def rating_probabilities(self, indices: np.ndarray) -> list[np.ndarray]:
        """Raw rating-token probabilities, one float64 ``(len(indices), K, R)`` array per model.

        Rows of failed forward passes are NaN; the reason goes to :attr:`failures` under the example's index.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        instructions = SELECTIT_RATING_INSTRUCTIONS[: self.settings.n_instructions]
        results = []
        for rater in self.raters:
            sequences = []
            for index in indices:
                for instruction in instructions:
                    ids, shortened = rater.prompt_ids(self._records[index], instruction)
                    sequences.append(ids)
                    self.counters["shortened_prompts"] += int(shortened)
            probabilities, errors = self._rate(rater, sequences)
            for row, reason in sorted(errors.items()):
                example = int(indices[row // len(instructions)])
                self.failures.setdefault(example, f"{rater.name}, rating instruction {row % len(instructions) + 1}: {reason}")
            results.append(probabilities.reshape(len(indices), len(instructions), len(RATINGS)))
        return results

    def score(self, indices: np.ndarray) -> np.ndarray:
        """float32 SelectIT scores ``(len(indices),)``; NaN where any rating of the example failed."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        probabilities = self.rating_probabilities(indices)
        weights = model_weights([rater.parameters for rater in self.raters])
        scores = selectit_scores(probabilities, weights, alpha=self.settings.alpha, form=self.settings.form)
        failed = np.array([int(index) in self.failures for index in indices], dtype=bool)
        scores[failed] = np.nan
        self.counters["failed_examples"] += int(failed.sum())
        return scores.astype(np.float32)

    def _rate(self, rater: Rater, sequences: list[list[int]]) -> tuple[np.ndarray, dict[int, str]]:
        """Probabilities ``(len(sequences), R)`` by token-budget batches; a failed batch is retried one by one."""
        probabilities = np.full((len(sequences), len(RATINGS)), np.nan)
        errors: dict[int, str] = {}
        for batch in plan_token_batches([len(s) for s in sequences], self.settings.token_budget):
            try:
                probabilities[batch] = self._counted_forward(rater, [sequences[i] for i in batch])
            except Exception as error:  # noqa: BLE001 - any failure is recorded for its examples
                if len(batch) == 1:
                    errors[int(batch[0])] = _describe(error)
                    continue
                self.counters["retried_batches"] += 1
                for row in batch:
                    try:
                        probabilities[row] = self._counted_forward(rater, [sequences[row]])[0]
                    except Exception as single_error:  # noqa: BLE001
                        errors[int(row)] = _describe(single_error)
        for row in range(len(sequences)):
            total = probabilities[row].sum()
            if row not in errors and not (np.isfinite(probabilities[row]).all() and total > 0):
                errors[row] = f"rating probabilities not usable: {probabilities[row].tolist()}"
                probabilities[row] = np.nan
        return probabilities, errors

    def _counted_forward(self, rater: Rater, sequences: list[list[int]]) -> np.ndarray:
        self.counters["forward_passes"] += len(sequences)
        self.counters["tokens"] += sum(len(s) for s in sequences)
        self.counters["padded_tokens"] += len(sequences) * max(len(s) for s in sequences)
        return rater.forward(sequences)

    def close(self) -> None:
        """Drop the models."""
        self._raters = []
        gc.collect()
