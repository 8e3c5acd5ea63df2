"""The paper's InfluenceNetwork (a small MLP on sentence embeddings), prediction and storage of every network.

The default network is the two-tower model of :mod:`nncift.towers`, trained by
:mod:`nncift.fitting`; this module keeps the paper's MLP (``--architecture paper``), the blocked
prediction of both (:func:`predict_pairwise` dispatches on the network's kind), and saving/loading.

Pairwise networks read ``[e_row, 0, e_col]`` (two L2-normalised sentence embeddings with a constant
0 between them, ``2·d + 1`` inputs) and predict the influence of candidate ``col`` on target ``row``;
pointwise networks read ``e`` alone (``d`` inputs). Both are ``Linear → ReLU → … → Linear(·, 1)``.

Matrix orientation: an influence matrix has rows = targets and cols = candidates, shape
``(n_rows, n_cols)``; the pair ``(i, j)`` is fed as ``[e_rows[i], 0, e_cols[j]]``.

Prediction at scale uses the split of the first layer::

    W·[e_i, 0, e_j] + b = (W_a e_i + b) + W_b e_j = A_i + B_j

``A = E_rows W_aᵀ + b`` (R×h) and ``B = E_cols W_bᵀ`` (C×h) are computed once; a pair then costs
``relu(A_i + B_j)·w2 + b2``, O(h). The one-hidden-layer case runs in a compiled numba kernel over
cache-sized tiles of pairs; deeper networks (or a missing numba) use a blocked pure-torch path that
applies the rest of the MLP to tiles of ``relu(A_i + B_j)`` with matrix products.

Weights are stored as safetensors with a JSON sidecar (``network.safetensors`` + ``network.json``);
nothing is pickled.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from .towers import PointwiseNetwork, TwoTowerNetwork, predict_two_tower

if TYPE_CHECKING:
    from .fitting import FitSettings

__all__ = [
    "NetworkSettings",
    "InfluenceNetwork",
    "TrainingReport",
    "train_pairwise",
    "train_pointwise",
    "predict_pairwise",
    "predict_pairwise_naive",
    "predict_pointwise",
    "save_network",
    "load_network",
    "load_network_metadata",
    "network_metadata_path",
    "build_network",
    "ARCHITECTURES",
    "numba_available",
    "warm_up_kernel",
]

FORMAT_VERSION = 1
"""Version of the saved-network layout (written into the JSON sidecar)."""

_TILE_ROWS = 64
"""Rows of one numba tile: its 64 rows of A (h=100: 25 KiB) stay in cache while the tile's columns sweep by."""
_TILE_COLS = 128
"""Columns of one numba tile: its 128 rows of B (h=100: 50 KiB) stay in L2 for all 64 rows of the tile
(A tile + B tile ≈ 75 KiB per core, far below the 1 MiB L2; measured 64×128 ≥ 16×256 and 8×1024)."""
_TORCH_TILE_ELEMENTS = 1 << 18
"""Elements (pairs × first hidden size) of one torch-path tile: 1 MiB of float32, the L2 of one core
(each worker thread of the torch path works on its own tile)."""
_BLOCK_PAIRS = 1 << 24
"""Pairs per outer row block of :func:`predict_pairwise` (64 MiB of float32 output)."""
_NAIVE_BLOCK_PAIRS = 1 << 15
"""Default pairs per block of :func:`predict_pairwise_naive` (the concatenated inputs: ~100 MB at d=384)."""


# ----------------------------------------------------------------------------------------------
# settings, module, report


ARCHITECTURES = ("two-tower", "paper")
"""``two-tower``: the default (:mod:`nncift.towers`, trained and validated by :mod:`nncift.fitting`);
``paper``: the NN-CIFT paper's MLP on ``[e_i, 0, e_j]`` with its training, for reproduction."""


@dataclass(frozen=True)
class NetworkSettings:
    """Architecture and training settings of an InfluenceNetwork.

    ``architecture="two-tower"`` (default) uses ``tower_hidden``, ``tower_rank``, ``max_steps``,
    ``folds`` and ``fallback`` (see :class:`nncift.fitting.FitSettings`); ``"paper"`` uses
    ``hidden_sizes``, ``learning_rate``, ``epochs`` and ``batch_size`` (the paper's values).
    """

    architecture: str = "two-tower"
    """two-tower (default) or paper."""
    tower_hidden: int = 128
    """two-tower: hidden width of each tower."""
    tower_rank: int = 64
    """two-tower: rank of the learned interaction."""
    max_steps: int = 300
    """two-tower: most full-batch optimisation steps (the step count is chosen on held-out records)."""
    folds: int = 4
    """two-tower: record folds of the validation."""
    fallback: bool = True
    """two-tower: ship the calibrated prior or a blend when they validate better than the network."""
    hidden_sizes: tuple[int, ...] = (100,)
    """Sizes of the hidden layers, input side first; the paper uses one layer of 100."""
    learning_rate: float = 1e-4
    """Adam learning rate."""
    epochs: int = 20
    """Passes over the labelled examples."""
    batch_size: int = 64
    """Examples per mini-batch."""
    seed: int = 0
    """Seed of the weight initialisation and of the shuffling (one torch.Generator for both)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{self.architecture}': choose {' or '.join(ARCHITECTURES)}")

    def fit_settings(self) -> "FitSettings":
        """The two-tower training settings."""
        from .fitting import FitSettings

        return FitSettings(hidden=self.tower_hidden, rank=self.tower_rank, max_steps=self.max_steps, folds=self.folds,
                           fallback=self.fallback, seed=self.seed)


class InfluenceNetwork(torch.nn.Module):
    """MLP ``in → hidden_sizes[0] → ReLU → … → hidden_sizes[-1] → ReLU → 1``.

    Pairwise (default): input ``(batch, 2·d + 1)`` = ``[e_row, 0, e_col]``. Pointwise: ``(batch, d)``.
    """

    def __init__(self, embedding_dim: int, hidden_sizes: Sequence[int] = (100,), pairwise: bool = True) -> None:
        """Build the network with PyTorch's default initialisation (global RNG).

        ``embedding_dim``: d, the sentence-embedding size. ``hidden_sizes``: one entry per hidden
        layer (at least one). ``pairwise``: inputs ``2·d + 1`` wide if true, ``d`` wide if false.
        """
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        sizes = tuple(int(h) for h in hidden_sizes)
        if not sizes or any(h < 1 for h in sizes):
            raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints, got {hidden_sizes!r}")
        self.embedding_dim: int = int(embedding_dim)
        self.pairwise: bool = bool(pairwise)
        self.hidden_sizes: tuple[int, ...] = sizes
        layers: list[torch.nn.Module] = []
        width = self.input_dim
        for h in sizes:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        layers.append(torch.nn.Linear(width, 1))
        self.mlp = torch.nn.Sequential(*layers)

    @property
    def input_dim(self) -> int:
        """Width of one input row: ``2·d + 1`` (pairwise) or ``d`` (pointwise)."""
        return 2 * self.embedding_dim + 1 if self.pairwise else self.embedding_dim

    def linears(self) -> list[torch.nn.Linear]:
        """The Linear layers, input side first (``len(hidden_sizes) + 1`` of them)."""
        return [m for m in self.mlp if isinstance(m, torch.nn.Linear)]

    def forward(self, inputs: Tensor) -> Tensor:
        """Predict: ``(batch, 2·d + 1)`` (pairwise) or ``(batch, d)`` (pointwise) → ``(batch,)``."""
        if inputs.ndim != 2 or inputs.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (batch, {self.input_dim}), got {tuple(inputs.shape)}")
        return self.mlp(inputs).squeeze(-1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every Linear as PyTorch does by default (U(±1/√fan_in)), drawn from ``generator``."""
        with torch.no_grad():
            for layer in self.linears():
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def architecture(self) -> dict[str, Any]:
        """JSON-ready description from which :func:`load_network` rebuilds the module."""
        return {"kind": "paper", "embedding_dim": self.embedding_dim, "hidden_sizes": list(self.hidden_sizes), "pairwise": self.pairwise}


@dataclass(frozen=True)
class TrainingReport:
    """What training did."""

    losses: list[float]
    """Mean training loss (MSE over the examples) of each epoch."""
    n_examples: int
    """Labelled examples trained on (non-NaN labels)."""
    seconds: float
    """Wall-clock seconds of the training loop."""


# ----------------------------------------------------------------------------------------------
# training


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_float32(array: np.ndarray, ndim: int, name: str) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    if not array.flags.writeable:  # e.g. a read-only memmap: torch.from_numpy wants a writable buffer
        array = array.copy()
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array


def _embedding_tensor(array: np.ndarray, name: str) -> Tensor:
    return torch.from_numpy(_as_float32(array, 2, name))


@dataclass(frozen=True)
class LabelScale:
    """Mean and standard deviation of the training labels.

    The network is trained on standardised labels (zero mean, unit variance) and the scale is then
    folded into its last layer (``w ← σ·w``, ``b ← σ·b + μ``), so the trained network predicts in
    label units and prediction needs nothing extra. Influence labels often have a small spread
    around a large offset (DELIFT-SE: ≈ 0.55 ± 0.05); on raw labels the paper's 20 epochs at lr 1e-4
    mostly learn the offset, and on unseen pairs the network did worse than predicting the mean
    (alpaca_en_demo, u = 0.05: Q4 MSE 0.0151 against 0.0025 for the mean). Standardised, it beats it.
    """

    mean: float
    std: float

    @classmethod
    def of(cls, labels: np.ndarray) -> "LabelScale":
        """Scale of the labelled values (std 1 when they are constant or absent)."""
        if labels.size == 0:
            return cls(0.0, 1.0)
        std = float(np.std(labels, dtype=np.float64))
        return cls(float(np.mean(labels, dtype=np.float64)), std if std > 1e-12 else 1.0)

    def standardise(self, labels: np.ndarray) -> np.ndarray:
        """float32 (labels − mean) / std (NaN stays NaN)."""
        return ((labels.astype(np.float64) - self.mean) / self.std).astype(np.float32)

    def fold_into(self, network: "InfluenceNetwork") -> None:
        """Make the network's output ``std · output + mean`` by rescaling its last layer."""
        last = network.linears()[-1]
        with torch.no_grad():
            last.weight.mul_(self.std)
            last.bias.mul_(self.std).add_(self.mean)


def _train(
    network: InfluenceNetwork,
    n_examples: int,
    make_batch,
    settings: NetworkSettings,
    generator: torch.Generator,
    progress: bool,
) -> TrainingReport:
    """Adam + MSE over ``n_examples`` shuffled examples; ``make_batch(positions)`` → (inputs, targets)."""
    if settings.epochs < 0 or settings.batch_size < 1:
        raise ValueError(f"need epochs ≥ 0 and batch_size ≥ 1, got {settings}")
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    losses: list[float] = []
    start = time.perf_counter()
    network.train()
    # One thread: batches of 64 are too small to gain from more, and a fixed thread count makes the
    # floating-point results independent of the machine.
    from tqdm import tqdm

    bar = tqdm(total=settings.epochs, desc="influence network (paper MLP)", unit="epoch", disable=not progress, leave=False)
    with _torch_threads(1), bar:
        for epoch in range(settings.epochs):
            if n_examples == 0:
                losses.append(float("nan"))
                continue
            order = torch.randperm(n_examples, generator=generator)
            total = torch.zeros((), dtype=torch.float64)
            for first in range(0, n_examples, settings.batch_size):
                positions = order[first : first + settings.batch_size]
                inputs, targets = make_batch(positions)
                loss = torch.nn.functional.mse_loss(network(inputs), targets)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach().double() * len(positions)
            losses.append(float(total) / n_examples)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            bar.update(1)
    network.eval()
    return TrainingReport(losses=losses, n_examples=n_examples, seconds=time.perf_counter() - start)


def train_pairwise(
    row_embeddings: np.ndarray,
    col_embeddings: np.ndarray,
    labels: np.ndarray,
    settings: NetworkSettings,
    *,
    progress: bool = False,
) -> tuple[InfluenceNetwork, TrainingReport]:
    """Train a pairwise InfluenceNetwork on every labelled (row, col) pair of a block.

    ``row_embeddings``: (R, d) target embeddings; ``col_embeddings``: (C, d) candidate embeddings
    (both L2-normalised; they are used as given); ``labels``: (R, C) influence of col j on row i; NaN entries are not trained on. The labelled pairs
    are taken in row-major order, shuffled each epoch by a seeded torch.Generator, and each batch's
    ``[e_r, 0, e_c]`` inputs are built on the fly from the embeddings (the R·C concatenated inputs are
    never materialised). Same inputs and seed → the same network.
    """
    rows = _embedding_tensor(row_embeddings, "row_embeddings")
    cols = _embedding_tensor(col_embeddings, "col_embeddings")
    if rows.shape[1] != cols.shape[1]:
        raise ValueError(f"row and col embeddings differ in width: {rows.shape[1]} vs {cols.shape[1]}")
    label_array = np.asarray(labels, dtype=np.float32)
    if label_array.shape != (rows.shape[0], cols.shape[0]):
        raise ValueError(f"labels must have shape {(rows.shape[0], cols.shape[0])}, got {label_array.shape}")
    n_cols = cols.shape[0]
    labelled = ~np.isnan(label_array.reshape(-1))
    scale = LabelScale.of(label_array.reshape(-1)[labelled])
    flat_labels = torch.from_numpy(scale.standardise(np.ascontiguousarray(label_array).reshape(-1)))
    # Flat row-major indices of the labelled pairs; None when all are labelled (then position = index).
    kept = None if labelled.all() else torch.from_numpy(np.flatnonzero(labelled))
    n_examples = int(labelled.sum())
    d = rows.shape[1]

    def make_batch(positions: Tensor) -> tuple[Tensor, Tensor]:
        flat = positions if kept is None else kept[positions]
        r, c = flat // n_cols, flat % n_cols
        inputs = torch.cat([rows[r], torch.zeros(len(flat), 1), cols[c]], dim=1)
        return inputs, flat_labels[flat]

    generator = torch.Generator().manual_seed(int(settings.seed))
    network = InfluenceNetwork(d, settings.hidden_sizes, pairwise=True)
    network.reset_parameters(generator)
    report = _train(network, n_examples, make_batch, settings, generator, progress)
    scale.fold_into(network)
    return network, report


def train_pointwise(
    embeddings: np.ndarray,
    labels: np.ndarray,
    settings: NetworkSettings,
    *,
    progress: bool = False,
) -> tuple[InfluenceNetwork, TrainingReport]:
    """Train a pointwise InfluenceNetwork: ``embeddings`` (N, d) → ``labels`` (N,); NaN labels are skipped."""
    inputs_all = _embedding_tensor(embeddings, "embeddings")
    label_array = np.asarray(labels, dtype=np.float32).reshape(-1)
    if label_array.shape[0] != inputs_all.shape[0]:
        raise ValueError(f"labels must have shape ({inputs_all.shape[0]},), got {np.shape(labels)}")
    labelled = ~np.isnan(label_array)
    kept = torch.from_numpy(np.flatnonzero(labelled))
    scale = LabelScale.of(label_array[labelled])
    targets_all = torch.from_numpy(scale.standardise(np.ascontiguousarray(label_array)))

    def make_batch(positions: Tensor) -> tuple[Tensor, Tensor]:
        index = kept[positions]
        return inputs_all[index], targets_all[index]

    generator = torch.Generator().manual_seed(int(settings.seed))
    network = InfluenceNetwork(inputs_all.shape[1], settings.hidden_sizes, pairwise=False)
    network.reset_parameters(generator)
    report = _train(network, int(labelled.sum()), make_batch, settings, generator, progress)
    scale.fold_into(network)
    return network, report


# ----------------------------------------------------------------------------------------------
# prediction


try:  # numba is optional: without it every network takes the torch path
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None


def numba_available() -> bool:
    """Whether the compiled one-hidden-layer kernel can be used."""
    return _numba is not None


def _pair_kernel_py(a: np.ndarray, b: np.ndarray, w2: np.ndarray, b2: np.float32, out: np.ndarray, tile_rows: int, tile_cols: int) -> None:
    """``out[i, j] = Σ_k w2[k]·max(a[i, k] + b[j, k], 0) + b2`` for a (R, h), b (C, h), out (R, C).

    Parallel over tiles of ``tile_rows × tile_cols`` pairs (the tile's rows of ``a`` and ``b`` stay in
    cache); inside a tile 2×2 pairs are computed together so each loaded ``a``/``b`` value serves two
    pairs, and the reduction over k is vectorised (fastmath lets LLVM reassociate the sum);
    relu(a_i + b_j) is never stored, it lives in registers. Each output cell is computed by one thread
    in a fixed order, so results do not depend on the thread count or the tiling.
    """
    n_rows, h = a.shape
    n_cols = b.shape[0]
    zero = np.float32(0.0)
    row_tiles = (n_rows + tile_rows - 1) // tile_rows
    col_tiles = (n_cols + tile_cols - 1) // tile_cols
    for tile in _prange(row_tiles * col_tiles):
        r0 = (tile // col_tiles) * tile_rows
        c0 = (tile % col_tiles) * tile_cols
        r1 = min(n_rows, r0 + tile_rows)
        c1 = min(n_cols, c0 + tile_cols)
        i = r0
        while i < r1:
            i1 = min(i + 1, r1 - 1)  # an odd last row is computed twice (same value, same cell)
            j = c0
            while j < c1:
                j1 = min(j + 1, c1 - 1)
                s00 = zero
                s01 = zero
                s10 = zero
                s11 = zero
                for k in range(h):
                    w = w2[k]
                    a0 = a[i, k]
                    a1 = a[i1, k]
                    bj0 = b[j, k]
                    bj1 = b[j1, k]
                    s00 += w * max(a0 + bj0, zero)
                    s01 += w * max(a0 + bj1, zero)
                    s10 += w * max(a1 + bj0, zero)
                    s11 += w * max(a1 + bj1, zero)
                out[i, j] = s00 + b2
                out[i, j1] = s01 + b2
                out[i1, j] = s10 + b2
                out[i1, j1] = s11 + b2
                j += 2
            i += 2


if _numba is not None:
    _prange = _numba.prange
    _pair_kernel = _numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)(_pair_kernel_py)
else:  # pragma: no cover
    _prange = range
    _pair_kernel = None


def warm_up_kernel() -> float:
    """Compile (or load from numba's on-disk cache) the pair kernel; return the seconds it took (0 without numba)."""
    if _pair_kernel is None:
        return 0.0
    start = time.perf_counter()
    a = np.zeros((3, 4), np.float32)
    b = np.zeros((5, 4), np.float32)
    _pair_kernel(a, b, np.zeros(4, np.float32), np.float32(0.0), np.empty((3, 5), np.float32), _TILE_ROWS, _TILE_COLS)
    return time.perf_counter() - start


def _first_layer_parts(network: InfluenceNetwork) -> tuple[Tensor, Tensor, Tensor]:
    """The first Linear split as ``(W_a, W_b, b)``: ``W·[e_i, 0, e_j] + b = (W_a e_i + b) + W_b e_j``."""
    first = network.linears()[0]
    d = network.embedding_dim
    weight = first.weight.detach()
    return weight[:, :d], weight[:, d + 1 :], first.bias.detach()


def _torch_tiles(network: InfluenceNetwork, a: Tensor, b: Tensor, out: Tensor) -> None:
    """Fill ``out`` (R, C) from A (R, h) and B (C, h): tiles of relu(A_i + B_j) through the rest of the MLP.

    Strips of rows go to ``torch.get_num_threads()`` Python worker threads, each running torch ops
    single-threaded on its own tile buffer (torch releases the GIL inside ops). Strips are handed out
    dynamically and no op waits at an OpenMP barrier: on a CPU shared with other jobs this is several
    times faster than intra-op threading over many small tiles.
    """
    layers = network.linears()
    rest = [(layer.weight.detach().t().contiguous(), layer.bias.detach()) for layer in layers[1:]]
    n_rows, h = a.shape
    n_cols = b.shape[0]
    tile_cols = max(1, min(n_cols, 256))
    tile_rows = max(1, min(n_rows, _TORCH_TILE_ELEMENTS // (h * tile_cols)))  # 10 rows × 256 cols at h=100
    local = threading.local()

    def strip(r0: int) -> None:
        r1 = min(n_rows, r0 + tile_rows)
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = torch.empty(tile_rows * tile_cols * h)
        for c0 in range(0, n_cols, tile_cols):
            c1 = min(n_cols, c0 + tile_cols)
            hidden = buffer[: (r1 - r0) * (c1 - c0) * h].view(r1 - r0, c1 - c0, h)
            torch.add(a[r0:r1, None, :], b[None, c0:c1, :], out=hidden)
            x = hidden.view(-1, h).clamp_(min=0.0)
            for n, (weight_t, bias) in enumerate(rest):
                x = torch.addmm(bias, x, weight_t)
                if n < len(rest) - 1:
                    x.clamp_(min=0.0)
            out[r0:r1, c0:c1] = x.view(r1 - r0, c1 - c0)

    starts = range(0, n_rows, tile_rows)
    workers = min(torch.get_num_threads(), len(starts))
    with _torch_threads(1):
        if workers <= 1:
            for r0 in starts:
                strip(r0)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(strip, starts):
                    pass


def predict_pairwise(
    network: "InfluenceNetwork | TwoTowerNetwork",
    row_embeddings: np.ndarray,
    col_embeddings: np.ndarray,
    *,
    out: np.ndarray | None = None,
    block_rows: int | None = None,
    progress: bool = False,
    backend: Literal["auto", "numba", "torch"] = "auto",
    self_cols: np.ndarray | None = None,
) -> np.ndarray:
    """Predict the full influence matrix: (R, d) rows × (C, d) cols → float32 (R, C), ``out[i, j]`` =
    the network on ``[rows[i], 0, cols[j]]`` (embeddings L2-normalised, used as given).

    A :class:`~nncift.towers.TwoTowerNetwork` predicts with one matrix product per row block
    (``backend`` does not apply); ``self_cols`` (per row, the column of the same record, −1 for
    none) gives it the rows whose self-pair term applies. The paper's MLP has no self-pair term.

    Uses the split first layer (O(h) per pair, no concatenated inputs). ``out``: an (R, C) float32
    array to fill (an ``np.memmap`` works: it is written one block of ``block_rows`` rows at a time);
    by default a new array. ``block_rows``: rows per outer block (default: ~16M pairs per block).
    ``backend``: ``"numba"`` (one hidden layer only), ``"torch"``, or ``"auto"`` (numba when it
    applies, else torch). Returns ``out``.
    """
    if not network.pairwise:
        raise ValueError("predict_pairwise needs a pairwise network; use predict_pointwise")
    if isinstance(network, TwoTowerNetwork):
        for name, array in (("row_embeddings", row_embeddings), ("col_embeddings", col_embeddings)):
            if np.ndim(array) != 2 or np.shape(array)[1] != network.embedding_dim:
                raise ValueError(f"{name} must have {network.embedding_dim} columns, got shape {np.shape(array)}")
        if out is not None and (out.shape != (len(row_embeddings), len(col_embeddings)) or out.dtype != np.float32):
            raise ValueError(f"out must be float32 of shape {(len(row_embeddings), len(col_embeddings))}, got {out.dtype} {out.shape}")
        return predict_two_tower(network, row_embeddings, col_embeddings, out=out, self_cols=self_cols, block_rows=block_rows)
    rows_np = _as_float32(row_embeddings, 2, "row_embeddings")
    cols_np = _as_float32(col_embeddings, 2, "col_embeddings")
    for name, array in (("row_embeddings", rows_np), ("col_embeddings", cols_np)):
        if array.shape[1] != network.embedding_dim:
            raise ValueError(f"{name} must have {network.embedding_dim} columns, got shape {array.shape}")
    n_rows, n_cols = rows_np.shape[0], cols_np.shape[0]
    if out is None:
        out = np.empty((n_rows, n_cols), dtype=np.float32)
    elif out.shape != (n_rows, n_cols) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(n_rows, n_cols)}, got {out.dtype} {out.shape}")
    single = len(network.hidden_sizes) == 1
    if backend == "auto":
        backend = "numba" if single and _pair_kernel is not None else "torch"
    if backend == "numba" and (not single or _pair_kernel is None):
        raise ValueError("the numba backend needs numba and a network with exactly one hidden layer")
    if backend not in ("numba", "torch"):
        raise ValueError(f"unknown backend {backend!r}")
    if n_rows == 0 or n_cols == 0:
        return out
    if block_rows is None:
        block_rows = max(_TILE_ROWS, _BLOCK_PAIRS // n_cols)
    block_rows = max(1, int(block_rows))

    with torch.no_grad():
        w_a, w_b, bias = _first_layer_parts(network)
        b_matrix = (torch.from_numpy(cols_np) @ w_b.t()).contiguous()  # (C, h), once
        last = network.linears()[-1]
        w2 = np.ascontiguousarray(last.weight.detach().reshape(-1).numpy(), dtype=np.float32)
        b2 = np.float32(last.bias.detach().item())
        starts = range(0, n_rows, block_rows)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="predict", unit="block")
        for r0 in starts:
            r1 = min(n_rows, r0 + block_rows)
            a = torch.addmm(bias, torch.from_numpy(rows_np[r0:r1]), w_a.t()).contiguous()  # (rows, h)
            target = out[r0:r1]
            direct = target.flags.c_contiguous
            block = target.view(np.ndarray) if direct else np.empty((r1 - r0, n_cols), dtype=np.float32)
            if backend == "numba":
                threads = torch.get_num_threads()
                _pair_kernel(a.numpy(), b_matrix.numpy(), w2, b2, block, _TILE_ROWS, _TILE_COLS)
                if torch.get_num_threads() != threads:  # numba's OpenMP layer shares the runtime with torch
                    torch.set_num_threads(threads)
            else:
                _torch_tiles(network, a, b_matrix, torch.from_numpy(block))
            if not direct:
                target[...] = block
    return out


def predict_pairwise_naive(
    network: InfluenceNetwork,
    row_embeddings: np.ndarray,
    col_embeddings: np.ndarray,
    block_rows: int | None = None,
) -> np.ndarray:
    """Baseline: build ``[e_i, 0, e_j]`` for a block of rows × all cols and run the whole MLP → float32 (R, C).

    ``block_rows``: rows per block (default: about 32K pairs per block). Slow (O(d·h) per pair); used
    as the benchmark baseline and to check :func:`predict_pairwise`.
    """
    if not network.pairwise:
        raise ValueError("predict_pairwise_naive needs a pairwise network")
    rows = _embedding_tensor(row_embeddings, "row_embeddings")
    cols = _embedding_tensor(col_embeddings, "col_embeddings")
    n_rows, n_cols, d = rows.shape[0], cols.shape[0], network.embedding_dim
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    if n_rows == 0 or n_cols == 0:
        return out
    if block_rows is None:
        block_rows = max(1, _NAIVE_BLOCK_PAIRS // n_cols)
    with torch.no_grad():
        for r0 in range(0, n_rows, block_rows):
            r1 = min(n_rows, r0 + block_rows)
            k = r1 - r0
            inputs = torch.zeros(k, n_cols, 2 * d + 1)
            inputs[:, :, :d] = rows[r0:r1, None, :]
            inputs[:, :, d + 1 :] = cols[None, :, :]
            out[r0:r1] = network(inputs.view(k * n_cols, 2 * d + 1)).view(k, n_cols).numpy()
    return out


def predict_pointwise(network: "InfluenceNetwork | PointwiseNetwork", embeddings: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
    """Predict one value per example: ``embeddings`` (N, d) → float32 (N,), in batches of ``batch_size``."""
    if network.pairwise:
        raise ValueError("predict_pointwise needs a pointwise network; use predict_pairwise")
    if embeddings.shape[1] != network.embedding_dim:
        raise ValueError(f"embeddings must have {network.embedding_dim} columns, got shape {embeddings.shape}")
    inputs = _embedding_tensor(embeddings, "embeddings")
    out = np.empty(inputs.shape[0], dtype=np.float32)
    with torch.no_grad():
        for first in range(0, inputs.shape[0], batch_size):
            out[first : first + batch_size] = network(inputs[first : first + batch_size]).numpy()
    return out


# ----------------------------------------------------------------------------------------------
# saving and loading


def network_metadata_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``network.safetensors`` → ``network.json``."""
    return Path(path).with_suffix(".json")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_network(network: "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork", path: str | Path, metadata: dict) -> None:
    """Write the weights to ``path`` (safetensors) and ``{"architecture", "format_version", **metadata}``
    to the JSON sidecar beside it (:func:`network_metadata_path`). No pickle."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**_jsonable(dict(metadata)), "architecture": network.architecture(), "format_version": FORMAT_VERSION}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()}
    save_file(tensors, str(path), metadata={"nncift_architecture": json.dumps(network.architecture())})
    network_metadata_path(path).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_network_metadata(path: str | Path) -> dict:
    """The metadata written by :func:`save_network` (falls back to the architecture in the weights file's header)."""
    sidecar = network_metadata_path(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if "nncift_architecture" not in header:
        raise FileNotFoundError(f"no metadata for {path}: {sidecar} is missing and the header has no architecture")
    return {"architecture": json.loads(header["nncift_architecture"])}


def build_network(architecture: dict[str, Any]) -> "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork":
    """An untrained module of the described architecture (``architecture()`` of any network kind)."""
    kind = architecture.get("kind", "paper")
    d = int(architecture["embedding_dim"])
    if kind == TwoTowerNetwork.kind:
        return TwoTowerNetwork(d, int(architecture["hidden"]), int(architecture["rank"]))
    if kind == PointwiseNetwork.kind:
        return PointwiseNetwork(d, int(architecture["hidden"]))
    if kind == "paper":
        return InfluenceNetwork(d, tuple(architecture["hidden_sizes"]), pairwise=bool(architecture["pairwise"]))
    raise ValueError(f"unknown network kind {kind!r} (written by a newer nncift?)")


def load_network(path: str | Path) -> "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork":
    """Rebuild a network written by :func:`save_network` (eval mode, CPU)."""
    from safetensors.torch import load_file

    network = build_network(load_network_metadata(path)["architecture"])
    network.load_state_dict(load_file(str(path)))
    network.eval()
    return network
