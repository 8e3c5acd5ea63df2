"""User errors are their own types; anything else is a bug (issue #22).

Through ``nncift.cli.commands.main``: a user error (:class:`~nncift.files.errors.UserError`, or an OS error of a path
the user gave) is one line with exit code 2; an unexpected exception shows its traceback, then one line asking for a
report, with exit code 1. Over the source: every exception class nncift defines is a user error, or is listed here as
internal.
"""

from __future__ import annotations

import ast
import errno
import json
from pathlib import Path
from typing import Any, Callable

import pytest

import nncift.steps.preflight
from nncift.cli.commands import main, package_version
from nncift.files.errors import UserError

SRC = Path(__file__).resolve().parents[2] / "src"

INTERNAL: dict[str, str] = {}
"""Exception classes of nncift that are not user errors (a bug when raised), with why; none today."""

EXCEPTION_BASES = {"BaseException", "Exception", "ValueError", "RuntimeError", "OSError", "TypeError", "KeyError", "LookupError"}


def _pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Name a river ({i}).", "output": f"River {i}."}) + "\n" for i in range(6)),
                    encoding="utf-8")
    return path


def _select_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException) -> tuple[int, str]:
    """Run ``nncift select`` whose pre-flight check (the first thing the command calls) raises ``error``; (exit code, stderr)."""
    def check_select(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.delenv("NNCIFT_DEBUG", raising=False)
    monkeypatch.setattr(nncift.steps.preflight, "check_select", check_select)
    code = main(["select", "--data", str(_pool(tmp_path)), "--out", str(tmp_path / "run"), "--quiet"])
    return code, capsys.readouterr().err


def test_an_internal_bug_shows_its_traceback_and_asks_for_a_report(tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = _select_raising(tmp_path, monkeypatch, capsys, ValueError("internal"))
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):", err
    assert "ValueError: internal" in lines, err
    assert "check_select" in err  # the frame that raised it is shown
    assert lines[-1] == (f"nncift: this is a bug in nncift {package_version()}; please report it with the command and the "
                         "traceback above")
    assert "nncift: error:" not in err
    assert not (tmp_path / "run").exists()


def _user_error_classes() -> dict[str, type[UserError]]:
    """Every UserError subclass of nncift (its modules imported), by qualified name."""
    import importlib

    for name in sorted(_exception_classes()):
        module, _, _ = name.rpartition(".")
        importlib.import_module(module)
    found: dict[str, type[UserError]] = {}
    todo: list[type] = [UserError]
    while todo:
        for cls in todo.pop().__subclasses__():
            if cls.__module__.startswith(("nncift.", "nncift_research.")):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
            todo.append(cls)
    return found


FACTORIES: dict[str, Callable[[type], BaseException]] = {  # classes whose constructor takes more than a message
    "DataError": lambda cls: cls("pool.jsonl", 3, "output", "null: give the response as a string"),
    "EmptyFileError": lambda cls: cls("pool.jsonl", None, None, "no records (empty file)"),
    "SettingsError": lambda cls: cls("budget", "expected a number, got 'lots'", "--selection.budget"),
    "RemovedSetting": lambda cls: cls("--max-length", "--delift.max-length", ""),
}


def _instance(cls: type) -> BaseException:
    factory = next((FACTORIES[klass.__name__] for klass in cls.__mro__ if klass.__name__ in FACTORIES), None)
    return factory(cls) if factory else cls(f"{cls.__name__} was given a bad value: change it")


OS_ERRORS = [FileNotFoundError(errno.ENOENT, "No such file or directory", "pool.jsonl"),
             PermissionError(errno.EACCES, "Permission denied", "runs/x"),
             IsADirectoryError(errno.EISDIR, "Is a directory", "pool"),
             NotADirectoryError(errno.ENOTDIR, "Not a directory", "pool.jsonl/x"),
             FileExistsError(errno.EEXIST, "File exists", "runs/x"),
             OSError(errno.ENOSPC, "No space left on device", "runs/x/predicted.npy"),
             MemoryError()]


def test_every_user_error_type_is_one_line_with_exit_code_2(tmp_path: Path, monkeypatch, capsys) -> None:
    classes = _user_error_classes()
    for name in ("DataError", "EmptyFileError", "SettingsError", "ModelError", "SettingsMismatch", "RunFolderError",
                 "RunFolderInUse", "RunNotReady", "NetworkFileError", "InputError", "ExecutorError"):
        assert any(cls.__name__ == name for cls in classes.values()), f"{name} is no UserError"
    errors = [_instance(cls) for _, cls in sorted(classes.items())] + OS_ERRORS
    for number, error in enumerate(errors):
        folder = tmp_path / str(number)
        folder.mkdir()
        code, err = _select_raising(folder, monkeypatch, capsys, error)
        assert code == 2, (type(error), err)
        assert len(err.splitlines()) == 1 and err.startswith("nncift: error: "), (type(error), err)
        assert "Traceback" not in err
        assert str(error).splitlines()[0] in err if str(error) else type(error).__name__ in err


def test_a_message_over_several_lines_is_shown_on_one(tmp_path: Path, monkeypatch, capsys) -> None:
    from nncift.models.loading import ModelError

    code, err = _select_raising(tmp_path, monkeypatch, capsys, ModelError("cannot load causal LM 'x':\n  config.json is missing.\n"))
    assert code == 2
    assert err == "nncift: error: cannot load causal LM 'x': config.json is missing.\n"


def test_ctrl_c_during_a_command_still_exits_130(tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = _select_raising(tmp_path, monkeypatch, capsys, KeyboardInterrupt())
    assert code == 130
    assert err == "nncift: interrupted; run the same command again to resume\n"


def _exception_classes() -> dict[str, list[str]]:
    """Exception classes defined in src/nncift and src/nncift_research (by the source: a name ending in Error, Mismatch,
    InUse or NotReady, or a built-in exception or one of these among its bases), by qualified name, with their bases."""
    classes: dict[str, list[str]] = {}
    for path in sorted(SRC.glob("nncift*/**/*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases]
                classes[f"{module}.{node.name}"] = bases
    names = {qualified.rpartition(".")[2] for qualified in classes}
    exceptions = {name for name in names if name.endswith(("Error", "Mismatch", "InUse", "NotReady"))} | EXCEPTION_BASES
    while True:  # a class deriving from an exception class is one
        more = {q.rpartition(".")[2] for q, bases in classes.items() if exceptions & set(bases)} - exceptions
        if not more:
            break
        exceptions |= more
    return {q: bases for q, bases in classes.items() if q.rpartition(".")[2] in exceptions}


def test_every_exception_class_of_nncift_is_a_user_error_or_listed_as_internal() -> None:
    defined = _exception_classes()
    assert "nncift.data.records.DataError" in defined and "nncift.files.errors.UserError" in defined  # the scan sees them
    users = {"UserError"}
    while True:
        more = {q.rpartition(".")[2] for q, bases in defined.items() if users & set(bases)} - users
        if not more:
            break
        users |= more
    neither = sorted(q for q in defined if q.rpartition(".")[2] not in users and q not in INTERNAL and q != "nncift.files.errors.UserError")
    assert not neither, f"exception classes that are no UserError (derive them from it, or list them in INTERNAL with why): {neither}"
    assert set(INTERNAL) <= set(defined), "INTERNAL lists classes that no longer exist"
    imported = _user_error_classes()
    assert {q for q in defined if q.rpartition(".")[2] in users} - {"nncift.files.errors.UserError"} == set(imported)  # scan and classes agree
