"""The settings of each influence function: their fields are ``select`` flags and YAML keys.

Kept apart from the functions (which load torch and the models) so that building the command line
and checking settings stay fast. Each function module re-exports its class.
"""

from __future__ import annotations

from dataclasses import dataclass

from nncift.data.templates import SELECTIT_RATING_INSTRUCTIONS
from nncift.settings.choices import ADAM_FORMS, BUNDLED_EMBEDDER, BUNDLED_LM, COMPRESSORS, SELECTIT_FORMS

MIN_MAX_LENGTH = 64
"""Fewest tokens of one DELIFT sequence (``max_length``)."""


@dataclass(frozen=True)
class DeliftSettings:
    """Settings of DELIFT (in-context-learning utility with a causal LM)."""

    model: str = BUNDLED_LM
    """Causal LM id or path that scores the responses (default the bundled SmolLM2-135M-Instruct)."""
    device: str = "auto"
    """Device for the causal LM: auto, cpu, cuda."""
    dtype: str = "float32"
    """Causal LM weights and activations: float32, bfloat16, float16."""
    max_length: int = 2048
    """Most tokens in one DELIFT sequence (prefix ≤ 1/2, query ≤ 1/8, response the rest); truncations are counted."""
    token_budget: int = 2048
    """Padded tokens per forward batch (rows × longest row) for the DELIFT passes."""
    prefix_reuse: bool = True
    """Compute each candidate's one-shot prefix once per block and reuse its key/value cache for all targets."""
    trust_remote_code: bool = False
    """Run code shipped with the model (explicit opt-in only)."""
    seed: int = 0
    """Seed (DELIFT itself is deterministic; recorded for the run)."""

    def __post_init__(self) -> None:
        """Refuse a ``max_length`` too short for DELIFT's sequence (before any file is written)."""
        if isinstance(self.max_length, int) and self.max_length < MIN_MAX_LENGTH:
            raise ValueError(f"max_length: expected at least {MIN_MAX_LENGTH} tokens (DELIFT's prefix, query and response), got {self.max_length}")


@dataclass(frozen=True)
class DeliftSESettings:
    """Settings of DELIFT-SE."""

    embedder: str = BUNDLED_EMBEDDER
    """Sentence embedder id or path used for the similarity (default the bundled all-MiniLM-L6-v2)."""
    device: str = "auto"
    """Device for the embedder: auto, cpu, cuda."""


@dataclass(frozen=True)
class LessSettings:
    """Settings of LESS. Defaults are the paper's; on a CPU, lower ``lora_r`` and ``warmup_epochs``."""

    model: str = BUNDLED_LM
    """Causal LM id or path whose LoRA gradients are compared."""
    device: str = "auto"
    """auto, cpu, cuda."""
    dtype: str = "float32"
    """Model weights: float32, bfloat16, float16 (gradients are compressed in float32)."""
    seed: int = 0
    """Seed of the warm-up sample, LoRA initialisation, data order, and the compressor."""
    max_length: int = 2048
    """Tokens per example (prompt + response); longer examples are truncated and counted."""
    compressor: str = "projection"
    """Gradient compression: identity (exact), projection (dense Rademacher, as LESS), dropout, dropout-structured."""
    dim: int = 8192
    """Features per example k (ignored by identity)."""
    warmup_fraction: float = 0.05
    """Fraction of the pool (seeded random sample) on which the LoRA warm-up is trained."""
    lora_r: int = 128
    """LoRA rank of the warm-up model."""
    lora_alpha: int = 512
    """LoRA α."""
    lora_dropout: float = 0.1
    """LoRA dropout during warm-up training (off when computing gradients)."""
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    """Comma-separated module names that get LoRA adapters (GPT-2: c_attn,c_proj)."""
    warmup_learning_rate: float = 2e-5
    """Peak learning rate of the warm-up (linear warm-up, then linear decay)."""
    warmup_epochs: int = 4
    """Warm-up epochs; one checkpoint (and one gradient pass over every example) per epoch."""
    warmup_ratio: float = 0.03
    """Share of the warm-up's optimizer steps with a linearly rising learning rate."""
    warmup_batch_size: int = 32
    """Examples per warm-up optimizer step (accumulated over micro-batches)."""
    gradient_batch_size: int = 8
    """Examples per forward/backward pass (warm-up micro-batches and gradient features)."""
    adam_form: str = "exact"
    """Adam direction of training-side features: exact (bias-corrected, ε outside the root) or reference (LESS code)."""
    trust_remote_code: bool = False
    """Run code shipped with the model (explicit opt-in only)."""

    def __post_init__(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"unknown compressor '{self.compressor}': choose from {', '.join(COMPRESSORS)}")
        if self.adam_form not in ADAM_FORMS:
            raise ValueError(f"unknown adam_form '{self.adam_form}': choose {' or '.join(ADAM_FORMS)}")
        for name in ("dim", "lora_r", "warmup_epochs", "warmup_batch_size", "gradient_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SelectITSettings:
    """Settings of SelectIT."""

    model: str = BUNDLED_LM
    """Causal LM that rates the examples (id or path); used when ``models`` is empty."""
    models: tuple[str, ...] = ()
    """Several rating models for model-level reflection (repeat --model, or --selectit.models A,B); weights ∝ parameter counts."""
    device: str = "auto"
    """Device for the rating models: auto, cpu, cuda."""
    dtype: str = "float32"
    """Weights' dtype of the rating models: float32, bfloat16, float16."""
    seed: int = 0
    """Seed of torch's global generator when models load (scoring itself has no randomness)."""
    token_budget: int = 4096
    """Most padded tokens (prompts × longest prompt) per forward pass; a longer prompt runs alone."""
    max_length: int = 2048
    """Rating prompts longer than this (or than the model's positions) lose tokens from their middle; 0: never shorten."""
    alpha: float = 0.2
    """Sentence level: weight α of the std across rating instructions in mean / (1 + α·std)."""
    n_instructions: int = 5
    """Sentence level: number K of paraphrased rating instructions (1 to 5)."""
    form: str = "paper"
    """Token level: paper (renormalised P′) or reference (a second softmax over P′)."""
    trust_remote_code: bool = False
    """Run code shipped with the rating models (explicit opt-in)."""

    def __post_init__(self) -> None:
        if self.form not in SELECTIT_FORMS:
            raise ValueError(f"selectit form must be one of {', '.join(SELECTIT_FORMS)}, got '{self.form}'")
        if not 1 <= self.n_instructions <= len(SELECTIT_RATING_INSTRUCTIONS):
            raise ValueError(f"selectit n_instructions must be 1..{len(SELECTIT_RATING_INSTRUCTIONS)}, got {self.n_instructions}")
        if self.alpha < 0:
            raise ValueError(f"selectit alpha must be ≥ 0, got {self.alpha}")
        if self.token_budget < 1:
            raise ValueError(f"selectit token_budget must be ≥ 1, got {self.token_budget}")

    def model_list(self) -> tuple[str, ...]:
        """The rating models: ``models`` (comma-separated entries split) or else ``(model,)``."""
        names = tuple(part.strip() for entry in self.models for part in entry.split(",") if part.strip())
        return names or (self.model,)
