"""Sentence embeddings on ONNX Runtime and OpenVINO: ``--embedder onnx:MODEL``, ``onnx-int8:MODEL`` and ``openvino-bf16:MODEL``.

``MODEL`` is any sentence-transformers embedder that starts with a Transformer module (``all-MiniLM-L6-v2``
for the bundled one, or a hub id or folder). Its transformer is exported once to ONNX (legacy TorchScript
exporter, dynamic batch and sequence axes) into ``$NNCIFT_CACHE/models/onnx/<key>/`` (written atomically,
checked against torch on a probe batch before it is kept); ``onnx-int8:`` runs a dynamically quantised
copy of it (``onnxruntime.quantization.quantize_dynamic``, int8 weights). Everything around the
transformer is sentence-transformers' own code: its tokenizer and truncation (``preprocess``) and the
modules that follow in ``modules.json`` (pooling, normalisation, dense layers...), so only the
transformer's arithmetic changes. ONNX Runtime runs on the CPU with as many threads as torch.

``openvino-bf16:`` runs the same float export in OpenVINO's CPU plugin with bfloat16 arithmetic (only on a CPU with
bfloat16 units, e.g. AVX512-BF16 or AMX: elsewhere it is refused rather than run as float32 under its name).

``onnx:`` reproduces the torch path to float32 rounding (measured in bench/results/embeddings.md); ``openvino-bf16:``
moves each vector by about 1e-5 in cosine and pairwise cosines by up to a few 1e-3; ``onnx-int8:`` is a different model
numerically (see the same table before using it). The embedding
cache keys them apart from the torch path and from each other (the embedder's name is in the key).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nncift.files.atomic import atomic_write
from nncift.models.loading import ModelError, cache_dir, load_embedder, model_fingerprint, resolve_embedder

__all__ = ["BACKENDS", "EXPORT_VERSION", "ONNX_MAX_BATCH", "SortedEncoder", "load_onnx_embedder", "onnx_fingerprint",
           "onnx_model_file", "onnx_of", "onnx_session", "openvino_runner", "session_runner", "torch_runner"]

BACKENDS = {"onnx:": "onnx", "onnx-int8:": "onnx-int8", "openvino-bf16:": "openvino-bf16"}
"""Embedder-name prefix → backend."""
EXPORT_VERSION = 1
"""Bumped whenever the exported graph changes: part of the ONNX cache key and of the embedding cache key."""
ONNX_MAX_BATCH = 4
"""Texts per ONNX Runtime call, at most: on one CPU thread small batches of similar token counts pad least and run
fastest (bench/results/embeddings.md)."""
OPENVINO_MAX_BATCH = 16
"""Texts per OpenVINO call, at most (bfloat16 runs larger batches a little faster: bench/results/embeddings.md)."""
OPSET = 17
PROBE_TOLERANCE = 1e-3
"""Largest |ONNX − torch| on the probe batch's token embeddings for an export to be kept."""
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PROBE = ("A short probe sentence.", "A somewhat longer probe sentence, padded less than the first one is.")

TransformerRunner = Callable[[dict[str, Any]], np.ndarray]
"""The transformer's token embeddings, float32 (batch, tokens, d), for a batch of sentence-transformers features."""


def onnx_of(embedder: str) -> tuple[str, str] | None:
    """``(backend, model)`` of an ``onnx:MODEL``, ``onnx-int8:MODEL`` or ``openvino-bf16:MODEL`` embedder name, else None."""
    for prefix, backend in BACKENDS.items():
        if embedder.startswith(prefix):
            model = embedder[len(prefix):]
            if not model:
                raise ModelError(f"embedder '{embedder}': name the model after '{prefix}' (e.g. {prefix}all-MiniLM-L6-v2)")
            return backend, model
    return None


def _weights_stamp(resolved: str) -> list[list[Any]]:
    """Name, size and modification time of the weight files of a local model folder (empty for a hub id)."""
    folder = Path(resolved)
    if not folder.is_dir():
        return []
    files = sorted(p for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def onnx_fingerprint(embedder: str) -> dict[str, Any]:
    """The base model's fingerprint, with the embedder's full name, its backend and the export version."""
    parsed = onnx_of(embedder)
    if parsed is None:
        raise ValueError(f"not an ONNX embedder name: {embedder}")
    backend, model = parsed
    return {**model_fingerprint(model, kind="embedder"), "name": embedder, "backend": backend, "export": EXPORT_VERSION}


def _export_folder(model: str, root: Path | None) -> Path:
    """The cache folder of one model's exports: keyed by its fingerprint, its weight files' stamps, the export version and opset."""
    resolved = resolve_embedder(model)
    stamp = {**model_fingerprint(model, kind="embedder"), "name": "", "weights": _weights_stamp(resolved),
             "export": EXPORT_VERSION, "opset": OPSET}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    return (root or cache_dir() / "models" / "onnx") / key


def _transformer_inputs(model: Any) -> tuple[str, ...]:
    """The names of :data:`_INPUTS` that the sentence-transformers model's first module feeds its transformer."""
    from sentence_transformers.base.modules.transformer import Transformer

    if not isinstance(model[0], Transformer):
        raise ModelError(f"the ONNX backends need a sentence-transformers model whose first module is a Transformer, "
                         f"not {type(model[0]).__name__}: use the torch path (no onnx: prefix)")
    features = model.preprocess(list(_PROBE))
    accepted = inspect.signature(model[0].model.forward).parameters
    return tuple(name for name in _INPUTS if name in features and name in accepted)


def torch_runner(model: Any) -> TransformerRunner:
    """The sentence-transformers model's own first module (torch), as a :data:`TransformerRunner`."""
    import torch

    def run(features: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            return model[0](dict(features))["token_embeddings"].float().cpu().numpy()

    return run


def _export(model: Any, target: Path) -> None:
    """Export the transformer of a sentence-transformers model to ``target`` (atomic), checked on the probe batch."""
    import torch

    names = _transformer_inputs(model)
    network = copy.deepcopy(model[0].model).float().cpu()
    if hasattr(network, "set_attn_implementation"):  # one plain graph of MatMul and Softmax, for any attention setting
        network.set_attn_implementation("eager")
    else:  # transformers < 4.48
        network.config._attn_implementation = "eager"

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.network(**dict(zip(names, inputs))).last_hidden_state

    wrapper = TokenEmbeddings().eval()  # export restores this mode afterwards: eval, never dropout
    probe = model.preprocess(list(_PROBE))
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, "token_embeddings")}
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(probe[name].cpu() for name in names), str(tmp), input_names=list(names),
                              output_names=["token_embeddings"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        _check_against_torch(model, _open_session(tmp), names)

    atomic_write(target, write)


def _check_against_torch(model: Any, session: Any, names: Sequence[str]) -> None:
    """Refuse an export whose token embeddings differ from torch's on the probe batch (padding included)."""
    features = model.preprocess(list(_PROBE))
    exported = session.run(None, {name: features[name].cpu().numpy() for name in names})[0]
    expected = torch_runner(model)(features)
    mask = features["attention_mask"].cpu().numpy().astype(bool)
    error = float(np.abs(exported - expected)[mask].max())
    if not error <= PROBE_TOLERANCE:
        raise ModelError(f"the ONNX export of the embedder differs from torch by {error:.2e} on a probe batch "
                         f"(tolerance {PROBE_TOLERANCE}): use the torch path (no onnx: prefix)")


def _quantise(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the exported transformer's MatMul weights (atomic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def write(tmp: Path) -> None:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its advice to pre-process, logged on the root logger
        try:
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": 1})  # float32, where shape inference gives no type
        finally:
            logging.disable(previous)

    atomic_write(target, write)


def _open_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path``, with ``threads`` intra-op threads (default: torch's count)."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load_errors() -> tuple[type[BaseException], ...]:
    """What onnx and ONNX Runtime raise on a torn, truncated or foreign model file (their errors derive from Exception only)."""
    from google.protobuf.message import DecodeError
    from onnx.checker import ValidationError
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (DecodeError, ValidationError, state.InvalidProtobuf, state.Fail, state.InvalidGraph, state.NoSuchFile, state.InvalidArgument,
            RuntimeError, OSError, ValueError)


def onnx_model_file(model: Any, name: str, backend: str, *, root: Path | None = None) -> Path:
    """The cached ONNX file of embedder ``name`` (a loaded sentence-transformers ``model``) for ``backend``, exported
    (and quantised) on first use. Under ``root`` (default ``$NNCIFT_CACHE/models/onnx``)."""
    folder = _export_folder(name, root)
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        _export(model, fp32)
    if backend != "onnx-int8":  # onnx, openvino-bf16: the float export
        return fp32
    int8 = folder / "model-int8.onnx"
    if not int8.is_file():
        _quantise(fp32, int8)
    return int8


def onnx_session(model: Any, name: str, backend: str, *, root: Path | None = None, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the cached export (see :func:`onnx_model_file`). A cached file that does not load
    (torn, truncated, foreign) or lacks the transformer's inputs is removed and rebuilt once; a second failure is a
    :class:`ModelError`."""
    names = _transformer_inputs(model)
    folder = _export_folder(name, root)
    for attempt in (1, 2):
        path = folder / ("model.onnx" if backend == "onnx" else "model-int8.onnx")
        try:
            path = onnx_model_file(model, name, backend, root=root)  # (quantising reads the float file: it may fail too)
            session = _open_session(path, threads)
            inputs = {node.name for node in session.get_inputs()}
            if inputs != set(names) or [node.name for node in session.get_outputs()] != ["token_embeddings"]:
                raise ValueError(f"inputs {sorted(inputs)}, expected {sorted(names)}")
            return session
        except ModelError:
            raise
        except _load_errors() as error:
            if attempt == 2:
                raise ModelError(f"the ONNX export of '{name}' at {path} does not load even after rebuilding it "
                                 f"({type(error).__name__}: {error}); use the torch path (no onnx: prefix)") from None
            warnings.warn(f"the cached ONNX export of '{name}' in {folder} is unusable ({type(error).__name__}: "
                          f"{str(error)[:200]}); rebuilding it", stacklevel=2)
            for stale in folder.glob("model*.onnx"):
                stale.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def openvino_runner(path: Path, threads: int | None = None) -> TransformerRunner:
    """OpenVINO's CPU plugin on the exported float file ``path``, computing in bfloat16, with ``threads`` threads (default
    torch's count), as a :data:`TransformerRunner`. Refused (:class:`ModelError`) on a CPU without bfloat16 units, where
    OpenVINO would quietly compute in float32."""
    import openvino
    import torch

    core = openvino.Core()
    capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if "BF16" not in capabilities:
        raise ModelError(f"openvino-bf16: this CPU has no bfloat16 units (OpenVINO reports {', '.join(capabilities)}); "
                         f"use onnx:MODEL (float32, about half the speed) instead")
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()})
    names = [port.get_any_name() for port in compiled.inputs]

    def run(features: dict[str, Any]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(features[name].cpu().numpy(), dtype=np.int64) for name in names}
        return np.asarray(compiled(feeds)[0], dtype=np.float32)

    return run


def session_runner(session: Any) -> TransformerRunner:
    """An ONNX Runtime session of an exported transformer, as a :data:`TransformerRunner`."""
    names = [node.name for node in session.get_inputs()]

    def run(features: dict[str, Any]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(features[name].cpu().numpy(), dtype=np.int64) for name in names}
        return np.asarray(session.run(None, feeds)[0], dtype=np.float32)

    return run


def _batch_of(features: dict[str, Any], rows: np.ndarray, length: int, left: bool) -> dict[str, Any]:
    """The features of some rows of a padded batch, cut to ``length`` tokens (the padding side kept)."""
    import torch

    total = len(features["attention_mask"])
    batch: dict[str, Any] = {}
    for key, value in features.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2 and len(value) == total:
            picked = value[torch.as_tensor(rows)]
            batch[key] = picked[:, -length:] if left else picked[:, :length]
        else:
            batch[key] = value
    return batch


class SortedEncoder:
    """sentence-transformers' pipeline (tokenizer, truncation, the modules after the transformer) with the transformer
    run by ``runner``, in batches of texts of similar token counts, with ``encode`` like SentenceTransformer's."""

    def __init__(self, model: Any, runner: TransformerRunner, *, max_batch: int | None = None) -> None:
        self.model, self.runner, self.max_batch = model, runner, max_batch

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        """float32 (len(texts), d): texts sorted by token count, cut into batches of at most ``batch_size`` (and at most
        ``max_batch``) texts, each padded to its longest text only; rows in the order of ``texts``."""
        import torch

        texts = list(texts)
        if not texts:
            dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, dimension() or 0), dtype=np.float32)
        features = self.model.preprocess(texts)
        lengths = features["attention_mask"].sum(dim=1).cpu().numpy()
        order = np.argsort(-lengths, kind="stable")
        left = getattr(self.model[0].tokenizer, "padding_side", "right") == "left"
        step = max(1, min(batch_size, self.max_batch or batch_size))
        out: np.ndarray | None = None
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            batch = _batch_of(features, rows, int(lengths[rows].max()), left)
            batch["token_embeddings"] = torch.from_numpy(self.runner(batch))
            with torch.inference_mode():
                for module in list(self.model)[1:]:
                    batch = module(batch)
            vectors = batch["sentence_embedding"].float().cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def load_onnx_embedder(embedder: str, *, trust_remote_code: bool = False, root: Path | None = None,
                       threads: int | None = None, max_batch: int | None = None) -> SortedEncoder:
    """The encoder of an ``onnx:MODEL``, ``onnx-int8:MODEL`` or ``openvino-bf16:MODEL`` embedder name: always on the CPU,
    with ``threads`` threads (default torch's count); the export is made on first use and cached under ``root``."""
    parsed = onnx_of(embedder)
    if parsed is None:
        raise ModelError(f"not an ONNX embedder name: '{embedder}' (expected onnx:MODEL, onnx-int8:MODEL or openvino-bf16:MODEL)")
    backend, name = parsed
    openvino = backend == "openvino-bf16"
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
        import onnxruntime  # noqa: F401  (checks the export: see onnx_session)

        if openvino:
            import openvino as _  # noqa: F401
    except ImportError as error:
        needs = ("OpenVINO", "openvino") if openvino else ("ONNX Runtime", "onnx")
        raise ModelError(f"the embedder '{embedder}' needs {needs[0]}: pip install 'nncift[{needs[1]}]' ({error})") from None
    model = load_embedder(name, device="cpu", trust_remote_code=trust_remote_code)
    session = onnx_session(model, name, "onnx" if openvino else backend, root=root, threads=threads)  # a float export that loads
    if openvino:
        runner = openvino_runner(onnx_model_file(model, name, "onnx", root=root), threads)
        return SortedEncoder(model, runner, max_batch=OPENVINO_MAX_BATCH if max_batch is None else max_batch)
    return SortedEncoder(model, session_runner(session), max_batch=ONNX_MAX_BATCH if max_batch is None else max_batch)
