"""Checks a command makes before it writes anything: its output folder, devices and model paths.

Each raises ``ValueError`` with a one-line message naming the flag (the command line prints it and
exits with code 2), so that a corrected command is never refused later as "a run made with other
settings" because a refused one had already written ``settings.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from nncift.files.errors import InputError
from nncift.models.loading import ModelError

if TYPE_CHECKING:
    from nncift.data.records import Record
    from nncift.influence import InfluenceFunction
    from nncift.settings.stages import SelectSettings

RUN_MARKERS = ("settings.json", "manifest.json", "scores.jsonl")
"""Files that make a folder an nncift output folder (a ``select`` run; a ``score`` output, also one killed before its manifest)."""


def _left_by_a_run(name: str) -> bool:
    """Files a killed run may leave in a folder before its first marker: its lock, temporary files (``.NAME.PID.tmp.json``)."""
    return name.startswith(".lock") or (name.startswith(".") and ".tmp" in name) or name.endswith(".tmp")


def check_out_folder(out: str, *, data: Iterable[str] = (), run: str | None = None, force: bool = False) -> None:
    """Refuse an empty ``--out``, ``--out`` equal to ``--run``, ``--out`` inside a ``--data`` folder, and a non-empty
    folder that is not an nncift output folder (unless ``force``)."""
    if not str(out).strip():
        raise InputError("--out is empty: name the folder to write into (e.g. --out runs/first)")
    path = Path(out).expanduser().resolve()
    if run is not None and str(run).strip() and path == Path(run).expanduser().resolve():
        raise InputError(f"--out {out} is the --run folder: this command would overwrite the run it reads; give another --out folder")
    for given in data:
        source = Path(given).expanduser().resolve()
        if not str(given).startswith("hf:") and source.is_dir() and (path == source or source in path.parents):
            raise InputError(f"--out {out} is inside the --data folder {given}: its files would be read as data the next time; "
                             "put --out elsewhere")
    if path.is_dir() and not force:
        entries = sorted(entry.name for entry in path.iterdir() if not _left_by_a_run(entry.name))
        if entries and not any((path / marker).is_file() for marker in RUN_MARKERS):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(f"--out {out} is a non-empty folder that is not an nncift run (it holds {shown}): give a new or "
                             "empty folder, or --force to write into it anyway (files of the same names are replaced)")


def check_device(device: str, flag: str = "--device") -> None:
    """Refuse ``cuda`` (or ``cuda:N``) when torch sees no such CUDA device."""
    if not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"{flag} {device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu or auto")
    index = str(device).partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"{flag} {device}: there are only {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1})")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model(name: str, flag: str) -> None:
    """Refuse a model or embedder that cannot be found: a path (``/``, ``./``, ``~`` or several ``/``) that does not exist,
    or, offline (``HF_HUB_OFFLINE=1``), a hub id that is not in the local cache. The bundled names always pass."""
    from nncift.models.lm_embeddings import lm_of
    from nncift.models.onnx_embedder import onnx_of
    from nncift.settings.choices import BUNDLED_EMBEDDER, BUNDLED_LM

    backend = onnx_of(name)
    name = backend[1] if backend else (lm_of(name) or name)
    if name in (BUNDLED_LM, BUNDLED_EMBEDDER, f"sentence-transformers/{BUNDLED_EMBEDDER}"):
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{flag} {name}: not a folder (a model is a folder with config.json and its weights)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip() or os.sep in name.replace("/", ""):
        raise ModelError(f"{flag} {name}: no such folder")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelError(f"{flag} {name}: no such folder, and not in the local Hugging Face cache while the hub is offline "
                             "(HF_HUB_OFFLINE=1): pass a local folder")


def check_select(settings: Any, options: dict[str, Any], *, out: str, force: bool) -> None:
    """Everything ``select`` checks before writing, beyond the settings themselves: the output folder, devices and models,
    and a response weight that the run's input would ignore."""
    check_response_weight(settings)
    check_out_folder(out, data=[*settings.data, *settings.targets], force=force)
    check_device(settings.device)
    if "device" in options:
        check_device(options["device"], f"--{settings.influence}.device")
    check_model(settings.embedder, "--embedder")
    if options.get("similarity_embedder"):
        check_model(options["similarity_embedder"], f"--{settings.influence}.similarity-embedder")
    for model in options.get("models") or ():
        check_model(str(model), "--model")


def check_response_weight(settings: SelectSettings) -> None:
    """Refuse a ``--network.response-weight`` other than the default when the run's network reads no response (``text``, or
    ``auto`` resolved to ``text``): the weight would be ignored without a word."""
    from nncift.influence import network_reading
    from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT

    if settings.network.response_weight == DEFAULT_RESPONSE_WEIGHT:
        return
    if network_reading(settings.influence, settings.network)["network_input"] == "text":
        chosen = "" if settings.network.input == "text" else f" (--network.input auto reads the text for {settings.influence})"
        raise InputError(f"--network.response-weight {settings.network.response_weight:g} has no effect: the network reads the text alone{chosen}; "
                         "add --network.input text+response to read the response too")


def check_labelled_block(settings: SelectSettings, function_class: type[InfluenceFunction], objective: str, pool: Sequence[Record],
                         targets: Sequence[Record], *, fits: Callable[[tuple[int, int]], bool] | None = None) -> None:
    """Refuse, before the run folder is made, a labelled block that would not fit in memory (``fits``): at a million records
    the default fraction u = 0.05 is a 50,000 × 50,000 block (10 GB of float32), which no influence function needs.
    ``fits`` (default :func:`~nncift.selection.fits_in_memory`): whether a float32 matrix of a shape fits."""
    import numpy as np

    from nncift.run.layout import plan_layout, resolve_sampling
    from nncift.selection.out_of_core import fits_in_memory

    fits = fits or fits_in_memory
    n_rows = len(pool) + len(targets) if objective in ("flmi", "flcg") else len(targets) or len(pool)
    sampling = resolve_sampling(settings.sampling, function_class, len(pool), len(targets), n_rows)
    if sampling.fraction >= 1:
        return
    layout = plan_layout(pool, targets, objective, sampling, np.random.default_rng(settings.seed))
    shape = (len(layout.seen_rows), len(layout.seen_cols))
    if not fits(shape):
        unit = "labelled pairs" if function_class.cost_per == "pair" else "sampled pool records"
        raise InputError(f"the labelled block would be {shape[0]:,} × {shape[1]:,} values ({4 * shape[0] * shape[1] / 2**30:,.1f} GiB of "
                         f"float32 and its working copies), more than this machine's memory holds: give a label budget "
                         f"(--sampling.labels N, in {unit}) or a smaller --sampling.fraction than {settings.sampling.fraction:g}")
