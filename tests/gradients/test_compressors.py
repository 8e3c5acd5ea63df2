"""Compressors: exactness of identity, agreement of the fast paths with the definitions,
determinism for a seed, and unbiased inner products (statistically, over seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nncift.gradients import AdamPreconditioner, AdamState, LayerShape, make_compressor
from nncift.gradients.compressors import COMPRESSORS, ProjectionCompressor, StructuredDropoutCompressor, allocate
from nncift.gradients.hooks import full_layer_gradient

LAYERS = [LayerShape("a", 6, 5, True), LayerShape("b", 4, 9, False), LayerShape("c", 7, 3, True, transposed=True)]
P = sum(layer.size for layer in LAYERS)  # 36 + 36 + 28 = 100


def layer_inputs(batch=3, tokens=4, seed=0):
    """Random inputs and output-gradients of every layer, and the full per-example gradients they give."""
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, tokens, layer.in_features, generator=generator) for layer in LAYERS]
    grads = [torch.randn(batch, tokens, layer.out_features, generator=generator) for layer in LAYERS]
    full = [full_layer_gradient(layer, x, d).flatten(1) for layer, x, d in zip(LAYERS, inputs, grads)]
    return inputs, grads, full


def features_from_hooks(compressor, inputs, grads):
    out = torch.zeros(inputs[0].shape[0], compressor.output_dim)
    for layer, (x, d) in enumerate(zip(inputs, grads)):
        compressor.accumulate(layer, compressor.layer_gradient(layer, x, d), out)
    return out


def test_allocate_is_proportional_bounded_and_exact_when_large():
    assert allocate([101, 301, 601], 13) == [2, 4, 7]
    assert allocate([5, 1000], 10) == [1, 9]
    assert allocate([5, 1000, 7], 2) == [1, 1, 1]
    assert allocate([5, 7], 100) == [5, 7]
    assert sum(allocate([37, 91, 12, 60], 50)) == 50


def test_identity_is_the_exact_flat_gradient():
    inputs, grads, full = layer_inputs()
    compressor = make_compressor("identity", LAYERS, 1)
    assert compressor.output_dim == P
    torch.testing.assert_close(features_from_hooks(compressor, inputs, grads), torch.cat(full, dim=1))
    torch.testing.assert_close(compressor.compress(full), torch.cat(full, dim=1))


@pytest.mark.parametrize("name", COMPRESSORS)
def test_direct_layer_path_equals_compressing_the_full_gradient(name):
    inputs, grads, full = layer_inputs()
    compressor = make_compressor(name, LAYERS, 24, seed=5)
    torch.testing.assert_close(features_from_hooks(compressor, inputs, grads), compressor.compress(full), rtol=1e-5, atol=1e-5)


def test_structured_dropout_is_the_scaled_block_of_the_full_gradient():
    inputs, grads, full = layer_inputs()
    compressor = make_compressor("dropout-structured", LAYERS, 30, seed=2)
    assert isinstance(compressor, StructuredDropoutCompressor)
    expected = []
    for layer, shape in enumerate(LAYERS):
        rows, cols = compressor._rows[layer], compressor._cols[layer]
        matrix = full[layer].view(-1, shape.out_features, shape.columns)
        block = matrix[:, rows][:, :, cols].flatten(1)
        expected.append(block * math.sqrt(shape.size / block.shape[1]))
        assert 1 <= len(rows) <= shape.out_features and 1 <= len(cols) <= shape.columns
    torch.testing.assert_close(compressor.compress(full), torch.cat(expected, dim=1))


def test_projection_is_the_dense_rademacher_matrix_and_independent_of_the_batch():
    _, _, full = layer_inputs()
    compressor = make_compressor("projection", LAYERS, 16, seed=9)
    assert isinstance(compressor, ProjectionCompressor)
    matrix = compressor.dense_matrix()
    assert matrix.shape == (P, 16) and set(matrix.unique().tolist()) == {-1.0, 1.0}
    flat = torch.cat(full, dim=1)
    torch.testing.assert_close(compressor.compress(full), flat @ matrix / 4.0, rtol=1e-5, atol=1e-4)
    alone = compressor.compress([g[1:2] for g in full])
    torch.testing.assert_close(alone, compressor.compress(full)[1:2])


@pytest.mark.parametrize("name", COMPRESSORS)
def test_deterministic_for_a_seed_and_different_across_seeds(name):
    _, _, full = layer_inputs()
    first = make_compressor(name, LAYERS, 20, seed=3).compress(full)
    again = make_compressor(name, LAYERS, 20, seed=3).compress(full)
    assert torch.equal(first, again)
    if name != "identity":
        assert not torch.equal(first, make_compressor(name, LAYERS, 20, seed=4).compress(full))


@pytest.mark.parametrize("name", ["dropout", "dropout-structured"])
def test_dropout_keeps_everything_when_k_reaches_p(name):
    _, _, full = layer_inputs()
    compressor = make_compressor(name, LAYERS, P, seed=0)
    assert compressor.output_dim == P
    torch.testing.assert_close(compressor.compress(full), torch.cat(full, dim=1))


def correlated_pair(seed=0):
    """Two gradient-like vectors (per-layer lists) with a clear positive inner product and uneven coordinates."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 3.0, P)
    shared = torch.randn(1, P, generator=generator) * scales
    a = shared + 0.7 * torch.randn(1, P, generator=generator) * scales
    b = shared + 0.7 * torch.randn(1, P, generator=generator) * scales
    split = np.cumsum([0] + [layer.size for layer in LAYERS])
    per_layer = lambda v: [v[:, split[i] : split[i + 1]] for i in range(len(LAYERS))]  # noqa: E731
    return per_layer(a), per_layer(b), float((a * b).sum())


@pytest.mark.parametrize("name,dim,seeds", [("projection", 12, 400), ("dropout", 12, 1500), ("dropout-structured", 12, 1500)])
def test_inner_products_are_unbiased_over_seeds(name, dim, seeds):
    a, b, exact = correlated_pair()
    estimates = []
    for seed in range(seeds):
        compressor = make_compressor(name, LAYERS, dim, seed=seed)
        estimates.append(float((compressor.compress(a) * compressor.compress(b)).sum()))
    estimates = np.asarray(estimates)
    standard_error = estimates.std(ddof=1) / math.sqrt(seeds)
    assert estimates.std() > 0.05 * abs(exact)  # each single estimate is noisy ...
    assert abs(estimates.mean() - exact) < 4 * standard_error  # ... but their mean converges to the exact value
    if name != "projection":  # the rescaling is what makes it unbiased: without it the mean is far off
        keep = compressor.output_dim / P
        assert abs(estimates.mean() * keep - exact) > 10 * standard_error * keep


def test_adam_preconditioner_exact_and_reference_forms_on_a_subset_of_coordinates():
    generator = torch.Generator().manual_seed(0)
    m, v = torch.randn(10, generator=generator), torch.rand(10, generator=generator) * 1e-2
    g = torch.randn(2, 10, generator=generator)
    state = AdamState([m], [v], step=4, beta1=0.8, beta2=0.99, eps=1e-6)
    m2, v2 = 0.8 * m + 0.2 * g, 0.99 * v + 0.01 * g * g
    exact = (m2 / (1 - 0.8 ** 5)) / (torch.sqrt(v2 / (1 - 0.99 ** 5)) + 1e-6)
    reference = m2 / torch.sqrt(v2 + 1e-6)
    torch.testing.assert_close(AdamPreconditioner(state)(0, g), exact)
    torch.testing.assert_close(AdamPreconditioner(state, "reference")(0, g), reference)
    subset = torch.tensor([1, 4, 7])
    torch.testing.assert_close(AdamPreconditioner(state)(0, g[:, subset], subset), exact[:, subset])
    with pytest.raises(ValueError, match="Adam form"):
        AdamPreconditioner(state, "other")


def test_unknown_compressor_is_refused():
    with pytest.raises(ValueError, match="dropout-structured"):
        make_compressor("sketch", LAYERS, 8)
