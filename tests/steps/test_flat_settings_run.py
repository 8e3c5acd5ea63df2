"""A run folder written by nncift before the stage sections (flat settings: ``budget``, ``fraction``,
``executor: "local"`` at the top level of ``settings.json`` and of the manifest's ``settings``) is refused by
``open_run``, ``inspect``, ``score`` and ``select --add`` in one line that names the file and says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nncift
from nncift.cli.commands import main
from nncift.settings.fields import settings_dict

FLAT_SETTINGS = {  # SelectSettings of that version (nncift 0.1 before commit 63c99c2), as settings_dict wrote it
    "data": ["pool.jsonl"], "targets": [], "influence": "delift-se", "fraction": 0.05, "min_sampled": 10, "sampling_blocks": 0,
    "budget": 0.3, "objective": "", "eta": 1.0, "nu": 1.0, "seed": 0, "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "embedder": "sentence-transformers/all-MiniLM-L6-v2", "dtype": "float32", "trust_remote_code": False,
    "architecture": "two-tower", "tower_hidden": 128, "tower_rank": 64, "max_steps": 300, "folds": 4, "fallback": True,
    "hidden_sizes": [100], "learning_rate": 0.0001, "epochs": 20, "batch_size": 64, "block_size": 64, "device": "auto",
    "executor": "local", "workers": 2, "ray_address": "", "worker_cpus": 1.0, "worker_gpus": 0.0, "quiet": False,
}


@pytest.fixture()
def flat_run(tmp_path: Path) -> Path:
    """The files of a finished run of that version that the commands read (it wrote no commit record)."""
    folder = tmp_path / "old-run"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({**FLAT_SETTINGS, "influence_options": {}}, indent=2) + "\n")
    manifest = {"settings": FLAT_SETTINGS, "influence_options": {}, "objective": "fl",
                "environment": {"python": "3.10.12", "packages": {"nncift": "0.1.0"}, "git_commit": None, "command": "nncift select"},
                "models": {"embedder": {"name": FLAT_SETTINGS["embedder"]}}, "inputs": [],
                "counts": {"pool": 4, "targets": 0, "selected": 1, "skipped": {}}, "objective_value": 1.5,
                "cost": {"seconds_total": 1.0}, "label_scaling": {"low": 0.0, "high": 1.0}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "selected.jsonl").write_text(json.dumps({"index": 2, "score": 1.5, "record": {"instruction": "a", "output": "b"}}) + "\n")
    (folder / "scores.csv").write_text("index,source_file,line,task,value,gain,picked,rank,influence\n")
    (tmp_path / "new.jsonl").write_text(json.dumps({"instruction": "Name a river.", "output": "The Nile."}) + "\n")
    return folder


def _says_flat(message: str, folder: Path) -> None:
    assert f"{folder / 'manifest.json'}: this run folder was written by an earlier nncift with flat settings" in message
    assert ("('fraction', 'min_sampled', 'sampling_blocks', 'budget', … at the top level instead of the sections sampling, network, "
            "selection, executor)") in message
    assert "run it again with `nncift select`" in message


def test_open_run_refuses_a_folder_with_flat_settings(flat_run: Path) -> None:
    with pytest.raises(nncift.RunNotReady) as refused:
        nncift.open_run(flat_run)
    _says_flat(str(refused.value), flat_run)


def test_score_inspect_and_add_refuse_it_in_one_line(flat_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new, out = flat_run.parent / "new.jsonl", flat_run.parent / "out"
    for argv in (["inspect", str(flat_run)], ["score", "--run", str(flat_run), "--data", str(new), "--out", str(out), "--quiet"],
                 ["select", "--run", str(flat_run), "--add", str(new), "--out", str(out), "--quiet"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        _says_flat(err, flat_run)
    assert not out.exists()


def test_a_flat_settings_json_alone_is_named(flat_run: Path) -> None:
    """A manifest in sections beside a flat ``settings.json``: that file is named."""
    manifest = json.loads((flat_run / "manifest.json").read_text())
    manifest["settings"] = settings_dict(nncift.SelectSettings())
    (flat_run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(nncift.RunNotReady, match=f"{flat_run / 'settings.json'}: this run folder was written by an earlier nncift"):
        nncift.open_run(flat_run)
