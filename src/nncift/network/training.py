"""One entry point per shape to train the InfluenceNetwork named by the settings.

``two-tower`` (default): :func:`nncift.network.fitting.fit_pairwise` / :func:`nncift.network.fitting_pointwise.fit_pointwise`
(validated on held-out records, with the fallback to the no-learning prior); ``paper``: the paper's
MLP and training (:func:`nncift.network.paper_training.train_pairwise`), shipped as trained, for reproduction.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from nncift.network.fitting import FitSettings, fit_pairwise
from nncift.network.fitting_pointwise import fit_pointwise
from nncift.network.paper_training import train_pairwise, train_pointwise
from nncift.network.task_calibration import TaskRows
from nncift.settings.stages import NetworkSettings

__all__ = ["train_network", "train_network_pointwise"]


def train_network(row_embeddings: np.ndarray, col_embeddings: np.ndarray, labels: np.ndarray, settings: NetworkSettings, *,
                  self_cols: np.ndarray | None = None, objective: str = "fl",
                  candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, held_out: str = "records",
                  prior_is_exact: bool = False, tasks: TaskRows | None = None, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train the pairwise network named by ``settings.architecture`` (:class:`nncift.settings.stages.NetworkSettings`).

    ``two-tower``: :func:`fit_pairwise` (``candidate_scores``, ``held_out``, ``prior_is_exact`` and ``tasks`` as there);
    ``paper``: :func:`nncift.network.paper_training.train_pairwise` as the paper trains it, shipped as trained. Returns the network and a JSON-ready report.
    """
    if settings.architecture == "paper":
        paper, report = train_pairwise(row_embeddings, col_embeddings, labels, settings, progress=progress)
        return paper, {"architecture": "paper", "chosen": "network", "losses": [round(x, 6) for x in report.losses],
                         "n_labelled": report.n_examples, "seconds": round(report.seconds, 3)}
    network, fit = fit_pairwise(row_embeddings, col_embeddings, labels, FitSettings(settings), self_cols=self_cols,
                                objective=objective, candidate_scores=candidate_scores, held_out=held_out,
                                prior_is_exact=prior_is_exact, tasks=tasks, progress=progress)
    return network, fit.as_dict()


def train_network_pointwise(embeddings: np.ndarray, labels: np.ndarray, settings: NetworkSettings, *, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train the pointwise network named by ``settings.architecture``; NaN labels are skipped."""
    if settings.architecture == "paper":
        ok = np.isfinite(np.asarray(labels, dtype=np.float64))
        paper, report = train_pointwise(np.asarray(embeddings)[ok], np.asarray(labels, dtype=np.float32)[ok], settings, progress=progress)
        return paper, {"architecture": "paper", "chosen": "network", "losses": [round(x, 6) for x in report.losses],
                         "n_labelled": report.n_examples, "seconds": round(report.seconds, 3)}
    network, fit = fit_pointwise(embeddings, labels, FitSettings(settings))
    return network, fit.as_dict()
