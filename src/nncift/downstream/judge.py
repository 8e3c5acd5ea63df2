"""LLM-as-a-judge: each generated answer scored 1–5 against the reference by a judge model (docs/methods.md §6.1).

The judge is any causal LM (a Hugging Face id or path; the bundled SmolLM2 by default), loaded as ``evaluate`` loads its
model, or an OpenAI-compatible chat-completions endpoint (``--judge.endpoint URL``; the key is read from the environment
variable that ``judge.api_key_env`` names and is never written anywhere). The prompt (:data:`JUDGE_PROMPT`, version
:data:`PROMPT_VERSION`) states the question, the reference answer, the candidate answer and the rubric, and asks for a
single digit. Two modes:

- ``generate``: greedy decoding of at most ``max_new_tokens`` tokens, parsed strictly by :func:`parse_score`; a judgement
  that does not parse is counted and reported (``judge_unparseable``), never dropped silently or given a default score;
- ``constrained``: one forward pass; the score is the most likely of the tokens ``1``..``5`` at the answer's first position
  (a local model only; it can never be unparseable).

Judgements are cached per (judge, prompt version, mode, question, reference, answer) in a JSON-lines file
(:class:`JudgementCache`): a re-run reuses them without calling the judge; a line torn by a kill is counted and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from nncift.files.errors import UserError
from nncift.settings.choices import BUNDLED_LM, JUDGE_MODES
from nncift.settings.fields import Checked, SettingsError, check_settings, setting

PROMPT_VERSION = "judge-v1"
"""Version of :data:`JUDGE_PROMPT` and of the way it is filled in: part of every cache key."""

JUDGE_PROMPT = """You are grading a candidate answer to a question by comparing it with a reference answer.

Question:
{question}

Reference answer:
{reference}

Candidate answer:
{candidate}

Rate the candidate answer from 1 to 5:
5 = correct and complete: it says what the reference answer says.
4 = correct, with a small omission or an extra detail that does not change the meaning.
3 = partly correct: some of the reference answer's content is there, some is missing or wrong.
2 = mostly wrong, but on the topic of the question.
1 = wrong, off topic, or empty.

Answer with a single digit (1, 2, 3, 4 or 5) and nothing else."""
"""The judge's prompt (one user turn, the chat template's generation cue after it when the judge has one)."""

MAX_FIELD_CHARACTERS = 1500
"""Question, reference and candidate are each cut to their first this many characters (``…`` marks a cut)."""

_SCORE = re.compile(r"(?:score\s*[:=]\s*)?([1-5])(?:\s*/\s*5)?(?=$|\s|[.,;:)!](?!\d))", re.IGNORECASE)


class JudgeError(UserError, RuntimeError):
    """The judge cannot be used as configured: an endpoint that fails or answers out of protocol, a missing key, a
    tokenizer without single-token digits for ``constrained``."""


@dataclass(frozen=True)
class JudgeSettings(Checked):
    """The LLM judge of ``nncift evaluate`` (``--judge.mode generate``); in YAML under ``judge:``."""

    mode: str = setting("off", choices=JUDGE_MODES)
    """off (no judge: the default, the judge costs a forward pass or a short generation per answer), generate (greedy answer,
    parsed strictly) or constrained (the most likely of the tokens 1..5; a local model only)."""
    model: str = BUNDLED_LM
    """Judge model: a causal LM id or path, or with judge.endpoint the model name sent to the endpoint."""
    endpoint: str = ""
    """OpenAI-compatible endpoint (http(s)://HOST/v1, or its /chat/completions URL); empty: the local judge model."""
    api_key_env: str = ""
    """Name of the environment variable that holds the endpoint's key (sent as a Bearer token, never stored); empty: no key."""
    max_new_tokens: int = setting(8, at_least=1)
    """generate: most tokens of a judgement (the score is its first token)."""
    batch_size: int = setting(8, at_least=1)
    """Judgements per model call (local), or requests in flight at once (endpoint)."""
    timeout: float = setting(120.0, above=0)
    """Endpoint: seconds to wait for one answer."""

    def __post_init__(self) -> None:
        """Check every field, then the combinations: an endpoint needs a mode that uses it and can only generate."""
        check_settings(self)
        if self.endpoint and not re.match(r"https?://[^\s/]+", self.endpoint):
            raise SettingsError("endpoint", f"expected an http:// or https:// URL, got {self.endpoint!r}")
        if self.endpoint and self.mode == "off":
            raise SettingsError("endpoint", "is set but judge.mode is off: add --judge.mode generate (or drop the endpoint)")
        if self.endpoint and self.mode == "constrained":
            raise SettingsError("mode", "constrained needs the judge's logits, which an endpoint does not give: use generate")


def judge_prompt(question: str, reference: str, candidate: str) -> str:
    """The judge's prompt for one answer (each text cut to :data:`MAX_FIELD_CHARACTERS`)."""
    def cut(text: str) -> str:
        text = text.strip()
        return text if len(text) <= MAX_FIELD_CHARACTERS else text[:MAX_FIELD_CHARACTERS] + "…"
    return JUDGE_PROMPT.format(question=cut(question), reference=cut(reference), candidate=cut(candidate))


def parse_score(text: str) -> int | None:
    """The score of a judgement, or None when it does not parse.

    Strict: after leading white space, the judgement must start with a digit 1–5, optionally written ``Score: 4``
    (``score`` in any case, ``:`` or ``=``) and optionally followed by ``/5``; the digit must end there (end of text,
    white space, or one of ``. , ; : ) !`` not followed by a digit). ``4``, ``4.``, ``4/5``, ``Score: 4``, ``3\\nThe answer…``
    parse; ``45``, ``4.5``, ``0``, ``6``, ``four``, ``**4**``, ``(4)``, ``The score is 4`` do not.
    """
    match = _SCORE.match(text.lstrip())
    return int(match.group(1)) if match else None


# ------------------------------------------------------------------------------------ the cache
def cache_key(judge: str, mode: str, question: str, reference: str, answer: str) -> str:
    """SHA-256 of one judgement's identity: the judge (:meth:`Judge.identity`), the prompt version, the mode (``generate``
    with its token limit) and the texts."""
    payload = json.dumps([PROMPT_VERSION, judge, mode, question, reference, answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgementCache:
    """Judgements in a JSON-lines file, one ``{"key", "score", "output", "judge"}`` per line, appended under a lock.

    Appends are whole lines written at once and flushed to disk; a line torn by a kill (or otherwise unreadable) is counted in
    ``damaged`` and ignored, and the next append starts on a fresh line, so it stays its own line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, tuple[int | None, str]] = {}
        self.damaged = 0
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                self._read_line(line)

    def _read_line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            row = json.loads(line)
            score = row["score"]
            if not (score is None or (isinstance(score, int) and 1 <= score <= 5)) or not isinstance(row["output"], str):
                raise ValueError(line)
            self.entries[str(row["key"])] = (score, row["output"])
        except (ValueError, KeyError, TypeError):
            self.damaged += 1

    def get(self, key: str) -> tuple[int | None, str] | None:
        """(score, raw judgement) stored under ``key``, or None."""
        return self.entries.get(key)

    def append(self, rows: Sequence[tuple[str, int | None, str]], judge: str) -> None:
        """Store ``(key, score, raw judgement)`` rows: one write under an exclusive lock, flushed to disk."""
        if not rows:
            return
        import fcntl

        text = "".join(json.dumps({"key": key, "score": score, "output": output, "judge": judge}, ensure_ascii=False) + "\n"
                       for key, score, output in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a torn last line: keep it apart
                        text = "\n" + text
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self.entries.update((key, (score, output)) for key, score, output in rows)


# ------------------------------------------------------------------------------------ judges
class Judge(Protocol):
    """A judge: the raw judgements of prompts, and a name that changes whenever its judgements could."""

    calls: int
    """Model forward or generation calls (local), or requests (endpoint), made so far."""

    def identity(self) -> str:
        """The judge's part of the cache key (a local model's files' fingerprint; an endpoint's URL and model)."""
        ...

    def judge(self, prompts: Sequence[str], mode: str) -> list[str]:
        """One raw judgement per prompt (``constrained``: the chosen digit)."""
        ...


def files_fingerprint(folder: Path) -> str:
    """SHA-256 (16 hex digits) of a model folder's files: small files whole, large ones (weights) by size, first and last MiB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 4 << 20:
                digest.update(handle.read())
            else:
                digest.update(handle.read(1 << 20))
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def model_identity(name_or_path: str) -> str:
    """``lm:NAME@FINGERPRINT`` of a local judge model (its folder's :func:`files_fingerprint`; a hub id: its cached
    snapshot's), or ``lm:NAME`` for a hub id that is not in the local cache."""
    from nncift.models.loading import resolve_lm

    folder = Path(resolve_lm(name_or_path))
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name_or_path, "config.json")
            folder = Path(found).parent if isinstance(found, str) else folder
        except (ImportError, ValueError):
            pass
    return f"lm:{name_or_path}@{files_fingerprint(folder)}" if folder.is_dir() else f"lm:{name_or_path}"


_LOADED: dict[tuple[str, str, str, bool], tuple[Any, Any]] = {}
"""The judge model last loaded in this process (a sweep judges many subsets with one load)."""


@dataclass
class LocalJudge:
    """A causal LM as the judge, loaded on its first judgement (a run whose judgements are all cached loads nothing)."""

    settings: JudgeSettings
    device: str = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    quiet: bool = True
    calls: int = 0
    _identity: str = ""
    _model: tuple[Any, Any] | None = field(default=None, repr=False)

    def identity(self) -> str:
        """``lm:NAME@FINGERPRINT/DTYPE`` (:func:`model_identity`), computed once."""
        self._identity = self._identity or f"{model_identity(self.settings.model)}/{self.dtype}"
        return self._identity

    def loaded(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the judge, loaded once per process through :func:`nncift.models.loading.load_causal_lm`."""
        if self._model is None:
            from nncift.models.loading import load_causal_lm

            key = (self.settings.model, self.device, self.dtype, self.trust_remote_code)
            if key not in _LOADED:
                _LOADED.clear()
                _LOADED[key] = load_causal_lm(self.settings.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
            self._model = _LOADED[key]
        return self._model

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids of the prompt: a user turn and the generation cue with the chat template, else the plain text."""
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])

    def judge(self, prompts: Sequence[str], mode: str) -> list[str]:
        """Raw judgements, in batches of ``batch_size`` prompts of similar length (left-padded)."""
        import numpy as np
        from tqdm.auto import tqdm

        model, tokenizer = self.loaded()
        ids = [self.prompt_ids(tokenizer, prompt) for prompt in prompts]
        digits = _digit_ids(tokenizer) if mode == "constrained" else []
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = [""] * len(ids)
        batches = [order[i: i + self.settings.batch_size] for i in range(0, len(order), self.settings.batch_size)]
        for batch in tqdm(batches, desc="judging", unit="batch", disable=self.quiet):
            texts = self._batch(model, tokenizer, [ids[i] for i in batch], digits)
            for i, text in zip(batch, texts):
                out[int(i)] = text
        return out

    def _batch(self, model: Any, tokenizer: Any, ids: list[list[int]], digits: list[int]) -> list[str]:
        import torch

        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, prompt in enumerate(ids):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        device = next(model.parameters()).device
        input_ids, mask = input_ids.to(device), mask.to(device)
        self.calls += 1
        with torch.no_grad():
            if digits:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1, digits]
                return [str(int(best) + 1) for best in logits.float().argmax(-1).tolist()]
            from transformers import GenerationConfig

            config = GenerationConfig(max_new_tokens=self.settings.max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            generated = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in generated]


def _digit_ids(tokenizer: Any) -> list[int]:
    """Token ids of ``1``..``5`` (each must be one token for ``constrained``)."""
    ids = []
    for digit in "12345":
        tokens = tokenizer.encode(digit, add_special_tokens=False)
        if len(tokens) != 1:
            raise JudgeError(f"judge.mode constrained: the judge's tokenizer writes '{digit}' as {len(tokens)} tokens; use judge.mode generate")
        ids.append(int(tokens[0]))
    return ids


@dataclass
class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint as the judge (``temperature`` 0, one user turn per judgement)."""

    settings: JudgeSettings
    calls: int = 0

    @property
    def url(self) -> str:
        """The chat-completions URL (``/chat/completions`` added to a base URL)."""
        base = self.settings.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def identity(self) -> str:
        """``endpoint:URL|model:NAME``."""
        return f"endpoint:{self.url}|model:{self.settings.model}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.settings.api_key_env
        if name:
            key = os.environ.get(name, "")
            if not key:
                raise JudgeError(f"judge.api_key_env: the environment variable {name} is not set (it should hold the endpoint's key)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def judge(self, prompts: Sequence[str], mode: str) -> list[str]:
        """Raw judgements, ``batch_size`` requests in flight at once, in the prompts' order."""
        headers = self._headers()
        self.calls += len(prompts)  # one request each (counted here, not in the worker threads)
        with ThreadPoolExecutor(max_workers=self.settings.batch_size) as pool:
            return list(pool.map(lambda prompt: self._ask(prompt, headers), prompts))

    def _ask(self, prompt: str, headers: dict[str, str]) -> str:
        body = json.dumps({"model": self.settings.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.settings.max_new_tokens}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:  # noqa: S310 - the user's http(s) URL
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", errors="replace")[:200].replace("\n", " ")
            raise JudgeError(f"judge endpoint {self.url}: HTTP {error.code} {error.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise JudgeError(f"judge endpoint {self.url}: cannot reach it ({getattr(error, 'reason', error)})") from None
        except ValueError:
            raise JudgeError(f"judge endpoint {self.url}: the answer is not JSON") from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}: no choices[0].message.content in the answer (not an OpenAI-style "
                             "chat completion)") from None
        return content if isinstance(content, str) else ""


# ------------------------------------------------------------------------------------ judging answers
@dataclass
class JudgeOutcome:
    """Per answer the score (None: unparseable) and the raw judgement; how many came from the cache and what ran."""

    scores: list[int | None]
    outputs: list[str]
    identity: str
    mode: str
    reused: int = 0
    calls: int = 0
    damaged_cache_lines: int = 0
    cache: str = ""

    def metrics(self) -> dict[str, Any]:
        """``judge_score`` (mean over the parsed judgements; None when none parsed), ``judge_unparseable`` (count) and its
        share, and ``judge`` (what judged, how many were reused from the cache)."""
        parsed = [score for score in self.scores if score is not None]
        unparseable = len(self.scores) - len(parsed)
        return {"judge_score": sum(parsed) / len(parsed) if parsed else None, "judge_unparseable": unparseable,
                "judge_unparseable_share": unparseable / len(self.scores) if self.scores else 0.0,
                "judge": {"mode": self.mode, "judge": self.identity, "prompt_version": PROMPT_VERSION, "judged": len(self.scores),
                          "reused_from_cache": self.reused, "judge_calls": self.calls, "damaged_cache_lines": self.damaged_cache_lines,
                          "cache": self.cache}}


def make_judge(settings: JudgeSettings, *, device: str = "auto", dtype: str = "float32", trust_remote_code: bool = False,
               quiet: bool = True) -> Judge:
    """The judge the settings describe: :class:`EndpointJudge` with an endpoint, else :class:`LocalJudge`."""
    if settings.endpoint:
        return EndpointJudge(settings)
    return LocalJudge(settings, device=device, dtype=dtype, trust_remote_code=trust_remote_code, quiet=quiet)


def judge_answers(questions: Sequence[str], references: Sequence[str], answers: Sequence[str], settings: JudgeSettings, *,
                  judge: Judge, cache: str | Path) -> JudgeOutcome:
    """Score each answer against its reference with ``judge``, reusing and extending the cache file ``cache``.

    The judge is called only for answers whose judgement is not cached, in chunks of 8 batches, each chunk stored before the
    next (a killed run keeps what it judged).
    """
    if settings.mode == "off":
        raise ValueError("judge_answers called with judge.mode off")
    store = JudgementCache(cache)
    identity = judge.identity()
    variant = f"generate/{settings.max_new_tokens}" if settings.mode == "generate" else settings.mode  # a cut can change a parse
    keys = [cache_key(identity, variant, q, r, a) for q, r, a in zip(questions, references, answers)]
    todo, planned = [], set()
    for i, key in enumerate(keys):  # each missing judgement once, in the answers' order
        if store.get(key) is None and key not in planned:
            todo.append(i)
            planned.add(key)
    reused = sum(store.get(key) is not None for key in keys)
    chunk = settings.batch_size * 8
    for start in range(0, len(todo), chunk):
        chosen = todo[start: start + chunk]
        outputs = judge.judge([judge_prompt(questions[i], references[i], answers[i]) for i in chosen], settings.mode)
        store.append([(keys[i], parse_score(output), output) for i, output in zip(chosen, outputs)], identity)
    stored = [store.get(key) or (None, "") for key in keys]
    return JudgeOutcome([score for score, _ in stored], [output for _, output in stored], identity, settings.mode, reused=reused,
                        calls=judge.calls, damaged_cache_lines=store.damaged, cache=str(store.path))
