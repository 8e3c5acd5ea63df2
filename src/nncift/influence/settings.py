"""The settings of each influence function: their fields are ``select`` flags and YAML keys (``--delift.max-length``,
``delift: {max_length: 512}``).

Only each function's own settings: the model, device, dtype, seed, embedder and trust_remote_code are the run's
(:class:`nncift.settings.stages.RunContext`), which a function receives with its spec. Kept apart from the functions
(which load torch and the models) so that building the command line and checking settings stay fast. Each function
module re-exports its class.
"""

from __future__ import annotations

from dataclasses import dataclass

from nncift.data.templates import SELECTIT_RATING_INSTRUCTIONS
from nncift.settings.choices import ADAM_FORMS, COMPRESSORS, SELECTIT_FORMS
from nncift.settings.fields import Checked, setting

MIN_MAX_LENGTH = 64
"""Fewest tokens of one DELIFT sequence (``max_length``)."""


@dataclass(frozen=True)
class DeliftSettings(Checked):
    """Settings of DELIFT (in-context-learning utility with a causal LM)."""

    max_length: int = setting(2048, at_least=MIN_MAX_LENGTH, why=" (DELIFT's prefix, query and response)")
    """Most tokens in one DELIFT sequence (prefix ≤ 1/2, query ≤ 1/8, response the rest); truncations are counted."""
    token_budget: int = setting(2048, at_least=1)
    """Padded tokens per forward batch (rows × longest row) for the DELIFT passes."""
    prefix_reuse: bool = True
    """Compute each candidate's one-shot prefix once per block and reuse its key/value cache for all targets."""


@dataclass(frozen=True)
class DeliftSESettings(Checked):
    """Settings of DELIFT-SE (it embeds on the run's device)."""

    similarity_embedder: str = ""
    """Sentence embedder whose cosine is the influence (id or path). Empty: the run's embedder, which is also the
    network's input, so the influence is the network's calibrated prior and nothing is trained. A different (larger)
    embedder makes the network learn the expensive embedder's similarity from the run's cheap one."""


@dataclass(frozen=True)
class LessSettings(Checked):
    """Settings of LESS. Defaults are the paper's; on a CPU, lower ``lora_r`` and ``warmup_epochs``."""

    max_length: int = setting(2048, at_least=2)
    """Tokens per example (prompt + response, at least one of each); longer examples are truncated and counted."""
    compressor: str = setting("projection", choices=COMPRESSORS)
    """Gradient compression: identity (exact), projection (dense Rademacher, as LESS), dropout, dropout-structured."""
    dim: int = setting(8192, at_least=1)
    """Features per example k (ignored by identity)."""
    warmup_fraction: float = setting(0.05, above=0, at_most=1)
    """Fraction of the pool (seeded random sample) on which the LoRA warm-up is trained."""
    lora_r: int = setting(128, at_least=1)
    """LoRA rank of the warm-up model."""
    lora_alpha: int = setting(512, at_least=1)
    """LoRA α."""
    lora_dropout: float = setting(0.1, at_least=0, at_most=1)
    """LoRA dropout during warm-up training (off when computing gradients)."""
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    """Comma-separated module names that get LoRA adapters (GPT-2: c_attn,c_proj)."""
    warmup_learning_rate: float = setting(2e-5, above=0)
    """Peak learning rate of the warm-up (linear warm-up, then linear decay)."""
    warmup_epochs: int = setting(4, at_least=1)
    """Warm-up epochs; one checkpoint (and one gradient pass over every example) per epoch."""
    warmup_ratio: float = setting(0.03, at_least=0, at_most=1)
    """Share of the warm-up's optimizer steps with a linearly rising learning rate."""
    warmup_batch_size: int = setting(32, at_least=1)
    """Examples per warm-up optimizer step (accumulated over micro-batches)."""
    gradient_batch_size: int = setting(8, at_least=1)
    """Examples per forward/backward pass (warm-up micro-batches and gradient features)."""
    adam_form: str = setting("exact", choices=ADAM_FORMS)
    """Adam direction of training-side features: exact (bias-corrected, ε outside the root) or reference (LESS code)."""


@dataclass(frozen=True)
class SelectITSettings(Checked):
    """Settings of SelectIT."""

    models: tuple[str, ...] = ()
    """Several rating models for model-level reflection (repeat --model, or --selectit.models A,B); weights ∝ parameter counts.
    Empty: the run's model alone."""
    token_budget: int = setting(4096, at_least=1)
    """Most padded tokens (prompts × longest prompt) per forward pass; a longer prompt runs alone."""
    max_length: int = setting(2048, at_least=0)
    """Rating prompts longer than this (or than the model's positions) lose tokens from their middle; 0: never shorten."""
    alpha: float = setting(0.2, at_least=0)
    """Sentence level: weight α of the std across rating instructions in mean / (1 + α·std)."""
    n_instructions: int = setting(5, at_least=1, at_most=len(SELECTIT_RATING_INSTRUCTIONS))
    """Sentence level: number K of paraphrased rating instructions (1 to 5)."""
    form: str = setting("paper", choices=SELECTIT_FORMS)
    """Token level: paper (renormalised P′) or reference (a second softmax over P′)."""

    def model_list(self, run_model: str) -> tuple[str, ...]:
        """The rating models: ``models`` (comma-separated entries split) or else the run's model alone."""
        names = tuple(part.strip() for entry in self.models for part in entry.split(",") if part.strip())
        return names or (run_model,)
