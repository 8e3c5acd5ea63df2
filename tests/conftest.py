"""Shared fixtures: offline mode, tiny randomly initialised models with the real SmolLM2 tokenizer,
and the real data in ../shared/data (tests that need it skip with a message when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(relative: str) -> Path:
    """Path of a file in ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embedding caches go to a temporary folder; the converted bundled LM is shared (read-only use)."""
    from nncift.models.loading import bundled_lm_path

    bundled_lm_path()  # convert once into the user's cache before redirecting
    root = tmp_path_factory.mktemp("nncift-cache")
    (root / "models").symlink_to(Path(os.environ.get("NNCIFT_CACHE", Path.home() / ".cache" / "nncift")) / "models")
    os.environ["NNCIFT_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def smollm_dir(isolated_cache: Path) -> Path:
    """The bundled SmolLM2-135M-Instruct converted to safetensors (real weights, real tokenizer)."""
    from nncift.models.loading import bundled_lm_path

    return bundled_lm_path()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, smollm_dir: Path) -> Path:
    """A tiny randomly initialised Llama (2 layers, width 32) with the real SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, smollm_dir: Path) -> Path:
    """A tiny randomly initialised GPT-2 (Conv1D layers) with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def demo_pool():
    """64 built-in demo records (8 task families)."""
    from nncift.data.demo import demo_records

    return demo_records(64, seed=0)
