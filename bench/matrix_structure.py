"""Where the variance of a stored square influence matrix (pool = targets) lies: diagonal, rows, columns.

    python bench/matrix_structure.py bench/out/matrices/delift-p3/full.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrix", type=Path, help=".npy of a raw influence matrix whose leading square block is pool × pool "
                                                  "(rows = the pool first, then any targets)")
    matrix = np.load(parser.parse_args(argv).matrix).astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[0] < matrix.shape[1]:
        raise SystemExit(f"need rows = the pool (then targets) and columns = the pool, got shape {matrix.shape}")
    if matrix.shape[0] > matrix.shape[1]:
        print(f"{matrix.shape[0]} × {matrix.shape[1]}: the leading {matrix.shape[1]} × {matrix.shape[1]} pool × pool block")
        matrix = matrix[: matrix.shape[1]]
    diagonal = np.eye(len(matrix), dtype=bool)
    off = matrix[~diagonal]
    deviation = (matrix - matrix.mean()) ** 2
    explained = lambda means: 1 - (matrix - means)[~diagonal].var() / off.var()  # noqa: E731
    print(f"diagonal: mean {matrix[diagonal].mean():.4f}, std {matrix[diagonal].std():.4f}")
    print(f"off the diagonal: mean {off.mean():.4f}, std {off.std():.4f}, max {off.max():.4f}")
    print(f"share of the squared deviation on the diagonal: {deviation[diagonal].sum() / deviation.sum():.2f}")
    print(f"off-diagonal variance explained by the row (target) mean: {explained(matrix.mean(1, keepdims=True)):.2f}, "
          f"by the column (candidate) mean: {explained(matrix.mean(0, keepdims=True)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
