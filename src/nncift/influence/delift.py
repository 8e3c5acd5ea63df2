"""DELIFT: the in-context-learning utility of a candidate for a target (docs/methods.md §2).

Entry ``[i, j]`` of the matrix (rows = targets, columns = candidates) is::

    U[i, j] = d_without(i) − d_with(i, j),     d = sqrt(mean_t (1 − p_t)²)

where ``p_t`` is the probability the causal LM gives to token ``t`` of target i's response (and to
the final EOS), predicted from position ``t − 1`` (the logit shift), in one teacher-forced pass
over ``prompt, EOS, response, EOS``. The prompt is the zero-shot prompt of target i for
``d_without`` and the one-shot prompt with candidate j as the example for ``d_with``. Positive
values: showing j helps the model predict i's response. Raw values are returned (no scaling: the
pipeline scales labels to [0, 1] as a separate, recorded step).

**Token sequences.** The prompt text is the template's joint text
(:func:`nncift.data.templates.delift_prompt_with_example`), but it is tokenized in three parts (no special
tokens) whose token lists are concatenated, so that the tokens of the one-shot prefix (instruction +
example j) are the same for every target; a leading BOS is added when the tokenizer adds one itself::

    with example:    [BOS] header  example(j)  query(i)  EOS  response(i)  EOS
    without example: [BOS] zero-shot prompt(i)             EOS  response(i)  EOS

The parts are cut so that their tokens, concatenated, *are* the tokens of the joint prompt text
(``tokenizer(prompt)``), not merely the same text: a byte-level BPE splits ``"\\n\\n\\nQuery"`` into
``"\\n\\n" "\\n" "Query"`` (GPT-2 pre-tokenization) or ``"\\n\\n\\n" "Query"`` (Llama-3 style), while a part
ending in ``"\\n\\n\\n"`` on its own would give one ``"\\n\\n\\n"`` token. Each cut lies in the template's
whitespace between header and example and between example and query: the last ``s`` characters of
that whitespace move to the start of the next part, with ``s`` chosen once per tokenizer
(:func:`part_cuts`, the smallest that makes the parts' tokens equal the joint tokens on a set of probe
records; the SmolLM2/GPT-2 pre-tokenizer needs ``s = 1``, a Llama-3 style one ``s = 0``). Should no cut
work (e.g. a tokenizer that adds a word-start marker to every text), a warning says so and the parts
are cut at ``s = 0``.

**Truncation** (``max_length`` tokens, ``L``; clamped to the model's context). Each part has a fixed
share, so a sequence never exceeds ``L`` and no part depends on the other member of the pair:
the prefix (BOS + header + example) ≤ ``L/2``, the query part ≤ ``L/8``, the response ≤
``L − L/2 − L/8 − 2``; the zero-shot prompt ≤ ``L/2 + L/8``. Prompt parts that are too long lose
their *start* (the end, next to the answer, is kept; the header is never cut); responses lose their
*end*. Truncation works on the parts' tokens, so a truncated sequence is the joint prompt's tokens
with a stretch cut out of the example or the query part (from its start, which may hold the moved
separator whitespace and the ``Example:`` / ``Query:`` label). The response scored for
``d_without`` and ``d_with`` is always the same token list. Every
truncated part is counted once per record in :attr:`Delift.counters` (``truncated_examples``,
``truncated_queries``, ``truncated_prompts``, ``truncated_responses``) and so in the manifest.

**Speed.** Sequences are batched by a token budget (sorted by length). With ``prefix_reuse`` the
prefix of candidate j is run once per block and its key/value cache is shared by all the block's
targets, which run after it (sorted by length, right-padded); the output layer runs only at the
positions that predict scored tokens. ``d_without`` is computed once per target and kept. Skipping
the prefix can at most divide the tokens by ``(prefix + suffix) / suffix`` (about 2.2 for Alpaca-like
records, whose response sits in the suffix and must be run for every pair): see
``bench/bench_delift.py``.

**Cost counters** (summed into the manifest's cost ledger): ``forward_passes`` (LM sequences
scored: N zero-shot + N·M one-shot, the paper's count), ``model_calls`` (batched calls, prefix
passes included), ``prefix_passes``, ``tokens`` (real tokens run through the model),
``padding_tokens``, ``output_positions`` (where the output layer ran),
``tokens_saved_by_prefix_reuse``, ``evaluations`` (matrix entries), the truncation counts, and
``milliseconds_model_load`` / ``milliseconds_without_example`` / ``milliseconds_with_example``.

**Determinism.** A block's values depend only on its target and candidate indices: its batches are
planned from them alone, and ``d_without`` of a block's targets is computed for all of them
together the first time a block of those rows runs. A resumed run therefore reproduces an
uninterrupted one bit for bit when both use the same blocks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Sequence

import numpy as np
from tqdm import tqdm

from nncift.data.records import Record
from nncift.data.templates import delift_example, delift_example_header, delift_prompt_without_example, delift_query_suffix
from nncift.files.errors import InputError
from nncift.files.timing import timed
from nncift.influence.base import PairwiseInfluence
from nncift.influence.lm_scoring import CausalScorer, plan_batches, rms_distance
from nncift.influence.settings import MIN_MAX_LENGTH, DeliftSettings
from nncift.models.loading import ModelError, load_causal_lm
from nncift.settings.stages import RunContext

_MIN_MAX_LENGTH = MIN_MAX_LENGTH


@dataclass(frozen=True)
class LengthShares:
    """Token caps of the parts of a DELIFT sequence for a given ``max_length``."""

    prefix: int
    query: int
    response: int
    prompt_without: int

    @classmethod
    def of(cls, max_length: int) -> "LengthShares":
        """Shares for ``max_length`` tokens: prefix L/2, query L/8, response the rest minus two EOS."""
        if max_length < _MIN_MAX_LENGTH:
            raise ValueError(f"max_length must be at least {_MIN_MAX_LENGTH} tokens, got {max_length}")
        prefix, query = max_length // 2, max_length // 8
        return cls(prefix, query, max_length - prefix - query - 2, prefix + query)


@dataclass(frozen=True)
class TargetTokens:
    """The token lists of one target: its query part, its zero-shot prompt and its response."""

    query: list[int]
    prompt_without: list[int]
    response: list[int]

    @property
    def n_scored(self) -> int:
        """Scored tokens: the response and the final EOS."""
        return len(self.response) + 1


_PROBE_RECORDS = (
    Record("Name a colour.", "", "Blue"),
    Record("Add the numbers.", "12 and 30", "42"),
    Record("Explain photosynthesis briefly", "", "Plants turn light, water and CO2 into sugar and oxygen."),
    Record("(Optional) rewrite", " a text with a leading space", "\"Done.\""),
    Record("List two fruits:", "", "- apple\n- pear\n"),
    Record("Echo", "", "ends with a space "),
)
"""Targets and candidates on which :func:`part_cuts` checks that the parts' tokens are the joint tokens."""


def _trailing_whitespace(text: str) -> str:
    return text[len(text.rstrip()) :]


def part_cuts(encode: Any, probes: Sequence[Record] = _PROBE_RECORDS) -> tuple[int, int] | None:
    """Characters ``(s_header, s_example)`` to move from the end of the header and of the example part
    to the start of the next part, so that the three parts' tokens concatenated equal the tokens of
    the joint one-shot prompt for every pair of probe records; None when no cut does.

    The moved characters come only from the template's fixed trailing whitespace (``"\\n\\n\\n"``),
    so they are the same for every candidate. Smallest total first, then smallest ``s_header``.
    """
    header = delift_example_header()
    header_room = len(_trailing_whitespace(header))
    example_room = len(_trailing_whitespace(delift_example(Record("x", "", "y"))))
    examples = [delift_example(r) for r in probes]
    queries = [delift_query_suffix(r) for r in probes]
    joint = {(e, q): encode(header + e + q) for e in examples for q in queries}
    for s_header, s_example in sorted(((a, b) for a in range(header_room + 1) for b in range(example_room + 1)),
                                      key=lambda ab: (ab[0] + ab[1], ab[0])):
        head = encode(header[: len(header) - s_header])
        parts = {e: encode(header[len(header) - s_header :] + e[: len(e) - s_example]) for e in examples}
        tails = {q: encode(examples[0][len(examples[0]) - s_example :] + q) for q in queries}
        if all(head + parts[e] + tails[q] == ids for (e, q), ids in joint.items()):
            return s_header, s_example
    return None


def keep_end(tokens: list[int], cap: int) -> tuple[list[int], bool]:
    """The last ``cap`` tokens (prompt parts lose their start) and whether anything was cut."""
    return (tokens[len(tokens) - cap :], True) if len(tokens) > cap else (tokens, False)


def keep_start(tokens: list[int], cap: int) -> tuple[list[int], bool]:
    """The first ``cap`` tokens (responses lose their end) and whether anything was cut."""
    return (tokens[:cap], True) if len(tokens) > cap else (tokens, False)


class Delift(PairwiseInfluence):
    """DELIFT utility ``U[i, j] = d_without(i) − d_with(i, j)``; rows = targets, columns = candidates."""

    name: ClassVar[str] = "delift"
    label_range: ClassVar[tuple[float, float] | None] = None
    Settings: ClassVar[type] = DeliftSettings
    cost_per: ClassVar[str] = "pair"
    default_sampling_blocks: ClassVar[int] = 4
    network_input: ClassVar[str] = "text+response"
    """DELIFT costs one LM pass per pair: the same pairs in 4 blocks over twice the records cost about the
    same and gave the higher f_gain at u = 0.05 on the benchmarks (BENCHMARKS.md)."""

    def __init__(self, settings: DeliftSettings, *, run: RunContext | None = None, progress: bool = True):
        super().__init__(settings, run=run, progress=progress)
        self._targets: list[Record] = []
        self._candidates: list[Record] = []
        self._model: Any = None
        self._tokenizer: Any = None
        self._scorer: CausalScorer | None = None
        self._target_tokens: dict[int, TargetTokens] = {}
        self._prefix_tokens: dict[int, list[int]] = {}
        self._d_without: dict[int, float] = {}
        self.max_length: int = settings.max_length
        """``settings.max_length``, clamped to the model's context length once the model is loaded."""

    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        """Bind targets and candidates; the model is loaded on first use, texts tokenized per index."""
        self._targets, self._candidates = list(targets), list(candidates)
        self._target_tokens.clear()
        self._prefix_tokens.clear()
        self._d_without.clear()

    # -- model and tokens -------------------------------------------------------------------------

    @property
    def scorer(self) -> CausalScorer:
        """The causal LM wrapped for batched scoring (loaded on first use)."""
        if self._scorer is None:
            with self._timed("milliseconds_model_load"):
                self._load()
        return self._scorer  # type: ignore[return-value]

    @property
    def tokenizer(self) -> Any:
        """The causal LM's tokenizer (loaded with the model on first use)."""
        self.scorer  # noqa: B018 - loads model and tokenizer
        return self._tokenizer

    def _load(self) -> None:
        import torch

        torch.manual_seed(self.run.seed)
        s, run = self.settings, self.run
        self._model, self._tokenizer = load_causal_lm(run.model, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
        if self._tokenizer.eos_token_id is None:
            raise ModelError(f"the tokenizer of {run.model} has no EOS token, which DELIFT sequences need")
        config = self._model.config
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = min(s.max_length, int(context)) if context else s.max_length
        self._shares = LengthShares.of(self.max_length)
        self._lead = self._leading_tokens()
        cuts = part_cuts(self._encode)
        if cuts is None:
            warnings.warn(f"the tokenizer of {run.model} tokenizes the DELIFT one-shot prompt's parts differently from "
                          "the joint prompt at every cut tried; the parts are cut at the template's boundaries", stacklevel=2)
            cuts = (0, 0)
        self.part_cuts: tuple[int, int] = cuts
        """Characters moved from the end of the header / example part to the next part (:func:`part_cuts`)."""
        header = delift_example_header()
        self._header = self._encode(header[: len(header) - cuts[0]])
        self._header_tail = header[len(header) - cuts[0] :]
        example = delift_example(Record("x", "", "y"))
        self._example_tail = example[len(example) - cuts[1] :]
        if len(self._lead) + len(self._header) + 8 > self._shares.prefix:
            raise InputError(f"max_length {self.max_length} leaves no room for the example; use a larger --max-length")
        self._scorer = CausalScorer(self._model, self._tokenizer.pad_token_id, self.counters)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _leading_tokens(self) -> list[int]:
        """``[BOS]`` when the tokenizer puts one in front of a text by itself, else nothing."""
        bos = self._tokenizer.bos_token_id
        with_special = self._tokenizer("x", add_special_tokens=True)["input_ids"]
        return [bos] if bos is not None and with_special[:1] == [bos] else []

    def _target(self, index: int) -> TargetTokens:
        if index not in self._target_tokens:
            self.scorer  # noqa: B018 - loads tokenizer and shares
            record, shares = self._targets[index], self._shares
            query, cut_query = keep_end(self._encode(self._example_tail + delift_query_suffix(record)), shares.query)
            prompt, cut_prompt = keep_end(self._encode(delift_prompt_without_example(record)), shares.prompt_without - len(self._lead))
            response, cut_response = keep_start(self._encode(record.output), shares.response)
            self.counters["truncated_queries"] += cut_query
            self.counters["truncated_prompts"] += cut_prompt
            self.counters["truncated_responses"] += cut_response
            self._target_tokens[index] = TargetTokens(query, self._lead + prompt, response)
        return self._target_tokens[index]

    def _prefix(self, index: int) -> list[int]:
        if index not in self._prefix_tokens:
            self.scorer  # noqa: B018
            room = self._shares.prefix - len(self._lead) - len(self._header)
            text = delift_example(self._candidates[index])
            assert text.endswith(self._example_tail)
            example, cut = keep_end(self._encode(self._header_tail + text[: len(text) - len(self._example_tail)]), room)
            self.counters["truncated_examples"] += cut
            self._prefix_tokens[index] = self._lead + self._header + example
        return self._prefix_tokens[index]

    def _suffix(self, target: TargetTokens) -> list[int]:
        eos = self._tokenizer.eos_token_id
        return target.query + [eos] + target.response + [eos]

    def sequence_without(self, target_index: int) -> tuple[list[int], int]:
        """Token ids of target i's zero-shot sequence and how many trailing tokens are scored."""
        target = self._target(target_index)
        eos = self._tokenizer.eos_token_id
        return target.prompt_without + [eos] + target.response + [eos], target.n_scored

    def sequence_with(self, target_index: int, candidate_index: int) -> tuple[list[int], int]:
        """Token ids of target i's one-shot sequence with candidate j, and the scored count."""
        target = self._target(target_index)
        return self._prefix(candidate_index) + self._suffix(target), target.n_scored

    # -- the computation --------------------------------------------------------------------------

    def response_log_probabilities(self, target_indices: np.ndarray, candidate_index: int | None = None) -> list[np.ndarray]:
        """``log p_t`` of each target's scored tokens (response + final EOS), one float64 array per target.

        Without example when ``candidate_index`` is None, else with candidate j as the example
        (through its reused prefix cache when ``prefix_reuse`` is set).
        """
        if candidate_index is None:
            return self._plain([self.sequence_without(int(i)) for i in target_indices])
        if not self.settings.prefix_reuse:
            return self._plain([self.sequence_with(int(i), int(candidate_index)) for i in target_indices])
        targets = [self._target(int(i)) for i in target_indices]
        suffixes = [self._suffix(t) for t in targets]
        batches = plan_batches([len(s) for s in suffixes], self.settings.token_budget)
        return self._after_prefix(self._prefix(int(candidate_index)), suffixes, [t.n_scored for t in targets], batches)

    def d_without(self, target_indices: np.ndarray) -> np.ndarray:
        """``d_without`` of the given targets, float64 ``(len,)``; computed once per target and kept."""
        missing = sorted({int(i) for i in target_indices} - set(self._d_without))
        if missing:
            self.scorer  # noqa: B018 - loads the model (timed on its own)
            with self._timed("milliseconds_without_example"):
                for index, log_p in zip(missing, self.response_log_probabilities(np.array(missing))):
                    self._d_without[index] = rms_distance(np.exp(log_p))
            self.counters["forward_passes"] += len(missing)
        return np.array([self._d_without[int(i)] for i in target_indices], dtype=np.float64)

    def d_with(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """``d_with`` of every (target, candidate) pair, float64 ``(len(targets), len(candidates))``."""
        self.scorer  # noqa: B018 - loads the model (timed on its own)
        with self._timed("milliseconds_with_example"):
            distances = self._d_with(target_indices, candidate_indices)
        self.counters["forward_passes"] += distances.size
        return distances

    def _d_with(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        distances = np.empty((len(target_indices), len(candidate_indices)), dtype=np.float64)
        if self.settings.prefix_reuse:
            targets = [self._target(int(i)) for i in target_indices]
            suffixes, n_scored = [self._suffix(t) for t in targets], [t.n_scored for t in targets]
            batches = plan_batches([len(s) for s in suffixes], self.settings.token_budget)
            with tqdm(total=distances.size, desc="delift pairs", unit="pair", disable=not self.progress, leave=False) as bar:
                for col, candidate in enumerate(candidate_indices):  # the bar moves once per candidate
                    log_ps = self._after_prefix(self._prefix(int(candidate)), suffixes, n_scored, batches)
                    distances[:, col] = [rms_distance(np.exp(log_p)) for log_p in log_ps]
                    bar.update(len(target_indices))
        else:  # every pair of the block in one list, packed by length across candidates
            pairs = [(row, col) for row in range(len(target_indices)) for col in range(len(candidate_indices))]
            sequences = [self.sequence_with(int(target_indices[r]), int(candidate_indices[c])) for r, c in pairs]
            for (row, col), log_p in zip(pairs, self._plain(sequences)):
                distances[row, col] = rms_distance(np.exp(log_p))
        return distances

    def _plain(self, sequences: list[tuple[list[int], int]]) -> list[np.ndarray]:
        """Log-probabilities of each (ids, n_scored) sequence, batched by the token budget."""
        results: list[np.ndarray] = [np.empty(0)] * len(sequences)
        for batch in plan_batches([len(ids) for ids, _ in sequences], self.settings.token_budget):
            values = self.scorer.log_probabilities([sequences[k][0] for k in batch], [sequences[k][1] for k in batch])
            for k, log_p in zip(batch, values):
                results[k] = log_p
        return results

    def _after_prefix(self, prefix: list[int], suffixes: list[list[int]], n_scored: list[int], batches: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probabilities of suffixes run after one prefix whose key/value cache is computed once."""
        state = self.scorer.prefix_state(prefix)
        results: list[np.ndarray] = [np.empty(0)] * len(suffixes)
        for batch in batches:
            values = self.scorer.log_probabilities([suffixes[k] for k in batch], [n_scored[k] for k in batch], prefix=state)
            for k, log_p in zip(batch, values):
                results[k] = log_p
        self.counters["tokens_saved_by_prefix_reuse"] += len(prefix) * (len(suffixes) - 1)
        return results

    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """Raw utilities ``U[i, j]``, float32 ``(len(target_indices), len(candidate_indices))``."""
        target_indices = self._checked(target_indices, len(self._targets), "target")
        candidate_indices = self._checked(candidate_indices, len(self._candidates), "candidate")
        if len(target_indices) == 0 or len(candidate_indices) == 0:
            return np.zeros((len(target_indices), len(candidate_indices)), dtype=np.float32)
        without = self.d_without(target_indices)
        with_example = self.d_with(target_indices, candidate_indices)
        self.counters["evaluations"] += with_example.size
        return (without[:, None] - with_example).astype(np.float32)

    def _timed(self, counter: str) -> ContextManager[None]:
        """Add the wall time of the block, in milliseconds, to ``self.counters[counter]``."""
        return timed(lambda seconds: self.counters.update({counter: int(round(1000 * seconds))}))

    @staticmethod
    def _checked(indices: np.ndarray, size: int, what: str) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"{what} index out of range 0..{size - 1}: {indices.min()}..{indices.max()}")
        return indices

    def close(self) -> None:
        """Drop the model and the caches."""
        self._model = self._tokenizer = self._scorer = None
        self._target_tokens.clear()
        self._prefix_tokens.clear()
