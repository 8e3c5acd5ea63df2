"""LoRA fine-tuning on TRL's ``SFTTrainer`` (what :func:`nncift.downstream.finetune.finetune` runs).

The records arrive tokenised (:func:`nncift.downstream.finetune.encode_example`: the chat template applied once, by
us, prompt labels -100), as a dataset of ``input_ids`` and ``labels``: TRL leaves such a dataset as it is (no second
template, no second EOS) and only pads, packs (``packing``) and batches it. :class:`SubsetSFTTrainer` changes four
things of the stock trainer:

- **Batches**: shuffled batches of similar length (:class:`LengthGroupedOrder`), the same for a (seed, epoch), so that
  a resumed run skips exactly the batches it had trained on; each optimiser step sees ``batch_size`` records, split in
  ``gradient_accumulation`` micro-batches.
- **Loss on the CPU**: the mean cross-entropy of the labelled tokens (TRL's loss), with the output head applied to
  the labelled positions only (:func:`labelled_loss_sum`). TRL's fused head scores every position, prompt and
  padding included, on devices without Triton; on a GPU TRL's own head runs (it never forms the logits).
- **Checkpoints without pickles**: the adapter as safetensors, the optimiser, schedule, scaler and random-generator
  states as safetensors + JSON (:mod:`nncift.downstream.sft_state`), the training arguments as JSON. Nothing is
  written with ``torch.save`` and nothing is read with ``torch.load``.
- **Progress**: a tqdm bar with the loss (:class:`StepProgress`) and the loss curve as JSON lines (:class:`LossCurve`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from nncift.downstream.sft_state import load_state, restore_rng_state, rng_state, save_state
from nncift.files.atomic import atomic_write, write_text_atomic

CHECKPOINT_PREFIX = "checkpoint-"
"""Checkpoint folders are ``checkpoints/checkpoint-STEP`` (the Trainer's naming)."""


def grouped_order(lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, group: int = 16) -> list[int]:
    """Every index once, in shuffled batches of ``batch_size`` records of similar length (less padding).

    The order is shuffled, cut into groups of ``group·batch_size`` records, each sorted by length and cut into
    batches; the full batches are shuffled, and the one short batch (when the count is not a multiple) comes last,
    so that consecutive runs of ``batch_size`` indices are exactly the batches.
    """
    order = rng.permutation(len(lengths))
    lengths_array = np.asarray(lengths)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), group * batch_size):
        chunk = order[start : start + group * batch_size]
        chunk = chunk[np.argsort(lengths_array[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    full = [batch for batch in batches if len(batch) == batch_size]
    short = [batch for batch in batches if len(batch) < batch_size]
    return [int(i) for batch in [full[i] for i in rng.permutation(len(full))] + short for i in batch]


class LengthGroupedOrder(torch.utils.data.Sampler):
    """The training order of one epoch: :func:`grouped_order` seeded by (seed, epoch), so a resumed run sees the same."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(grouped_order(self.lengths, self.batch_size, np.random.default_rng([self.seed, self.epoch])))


def labelled_loss_sum(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, count) of the labelled tokens of a collated batch, each predicted from the position
    before it; the output head is applied to those positions only. Works on padded batches (``attention_mask``) and
    packed ones (``position_ids``)."""
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = targets != -100
    forward = {name: value for name, value in inputs.items() if name != "labels"}
    outputs = model(**forward, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    logits = model.get_output_embeddings()(outputs.hidden_states[-1][:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum"), keep.sum()


class SubsetSFTTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with length-grouped seeded batches, the response-only output head on the CPU, and
    checkpoints that hold no pickle (see the module docstring)."""

    def __init__(self, *args: Any, response_head: bool = False, **kwargs: Any):
        self.response_head = response_head
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset: Any = self.train_dataset if train_dataset is None else train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return LengthGroupedOrder(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, self.args.seed)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        """The mean cross-entropy of the labelled tokens (over the whole optimiser step when accumulating)."""
        if not self.response_head or return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        total, count = labelled_loss_sum(model, inputs)
        denominator = count if num_items_in_batch is None else num_items_in_batch
        return total / torch.as_tensor(denominator, device=total.device).clamp(min=1)

    # ---- checkpoints: safetensors and JSON only
    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        folder = Path(output_dir or str(self.args.output_dir))
        folder.mkdir(parents=True, exist_ok=True)
        model: Any = self.model
        model.save_pretrained(str(folder), safe_serialization=True)
        write_text_atomic(folder / "training_args.json", self.args.to_json_string())

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        optimizer: Any = self.optimizer
        scheduler: Any = self.lr_scheduler
        save_state(output_dir, "optimizer", optimizer.state_dict())
        save_state(output_dir, "scheduler", scheduler.state_dict())

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            save_state(output_dir, "scaler", scaler.state_dict())

    def _save_rng_state(self, output_dir: str) -> None:
        save_state(output_dir, "rng_state", rng_state())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        optimizer: Any = self.optimizer
        scheduler: Any = self.lr_scheduler
        optimizer_state = load_state(checkpoint, "optimizer", device=self.args.device)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        scheduler_state = load_state(checkpoint, "scheduler")
        if scheduler_state is not None:
            scheduler.load_state_dict(scheduler_state)

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        state = load_state(checkpoint, "scaler") if checkpoint else None
        if scaler is not None and state is not None:
            scaler.load_state_dict(state)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        state = load_state(checkpoint, "rng_state") if checkpoint else None
        if state is not None:
            restore_rng_state(state)


class LossCurve(TrainerCallback):
    """Appends ``{"step", "epoch", "loss", "learning_rate"}`` per optimiser step to a JSON-lines file; a resumed run
    first rewrites it from the checkpoint's log, so the steps after the checkpoint are not listed twice."""

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def _line(step: int, entry: dict[str, Any]) -> str:
        return json.dumps({"step": step, "epoch": entry.get("epoch"), "loss": entry["loss"], "learning_rate": entry.get("learning_rate")})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Keep the steps the (resumed) run has already trained."""
        lines = [self._line(entry["step"], entry) for entry in state.log_history if "loss" in entry]
        write_text_atomic(self.path, "".join(line + "\n" for line in lines))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """One line per logged training loss."""
        if logs and "loss" in logs:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(self._line(state.global_step, logs) + "\n")


class StepProgress(TrainerCallback):
    """A tqdm bar over the optimiser steps with the epoch and the last loss (none when ``quiet``)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Open the bar at the step the run starts from."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="fine-tuning", unit="step", disable=self.quiet)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Advance one step."""
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Show the loss."""
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(epoch=f"{state.epoch or 0:.2f}", loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest step whose ``trainer_state.json`` (written last) is complete, or None."""
    found: list[tuple[int, Path]] = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if folder.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            found.append((int(path.name[len(CHECKPOINT_PREFIX):]), path))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None


def make_trainer(model: Any, tokenizer: Any, dataset: Any, config: SFTConfig, peft_config: Any, *,
                 quiet: bool, response_head: bool, curve: Path, callbacks: Sequence[TrainerCallback] = ()) -> SubsetSFTTrainer:
    """A :class:`SubsetSFTTrainer` with our progress bar and loss curve instead of the Trainer's printed logs."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # TRL's dataset passes (a no-op truncation here) would each print one
    try:
        trainer = SubsetSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                                   response_head=response_head, callbacks=[LossCurve(curve), StepProgress(quiet), *callbacks])
    finally:
        if bars:
            datasets.enable_progress_bars()
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def sft_config(settings: Any, checkpoints: Path, *, device: str, precision: str) -> SFTConfig:
    """The ``SFTConfig`` of :class:`nncift.downstream.finetune.FinetuneSettings` (the Trainer's own defaults that would
    change today's training are set back: no gradient clipping, plain AdamW, no TRL dataset shuffle)."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # the Trainer places the model on the current CUDA device
    return SFTConfig(
        output_dir=str(checkpoints), seed=settings.seed, data_seed=settings.seed, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size // settings.gradient_accumulation,
        gradient_accumulation_steps=settings.gradient_accumulation, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, lr_scheduler_type="linear", warmup_steps=min(settings.warmup_ratio, 0.999999),
        optim="adamw_torch", max_grad_norm=0.0, bf16=precision == "bf16", fp16=precision == "fp16",
        gradient_checkpointing=settings.gradient_checkpointing, packing=settings.packing, max_length=settings.max_length,
        shuffle_dataset=False, logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="steps" if settings.checkpoint_steps else "no", save_steps=max(1, settings.checkpoint_steps),
        save_total_limit=1, use_cpu=device == "cpu", dataloader_pin_memory=device != "cpu",
    )


def lora_config(settings: Any) -> Any:
    """The ``peft.LoraConfig`` of the settings (rank, α, dropout, target modules; no bias)."""
    from peft import LoraConfig

    modules: Any = "all-linear" if tuple(settings.target_modules) == ("all-linear",) else list(settings.target_modules)
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=modules, bias="none", task_type="CAUSAL_LM")


def train(model: Any, tokenizer: Any, examples: Sequence[Any], settings: Any, folder: Path, *, device: str, precision: str,
          response_head: bool, callbacks: Sequence[TrainerCallback] = ()) -> tuple[Any, list[float], float]:
    """Train LoRA adapters on the encoded ``examples``; resume from ``folder/checkpoints`` when a checkpoint is there.

    Returns:
        (the trained peft model, the loss of every optimiser step from the first, seconds of this call's training).
    """
    import time

    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    checkpoints = folder / "checkpoints"
    config = sft_config(settings, checkpoints, device=device, precision=precision)
    trainer = make_trainer(model, tokenizer, dataset, config, lora_config(settings), quiet=settings.quiet,
                           response_head=response_head, curve=folder / "loss.jsonl", callbacks=callbacks)
    start = time.perf_counter()
    resume = last_checkpoint(checkpoints)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    model = trainer.model
    assert model is not None
    model.eval()
    return model, losses, seconds


def plot_loss_curve(curve: Path, png: Path) -> None:
    """Draw the loss per optimiser step of ``loss.jsonl`` into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in curve.read_text(encoding="utf-8").splitlines() if line.strip()] if curve.is_file() else []
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot([row["step"] for row in rows], [row["loss"] for row in rows], lw=1.2)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("training loss (response tokens)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(png, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def trainer_versions() -> dict[str, str]:
    """Versions of the training stack beside the ones every manifest records."""
    import importlib.metadata

    versions = {}
    for name in ("trl", "accelerate", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
