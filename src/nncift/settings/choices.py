"""Allowed values of choice-valued settings, in one light module (no torch) that settings and the code
implementing them both import, and the names of the bundled models that are the defaults."""

BUNDLED_LM = "smollm2-135m-instruct"
"""The bundled causal LM (SmolLM2-135M-Instruct, converted once by ``nncift prepare-models``): the default model."""

BUNDLED_EMBEDDER = "all-MiniLM-L6-v2"
"""The bundled sentence embedder (384-d): the default input of the InfluenceNetwork."""

COMPRESSORS = ("identity", "projection", "dropout", "dropout-structured")
"""Gradient compressors (``nncift.gradients.compressors``)."""

ADAM_FORMS = ("exact", "reference")
"""Forms of LESS's Adam direction (``nncift.gradients.adam``)."""

SELECTIT_FORMS = ("paper", "reference")
"""SelectIT token-level forms (``nncift.influence.selectit``)."""

DTYPES = ("float32", "bfloat16", "float16")
"""Model weight dtypes."""

NETWORK_LOSSES = ("mse", "row-centred")
"""Training losses of the two-tower network (``nncift.network.fitting``): plain MSE, or MSE after removing each row's mean error."""
NETWORK_INPUTS = ("auto", "text", "text+response")
"""What the network reads of a record: the embedding of its example text, or that beside the embedding of its response alone;
auto: the influence function's own choice (``nncift.influence``)."""
TASK_CALIBRATIONS = ("auto", "on", "off")
"""Per-task calibration of the network (``nncift.network.task_calibration``): auto (where the selection aggregates the
targets by task: LESS's top-k), on (wherever the rows are targets of two or more tasks), off."""
DEFAULT_RESPONSE_WEIGHT = 0.2
"""Weight of the response half in the text+response input (the text half: √(1 − w²)); the prior's cosine is then
0.96 × the texts' cosine + 0.04 × the responses'."""

SAMPLING_DESIGNS = ("auto", "block", "all-targets")
"""Which pairs get the exact influence function (``nncift.run.layout``): the function's own choice, a u × u block (or g
blocks), or every target × the sampled candidates."""
GRAPH_BUILDERS = ("auto", "exact", "hnsw", "ivf")
"""How a sparse selection finds each row's K best columns (``--selection.graph``)."""

OBJECTIVES = ("fl", "flmi", "flcg", "topk")
"""Selection objectives (``nncift.selection``): facility location, its mutual-information and conditional-gain forms, top-k."""

ARCHITECTURES = ("two-tower", "paper")
"""InfluenceNetwork architectures (``nncift.network``)."""

DEVICES = ("auto", "cpu", "cuda")
"""Devices a model runs on (``cuda:N`` names one GPU)."""

EXECUTORS = ("local", "ray")
"""Where influence blocks run (``nncift.execution``)."""

JUDGE_MODES = ("off", "generate", "constrained")
"""How ``nncift evaluate`` runs its LLM judge (``nncift.downstream.judge``): not at all, by reading the first token of a greedy
answer strictly, or by taking the most likely of the tokens 1..5 after the prompt (never unparseable)."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Training precision of ``nncift finetune`` (``nncift.downstream.finetune``): auto (bf16 on a GPU that supports it, else
fp32), fp32, or bf16/fp16 mixed precision (a CUDA device only)."""
