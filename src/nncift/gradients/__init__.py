"""Per-example gradients of linear layers, their compression, and a resumable store of features.

- :mod:`.hooks`: per-example gradients from one batched backward pass (Linear, LoRA, Conv1D);
- :mod:`.compressors`: ``identity``, ``projection``, ``dropout``, ``dropout-structured`` behind one interface;
- :mod:`.adam`: Adam preconditioning (LESS training side);
- :mod:`.batches`: token batches with the loss on response tokens, the per-example loss;
- :mod:`.features`: the featurizer (hooks + compressor) and the memory-mapped feature store.
"""

from nncift.gradients.adam import ADAM_FORMS, AdamPreconditioner, AdamState
from nncift.gradients.batches import collate, encode_example, per_example_losses
from nncift.gradients.compressors import COMPRESSORS, Compressor, make_compressor
from nncift.gradients.features import FeatureStore, GradientFeaturizer, l2_normalise
from nncift.gradients.hooks import LayerShape, PerExampleGradients, layer_shape, parameter_matrix, trainable_layers

__all__ = [
    "ADAM_FORMS", "AdamPreconditioner", "AdamState", "COMPRESSORS", "Compressor", "FeatureStore",
    "GradientFeaturizer", "LayerShape", "PerExampleGradients", "collate", "encode_example", "l2_normalise",
    "layer_shape", "make_compressor", "parameter_matrix", "per_example_losses", "trainable_layers",
]
