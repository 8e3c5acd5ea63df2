"""Per-example gradients of linear layers from one batched backward pass.

For a linear layer ``y_t = W x_t (+ b)`` applied to the tokens ``t`` of one example, the gradient
of that example's loss with respect to ``W`` is ``Σ_t δ_t x_tᵀ`` where ``δ_t = ∂loss/∂y_t`` is the
output-gradient at token ``t``. A forward hook keeps each layer's inputs ``x`` of shape
``(batch, tokens, in)``; a tensor hook on the layer's output receives ``δ`` of shape
``(batch, tokens, out)`` during the one backward pass of the *summed* per-example losses. Since the
examples of a batch do not interact in a transformer's forward pass, ``δ`` of example ``b`` is the
output-gradient of example ``b``'s own loss, and ``Σ_t δ_bt x_btᵀ`` its own gradient.

Supported layers: ``torch.nn.Linear`` (this includes the ``lora_A`` / ``lora_B`` modules inside
``peft``'s LoRA wrappers) and GPT-2's ``Conv1D`` (weight stored transposed, ``(in, out)``).

**Layer orientation.** Every layer's gradient is represented as an ``(out, columns)`` matrix with
``columns = in + 1`` when the layer has a bias (the bias gradient ``Σ_t δ_t`` is the last column,
as if every input had a trailing 1) and ``columns = in`` otherwise. A layer's flat coordinates are
that matrix in row-major order, and the flat gradient of a model is the concatenation of its
layers' in :func:`trainable_layers` order. Conv1D's weight gradient is transposed into this
orientation; :func:`parameter_matrix` arranges any per-parameter tensor (a ``.grad``, Adam's
moments) the same way.

Padding: the output-gradients at padding positions are set to zero (they are zero anyway when the
loss ignores those positions and attention masks them; the mask makes it explicit). A layer applied
to fewer positions than the batch has (an LM head computing only the logits the loss needs) is
left unmasked: its outputs are the loss's inputs, which give zero gradient where the loss ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from nncift.files.errors import InputError
from nncift.models.loading import ModelError

try:  # GPT-2 style layers (weight stored as (in, out))
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()  # type: ignore[assignment,misc]

LayerCallback = Callable[[int, Tensor, Tensor], None]
"""``(layer index, inputs (B, T, in), output-gradients (B, T, out))``, both float32, padding masked."""


@dataclass(frozen=True)
class LayerShape:
    """Shape of one trainable linear layer, in the layer orientation ``(out, columns)``."""

    name: str
    """Module name in the model (``model.named_modules()``)."""
    out_features: int
    """Output units (rows of the gradient matrix)."""
    in_features: int
    """Input units (without the bias column)."""
    has_bias: bool
    """Whether the layer has a trainable bias (the gradient then has one more column)."""
    transposed: bool = False
    """True for Conv1D, whose weight is stored ``(in, out)``."""

    @property
    def columns(self) -> int:
        """Columns of the gradient matrix: ``in_features + has_bias``."""
        return self.in_features + int(self.has_bias)

    @property
    def size(self) -> int:
        """Number of gradient coordinates of the layer: ``out_features · columns``."""
        return self.out_features * self.columns


def is_supported(module: nn.Module) -> bool:
    """True for layers whose per-example gradients this module computes (Linear, Conv1D)."""
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def layer_shape(name: str, module: nn.Module) -> LayerShape:
    """The :class:`LayerShape` of a Linear or Conv1D module."""
    if isinstance(module, nn.Linear):
        return LayerShape(name, module.out_features, module.in_features, _trainable_bias(module), False)
    if bool(Conv1D) and isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        return LayerShape(name, out_features, in_features, _trainable_bias(module), True)
    raise TypeError(f"{name}: unsupported layer type {type(module).__name__} (Linear or Conv1D only)")


def _trainable_bias(module: nn.Module) -> bool:
    bias = getattr(module, "bias", None)
    return bias is not None and bias.requires_grad


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules holding the model's trainable parameters, in ``named_modules`` order.

    Raises:
        ValueError: a trainable parameter lives outside a Linear/Conv1D layer (say, an embedding),
            or a layer has a trainable bias but a frozen weight; per-example gradients would miss it.
    """
    layers = []
    covered: set[int] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if is_supported(module) and weight is not None and weight.requires_grad:
            layers.append((name, module))
            covered.update(id(p) for p in module.parameters(recurse=False) if p.requires_grad)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if missing:
        raise InputError(
            f"trainable parameters outside Linear/Conv1D weights: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "") + "; freeze them or train Linear layers only"
        )
    if not layers:
        raise InputError("the model has no trainable Linear/Conv1D layer")
    return layers


def parameter_matrix(shape: LayerShape, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A per-parameter tensor (gradient, Adam moment) in the layer orientation ``(out, columns)``.

    Args:
        shape: the layer.
        weight: shaped like the layer's weight (``(out, in)``, or ``(in, out)`` for Conv1D).
        bias: shaped ``(out,)``; required when ``shape.has_bias``.
    """
    matrix = weight.t() if shape.transposed else weight
    if shape.has_bias:
        if bias is None:
            raise ValueError(f"{shape.name}: the layer has a bias, pass its tensor too")
        matrix = torch.cat([matrix, bias.reshape(-1, 1)], dim=1)
    return matrix.detach().float()


def full_layer_gradient(shape: LayerShape, inputs: Tensor, output_grads: Tensor) -> Tensor:
    """Every example's full gradient of one layer, ``(B, out, columns)``: ``Σ_t δ_bt x_btᵀ`` (+ bias column)."""
    gradient = torch.bmm(output_grads.transpose(1, 2), inputs)
    if shape.has_bias:
        gradient = torch.cat([gradient, output_grads.sum(dim=1).unsqueeze(-1)], dim=2)
    return gradient


class PerExampleGradients:
    """Context manager that reports every layer's inputs and output-gradients during backward.

    Usage::

        with PerExampleGradients(layers, callback) as tracker:
            tracker.token_mask = attention_mask          # (B, T), 1 = real token
            per_example_losses(model, batch).sum().backward()

    ``callback(layer_index, inputs, output_grads)`` runs inside the backward pass as soon as a
    layer's output-gradient is known, so it can compress right away; the layer's stored inputs
    are released after the call. Each layer must be called once per forward pass.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], callback: LayerCallback):
        self.layers = list(layers)
        self.shapes = [layer_shape(name, module) for name, module in self.layers]
        self.callback = callback
        self.token_mask: Tensor | None = None
        """(B, T) mask of real tokens; output-gradients at its zeros are set to zero (layers that see all T positions)."""
        self._inputs: dict[int, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "PerExampleGradients":
        for index, (_, module) in enumerate(self.layers):
            self._handles.append(module.register_forward_hook(self._forward_hook(index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()

    def _forward_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not output.requires_grad:
                return
            if index in self._inputs:
                raise ModelError(f"{self.shapes[index].name} was called twice in one forward pass (a layer the model reuses): "
                                 "per-example gradients need each trained layer once per pass; choose other --less.lora-targets")
            inputs = args[0].detach()
            self._inputs[index] = inputs.unsqueeze(1) if inputs.dim() == 2 else inputs
            output.register_hook(lambda grad: self._backward(index, grad))
        return hook

    def _backward(self, index: int, grad: Tensor) -> None:
        inputs = self._inputs.pop(index).float()
        output_grads = grad.detach().float()
        if output_grads.dim() == 2:
            output_grads = output_grads.unsqueeze(1)
        if self.token_mask is not None and self.token_mask.shape == output_grads.shape[:2]:
            mask = self.token_mask.to(device=output_grads.device, dtype=torch.bool).unsqueeze(-1)
            output_grads = torch.where(mask, output_grads, torch.zeros((), device=output_grads.device))
        self.callback(index, inputs, output_grads)
