"""Data of a downstream experiment: the pool, the targets and the held-out records, split with a seed.

Two set-ups (:class:`ExperimentSettings`):

- **targeted** (``target_family`` set): the pool mixes task families; targets (validation data for
  selection) and held-out records (for scoring) come from the target family only, disjoint from
  the pool and from each other;
- **general** (no ``target_family``): held-out records are drawn from the same files as the pool;
  there are no targets (the pool represents itself).

Records are labelled with their family: the longest name in ``families`` that starts the file name
(``ag_news`` for ``ag_news_classify.jsonl``), else the file stem. With ``split_by: line`` the records
on the same line of different files of a family count as one underlying example (the P3 templates
of ``../shared/data/p3`` are aligned by line): an example's templates never end up on both sides of
a split.
"""

from __future__ import annotations

import dataclasses
import glob
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nncift.data.records import EmptyFileError, Record, read_records, write_jsonl
from nncift.files.errors import InputError
from nncift.settings.fields import setting
from nncift.settings.stages import EmbedderChoice, ModelContext, Progress


@dataclass(frozen=True)
class ExperimentSettings(Progress, EmbedderChoice, ModelContext):
    """Settings of ``nncift experiment`` that are not those of a stage (select, finetune, evaluate); its model, device, dtype,
    trust_remote_code and embedder (declared once, on :class:`ModelContext` and :class:`EmbedderChoice`) are every stage's
    unless a stage's own section sets them."""

    name: str = "experiment"
    """Title of the report."""
    out: str = "runs/experiment"
    """Experiment folder (every arm resumes from what is there)."""
    pool: tuple[str, ...] = ()
    """Files or glob patterns of the records (relative to the current folder)."""
    families: tuple[str, ...] = ()
    """Task families: a record's family is the longest of these that starts its file name (files of no family are left out)."""
    per_family: int = setting(0, at_least=0)
    """Pool records drawn per family (0: all)."""
    pool_size: int = setting(0, at_least=0)
    """Pool records in all, drawn after ``per_family`` (0: all)."""
    target_family: str = ""
    """Family of the targets and held-out records (targeted set-up); empty: general set-up."""
    n_targets: int = setting(0, at_least=0)
    """Target (validation) records of the target family given to the selection."""
    n_heldout: int = setting(50, at_least=0)
    """Held-out records for evaluation."""
    split_by: str = setting("record", choices=("record", "line"))
    """record, or line: records on the same line of one family's files are one example (P3 templates)."""
    data_seed: int = 0
    """Seed of the data split (the same for every seed of the arms)."""
    influences: tuple[str, ...] = ("delift-se",)
    """Influence functions to compare; ones not installed yet are skipped and listed in the report."""
    objectives: dict[str, str] = field(default_factory=dict)
    """Selection per influence function (fl, flmi, flcg, topk); absent: the function's own."""
    original_omitted: dict[str, str] = field(default_factory=dict)
    """Influence functions whose full-matrix (original) arm is not run, with the reason shown in the report."""
    original_per_seed: bool = False
    """Recompute the original function's subset for every seed (default: once, with the first seed)."""
    seeds: tuple[int, ...] = setting((0, 1, 2), at_least=0)
    """Seeds: random subset, NN-CIFT sampling and network, fine-tuning."""
    fidelity_fractions: tuple[float, ...] = setting((0.05, 0.1, 0.2, 0.5), above=0, at_most=1)
    """Fractions u at which the network is checked against the full matrix (when the original arm ran)."""
    headline_metric: str = "exact_match"
    """Metric of the headline and of the NN-CIFT-versus-original verdict."""
    mode: str = setting("finetune", choices=("finetune", "icl", "both"))
    """How each subset is scored: finetune (LoRA fine-tuning, then evaluation), icl (in-context learning with the K most similar subset records; K = the
    evaluate section's k), or both."""
    threads: int = setting(0, at_least=0)
    """torch CPU threads (0: torch's default; 1 is far faster on a machine shared by many processes)."""


@dataclass
class Splits:
    """The three disjoint record sets of an experiment, each labelled with its family in ``task``."""

    pool: list[Record]
    targets: list[Record]
    heldout: list[Record]
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Sizes and per-family counts (JSON-ready)."""
        return {
            "pool": len(self.pool), "targets": len(self.targets), "heldout": len(self.heldout),
            "pool_by_family": dict(sorted(Counter(r.task for r in self.pool).items())),
            "targets_by_family": dict(sorted(Counter(r.task for r in self.targets).items())),
            "heldout_by_family": dict(sorted(Counter(r.task for r in self.heldout).items())),
            "files": self.files,
        }

    def write(self, folder: Path) -> None:
        """Write ``pool.jsonl``, ``targets.jsonl`` and ``heldout.jsonl`` (raw records plus ``task`` and ``source``)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in (("pool", self.pool), ("targets", self.targets), ("heldout", self.heldout)):
            write_jsonl(folder / f"{name}.jsonl", [{**record.raw, "task": record.task, "source": record.source} for record in records])


def family_of(stem: str, families: tuple[str, ...]) -> str | None:
    """The longest family name that is ``stem`` or starts it followed by ``_``; ``stem`` when no families are given."""
    if not families:
        return stem
    matches = [f for f in families if stem == f or stem.startswith(f + "_")]
    return max(matches, key=len) if matches else None


def expand_files(patterns: tuple[str, ...]) -> list[Path]:
    """Sorted files matching the patterns; a pattern that matches nothing is an error."""
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"no file matches '{pattern}' (relative to {Path.cwd()})")
        files.extend(matched)
    return list(dict.fromkeys(files))


def load_by_family(settings: ExperimentSettings) -> tuple[dict[str, list[Record]], list[str]]:
    """Records of the pool files, grouped by family (records relabelled with it), and the files read."""
    by_family: dict[str, list[Record]] = {}
    used = []
    for path in expand_files(settings.pool):
        family = family_of(path.stem, settings.families)
        if family is None:
            continue
        try:
            records, _ = read_records(path)
        except EmptyFileError:  # e.g. P3 templates whose every completion is empty upstream: nothing to use
            continue
        by_family.setdefault(family, []).extend(dataclasses.replace(r, task=family) for r in records)
        used.append(str(path))
    missing = [f for f in settings.families if f not in by_family]
    if missing:
        raise InputError(f"no records for families: {', '.join(missing)}")
    return by_family, used


def _example_key(record: Record, split_by: str, position: int) -> str:
    if split_by == "line":
        return record.source.rsplit(":", 1)[-1]
    if split_by == "record":
        return str(position)
    raise InputError(f"split_by must be record or line, got '{split_by}'")


def _split_targeted(records: list[Record], settings: ExperimentSettings, rng: np.random.Generator) -> tuple[list[Record], list[Record], list[Record]]:
    """(held-out, targets, pool candidates) of the target family: one record per held-out/target example."""
    groups: dict[str, list[Record]] = {}
    for position, record in enumerate(records):
        groups.setdefault(_example_key(record, settings.split_by, position), []).append(record)
    keys = list(groups)
    order = [keys[i] for i in rng.permutation(len(keys))]
    if settings.n_heldout + settings.n_targets >= len(order):
        raise InputError(f"family '{settings.target_family}' has {len(order)} examples: too few for "
                         f"{settings.n_heldout} held-out + {settings.n_targets} targets + a pool share")
    pick = lambda key: groups[key][int(rng.integers(len(groups[key])))]  # noqa: E731
    heldout = [pick(k) for k in order[: settings.n_heldout]]
    targets = [pick(k) for k in order[settings.n_heldout : settings.n_heldout + settings.n_targets]]
    rest = [r for k in order[settings.n_heldout + settings.n_targets :] for r in groups[k]]
    return heldout, targets, rest


def _draw(records: list[Record], count: int, rng: np.random.Generator) -> list[Record]:
    if count <= 0 or count >= len(records):
        return list(records)
    return [records[i] for i in np.sort(rng.choice(len(records), size=count, replace=False))]


def build_splits(settings: ExperimentSettings) -> Splits:
    """Split the records into pool, targets and held-out records (deterministic for ``data_seed``)."""
    by_family, files = load_by_family(settings)
    rng = np.random.default_rng(settings.data_seed)
    targets: list[Record] = []
    if settings.target_family:
        if settings.target_family not in by_family:
            raise InputError(f"target family '{settings.target_family}' is not among the pool's families: {', '.join(by_family)}")
        heldout, targets, by_family[settings.target_family] = _split_targeted(by_family[settings.target_family], settings, rng)
    else:
        everything = [r for family in sorted(by_family) for r in by_family[family]]
        order = rng.permutation(len(everything))
        heldout = [everything[i] for i in order[: settings.n_heldout]]
        held = set(order[: settings.n_heldout].tolist())
        by_family = {}
        for i, record in enumerate(everything):
            if i not in held:
                by_family.setdefault(record.task or "", []).append(record)
    pool = [r for family in sorted(by_family) for r in _draw(by_family[family], settings.per_family, rng)]
    pool = _draw(pool, settings.pool_size, rng)
    if not pool:
        raise InputError("the pool is empty: check pool, families and per_family")
    return Splits(pool, targets, heldout, files)


def composition(records: list[Record], target_family: str) -> dict[str, Any]:
    """Per-family counts of a subset, and the share from the target family (None without one)."""
    counts = Counter(record.task or "" for record in records)
    share = counts.get(target_family, 0) / len(records) if target_family and records else None
    return {"n_train": len(records), "by_family": dict(sorted(counts.items())), "target_share": share}
