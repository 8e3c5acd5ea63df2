"""The public verbs: :func:`select` makes a run, :func:`open_run` opens a finished one.

``run = open_run("runs/x")`` reads the folder once (its files whole, its commit record matching them) and gives typed
access to what the run recorded (``run.settings``: the :class:`~nncift.settings.stages.SelectSettings` it was
made with; ``run.objective``, ``run.influence``, ``run.label_scaling``, ``run.counts``), its result
(``run.subset``: the picked records as read; ``run.scores``: pool indices and gains), and the commands
that start from a run: ``run.score(records, out)``, ``run.add(records, out)``, ``run.inspect()``. The command line
goes the same way (:mod:`nncift.cli.run_commands`): ``nncift score``, ``inspect`` and ``select --add`` open the run
with :func:`open_run` and call these. They work on a run that selected on a neighbour graph too (``--selection.neighbours``,
no predicted matrix): its matrix is predicted block by block (:meth:`~nncift.run.view.RunView.matrix_block`) and ``add``
selects on the union's graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from nncift.data.records import LoadReport, Record
from nncift.run.check import check_run_files
from nncift.run.view import RunView, read_run
from nncift.settings.stages import ExecutorSettings, SelectSettings
from nncift.steps.add import add_to_run
from nncift.steps.inspect import inspect_run
from nncift.steps.score import ScoreResult, score_records
from nncift.steps.select import SelectionResult, run_select


def select(settings: SelectSettings | Mapping[str, Any], out: str | Path, *, pool: Iterable[Any] | None = None,
           targets: Iterable[Any] | None = None, influence_options: dict[str, Any] | None = None,
           reports: Sequence[LoadReport] = ()) -> SelectionResult:
    """Select a fine-tuning subset of the pool with NN-CIFT into the run folder ``out``; open it again with :func:`open_run`.

    ``settings``: a :class:`SelectSettings`, or its values by name as YAML spells them (``{"influence": "delift-se",
    "selection": {"budget": 0.3}}`` or dotted names, ``{"selection.budget": 0.3}``). The other arguments and the result
    are :func:`nncift.steps.select.run_select`'s.
    """
    checked: SelectSettings = settings if isinstance(settings, SelectSettings) else SelectSettings.build(**dict(settings))
    return run_select(checked, out, pool=pool, targets=targets, influence_options=influence_options, reports=reports)


class Run(RunView):
    """A finished run folder (see :class:`~nncift.run.view.RunView` for what it holds) and the commands that start from it."""

    def score(self, records: Sequence[Record], out: str | Path, *, reports: Sequence[LoadReport] = (), top_targets: int = 5,
              device: str = "auto", progress: bool = True) -> ScoreResult:
        """Value new ``records`` with this run's InfluenceNetwork, without the language model; write them into ``out``
        (:func:`nncift.steps.score.score_records`)."""
        return score_records(self, records, out, reports=reports, top_targets=top_targets, device=device, progress=progress)

    def add(self, records: Sequence[Record], out: str | Path, *, budget: float | None = None, pool: Sequence[Record] | None = None,
            targets: Sequence[Record] | None = None, reports: Sequence[LoadReport] = (), new_paths: Sequence[str] = (),
            executor: ExecutorSettings | None = None, progress: bool = True) -> SelectionResult:
        """Grow this run's selection with new ``records``; write the union's run into ``out`` (:func:`nncift.steps.add.add_to_run`).
        ``pool``/``targets``: this run's records when they were passed in code (else they are read again from its files);
        ``executor``: where a sparse run's union graph and GreeDi's parts run (default: this run's executor)."""
        return add_to_run(self, records, out, budget=budget, pool=pool, targets=targets, reports=reports, new_paths=new_paths,
                          executor=executor, progress=progress)

    def inspect(self, *, target: int | None = None, candidate: int | None = None, top: int = 10) -> dict[str, Any]:
        """What the run chose and why, as a JSON-ready dict (:func:`nncift.steps.inspect.inspect_run`)."""
        return inspect_run(self, target=target, candidate=candidate, top=top)


def open_run(folder: str | Path) -> Run:
    """Open the finished run in ``folder`` (what ``nncift score``, ``inspect`` and ``select --add`` do first).

    :class:`~nncift.run.files.RunNotReady` when it is not one, naming the folder, the first damaged file
    (:func:`~nncift.run.check.check_run_files`: cut short, not parsable), a file that does not match the commit record,
    or the file of a folder written by an earlier nncift with flat settings (:func:`~nncift.run.view.read_run`)."""
    check_run_files(folder)
    view = read_run(folder)
    return Run(view.folder, view.manifest)
