"""The paper's InfluenceNetwork (a small MLP on sentence embeddings), prediction and storage of every network.

The default network is the two-tower model of :mod:`nncift.network.towers`, trained by
:mod:`nncift.network.fitting`; this module keeps the paper's MLP (``--architecture paper``), the blocked
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
import math
import threading
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from nncift.network.pair_kernel import TILE_COLS, TILE_ROWS, pair_kernel
from nncift.network.towers import PointwiseNetwork, TwoTowerNetwork, predict_two_tower
from nncift.settings.choices import ARCHITECTURES
from nncift.settings.stages import NetworkSettings

__all__ = [
    "NetworkSettings",
    "InfluenceNetwork",
    "predict_pairwise",
    "predict_pairwise_naive",
    "predict_pointwise",
    "ARCHITECTURES",
]


_TORCH_TILE_ELEMENTS = 1 << 18
"""Elements (pairs × first hidden size) of one torch-path tile: 1 MiB of float32, the L2 of one core
(each worker thread of the torch path works on its own tile)."""
_BLOCK_PAIRS = 1 << 24
"""Pairs per outer row block of :func:`predict_pairwise` (64 MiB of float32 output)."""
_NAIVE_BLOCK_PAIRS = 1 << 15
"""Default pairs per block of :func:`predict_pairwise_naive` (the concatenated inputs: ~100 MB at d=384)."""


# ----------------------------------------------------------------------------------------------
# settings, module, report




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
        """JSON-ready description from which :func:`nncift.network.files.load_network` rebuilds the module."""
        return {"kind": "paper", "embedding_dim": self.embedding_dim, "hidden_sizes": list(self.hidden_sizes), "pairwise": self.pairwise}


# ----------------------------------------------------------------------------------------------
# helpers (also used by nncift.network.paper_training)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_float32(array: np.ndarray, ndim: int, name: str) -> np.ndarray:
    """A C-contiguous, writable float32 copy or view of ``array`` with ``ndim`` dimensions (else ValueError naming it)."""
    array = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    if not array.flags.writeable:  # e.g. a read-only memmap: torch.from_numpy wants a writable buffer
        array = array.copy()
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array


def embedding_tensor(array: np.ndarray, name: str) -> Tensor:
    """A (n, d) float32 tensor of embeddings (see :func:`as_float32`)."""
    return torch.from_numpy(as_float32(array, 2, name))


# ----------------------------------------------------------------------------------------------
# prediction


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
    with torch_threads(1):
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

    A :class:`~nncift.network.towers.TwoTowerNetwork` predicts with one matrix product per row block
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
    rows_np = as_float32(row_embeddings, 2, "row_embeddings")
    cols_np = as_float32(col_embeddings, 2, "col_embeddings")
    for name, array in (("row_embeddings", rows_np), ("col_embeddings", cols_np)):
        if array.shape[1] != network.embedding_dim:
            raise ValueError(f"{name} must have {network.embedding_dim} columns, got shape {array.shape}")
    n_rows, n_cols = rows_np.shape[0], cols_np.shape[0]
    if out is None:
        out = np.empty((n_rows, n_cols), dtype=np.float32)
    elif out.shape != (n_rows, n_cols) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(n_rows, n_cols)}, got {out.dtype} {out.shape}")
    chosen = _paper_backend(network, backend)
    if n_rows == 0 or n_cols == 0:
        return out
    if block_rows is None:
        block_rows = max(TILE_ROWS, _BLOCK_PAIRS // n_cols)
    _predict_paper_blocks(network, rows_np, cols_np, out, max(1, int(block_rows)), chosen, progress)
    return out


def _paper_backend(network: InfluenceNetwork, backend: str) -> str:
    """The backend that predicts the paper's MLP: ``backend`` checked, ``auto`` resolved (numba for one hidden layer, else torch)."""
    single = len(network.hidden_sizes) == 1
    if backend == "auto":
        backend = "numba" if single and pair_kernel is not None else "torch"
    if backend == "numba" and (not single or pair_kernel is None):
        raise ValueError("the numba backend needs numba and a network with exactly one hidden layer")
    if backend not in ("numba", "torch"):
        raise ValueError(f"unknown backend {backend!r}")
    return backend


def _predict_paper_blocks(network: InfluenceNetwork, rows_np: np.ndarray, cols_np: np.ndarray, out: np.ndarray, block_rows: int,
                          backend: str, progress: bool) -> None:
    """Fill ``out`` (R, C) with the paper MLP's predictions, ``block_rows`` rows at a time (see :func:`predict_pairwise`)."""
    n_rows, n_cols = out.shape
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
                pair_kernel(a.numpy(), b_matrix.numpy(), w2, b2, block, TILE_ROWS, TILE_COLS)
                if torch.get_num_threads() != threads:  # numba's OpenMP layer shares the runtime with torch
                    torch.set_num_threads(threads)
            else:
                _torch_tiles(network, a, b_matrix, torch.from_numpy(block))
            if not direct:
                target[...] = block


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
    rows = embedding_tensor(row_embeddings, "row_embeddings")
    cols = embedding_tensor(col_embeddings, "col_embeddings")
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
    inputs = embedding_tensor(embeddings, "embeddings")
    out = np.empty(inputs.shape[0], dtype=np.float32)
    with torch.no_grad():
        for first in range(0, inputs.shape[0], batch_size):
            out[first : first + batch_size] = network(inputs[first : first + batch_size]).numpy()
    return out
