"""Per-example gradients from hooks against a per-example loop and torch.func; the feature store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nncift.data.records import Record
from nncift.files.errors import SettingsMismatch
from nncift.gradients import (
    AdamPreconditioner,
    AdamState,
    FeatureStore,
    GradientFeaturizer,
    PerExampleGradients,
    collate,
    encode_example,
    layer_shape,
    make_compressor,
    parameter_matrix,
    per_example_losses,
    trainable_layers,
)
from nncift.gradients.adam import flat_state
from nncift.gradients.batches import IGNORE


class ToyLM(nn.Module):
    """Tokens → frozen embedding → Linear(bias) → causal masked mean → tanh → Linear → Linear head."""

    def __init__(self, vocab: int = 11, width: int = 6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.embed.weight.requires_grad_(False)
        self.mix = nn.Linear(width, width)
        self.hidden = nn.Linear(width, 5, bias=False)
        self.head = nn.Linear(5, vocab)

    def forward(self, input_ids, attention_mask, logits_to_keep=None, use_cache=None):
        mask = attention_mask.float().unsqueeze(-1)
        h = self.mix(self.embed(input_ids)) * mask
        h = torch.tanh(h.cumsum(dim=1) / mask.cumsum(dim=1).clamp(min=1))
        h = self.hidden(h)
        if logits_to_keep is not None:
            h = h[:, logits_to_keep]
        return SimpleNamespace(logits=self.head(h))


def reference_loss(model, input_ids, attention_mask, labels):
    """loss_b for ONE unbatched example, written independently of nncift (full logits, shift by one)."""
    logits = model(input_ids=input_ids[None], attention_mask=attention_mask[None]).logits[0]
    targets = labels[1:]
    losses = nn.functional.cross_entropy(logits[:-1], targets.clamp(min=0), reduction="none")
    valid = (targets != IGNORE).float()
    return (losses * valid).sum() / valid.sum()


def toy_batch():
    """Three examples of lengths 7, 4, 6 (right padding), response = the last 3, 2, 4 tokens."""
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length, response in ((7, 3), (4, 2), (6, 4)):
        ids = torch.randint(1, 11, (length,), generator=generator).tolist()
        examples.append(SimpleNamespace(input_ids=tuple(ids), prompt_length=length - response))
    return collate(examples, pad_token_id=0)


def loop_gradients(model, layers, batch):
    """Per-example gradients by one backward pass per UNPADDED example: list over examples of flat tensors."""
    shapes = [layer_shape(name, module) for name, module in layers]
    result = []
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        model.zero_grad(set_to_none=True)
        reference_loss(model, batch["input_ids"][row, :length], batch["attention_mask"][row, :length],
                       batch["labels"][row, :length]).backward()
        result.append(torch.cat([
            parameter_matrix(shape, module.weight.grad, module.bias.grad if shape.has_bias else None).flatten()
            for shape, (_, module) in zip(shapes, layers)
        ]))
    model.zero_grad(set_to_none=True)
    return torch.stack(result)


def hook_gradients(model, layers, batch):
    """Per-example flat gradients from ONE batched backward pass with the hooks (identity compressor)."""
    compressor = make_compressor("identity", [layer_shape(n, m) for n, m in layers], 1)
    return GradientFeaturizer(model, layers, compressor)(batch)


def test_toy_hooks_match_loop_and_torch_func():
    torch.manual_seed(0)
    model = ToyLM()
    layers = trainable_layers(model)
    assert [name for name, _ in layers] == ["mix", "hidden", "head"]
    batch = toy_batch()
    hooks = hook_gradients(model, layers, batch)
    loop = loop_gradients(model, layers, batch)
    assert hooks.shape == (3, 6 * 7 + 5 * 6 + 11 * 6)
    assert loop.abs().sum(dim=1).min() > 0
    torch.testing.assert_close(hooks, loop, rtol=1e-5, atol=1e-6)

    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def loss_of(p, ids, mask, labels):  # padded example, as in the batch
        return reference_loss(lambda **kw: functional_call(model, p, args=(), kwargs=kw), ids, mask, labels)

    per_param = vmap(grad(loss_of), in_dims=(None, 0, 0, 0))(params, batch["input_ids"], batch["attention_mask"], batch["labels"])
    func = torch.cat([
        torch.cat([per_param["mix.weight"], per_param["mix.bias"].unsqueeze(-1)], dim=2).flatten(1),
        per_param["hidden.weight"].flatten(1),
        torch.cat([per_param["head.weight"], per_param["head.bias"].unsqueeze(-1)], dim=2).flatten(1),
    ], dim=1)
    torch.testing.assert_close(hooks, func, rtol=1e-5, atol=1e-6)


def test_hooks_zero_output_gradients_outside_the_token_mask():
    torch.manual_seed(0)
    model = ToyLM()
    layers = trainable_layers(model)
    batch = toy_batch()
    mask = batch["attention_mask"].clone()
    mask[0, 4] = 0  # a real token whose output-gradient is not zero
    seen = {}

    def callback(index, inputs, output_grads):
        seen[index] = output_grads

    with PerExampleGradients(layers, callback) as tracker:
        tracker.token_mask = mask
        per_example_losses(model, batch).sum().backward()
    assert set(seen) == {0, 1, 2}
    for index in (0, 1):  # the head sees only the positions the loss needs: not masked
        assert torch.all(seen[index][mask == 0] == 0)
        assert seen[index][0, 5].abs().sum() > 0
    with PerExampleGradients(layers, lambda i, x, d: seen.__setitem__(i, d)):
        model.zero_grad()
        per_example_losses(model, batch).sum().backward()
    assert seen[0][0, 4].abs().sum() > 0  # without the mask that position has a gradient


def test_trainable_layers_refuses_parameters_it_cannot_track():
    model = ToyLM()
    model.embed.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="embed.weight"):
        trainable_layers(model)


def _records(n):
    return [Record(f"Question {i}: what is {i} plus {i}?", "" if i % 2 else "show the steps", f"The answer is {2 * i}.",
                   task="even" if i % 2 == 0 else "odd") for i in range(n)]


def _tiny_batch(tokenizer, records, max_length=96):
    return collate([encode_example(tokenizer, r, max_length) for r in records], tokenizer.pad_token_id)


def test_lora_hooks_match_per_example_loop(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    from nncift.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_lm_dir), device="cpu")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    model.eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)  # B = 0 at init would make every lora_A gradient zero
    layers = trainable_layers(model)
    assert len(layers) == 2 * 2 * 2 and all(".lora_" in name for name, _ in layers)
    batch = _tiny_batch(tokenizer, _records(3))
    assert batch["attention_mask"].sum(dim=1).unique().numel() > 1  # real padding in the batch
    hooks = hook_gradients(model, layers, batch)
    loop = loop_gradients(model, layers, batch)
    assert loop.abs().sum(dim=1).min() > 0
    torch.testing.assert_close(hooks, loop, rtol=1e-4, atol=1e-6)


def test_conv1d_hooks_and_adam_preconditioning_match_loop(tiny_gpt2_dir):
    from nncift.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_gpt2_dir), device="cpu")
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")) and ".mlp." not in name)
    layers = trainable_layers(model)
    shapes = [layer_shape(n, m) for n, m in layers]
    assert all(s.transposed and s.has_bias for s in shapes) and len(shapes) == 4
    batch = _tiny_batch(tokenizer, _records(3))
    hooks = hook_gradients(model, layers, batch)
    loop = loop_gradients(model, layers, batch)
    torch.testing.assert_close(hooks, loop, rtol=1e-4, atol=1e-6)

    generator = torch.Generator().manual_seed(3)
    moments = [[parameter_matrix(s, torch.randn(m.weight.shape, generator=generator), torch.randn(m.bias.shape, generator=generator)).flatten()
                for s, (_, m) in zip(shapes, layers)] for _ in range(2)]
    state = AdamState(moments[0], [v.abs() * 1e-3 for v in moments[1]], step=7)
    featurizer = GradientFeaturizer(model, layers, make_compressor("identity", shapes, 1), AdamPreconditioner(state))
    m, v = flat_state(state)
    m_new, v_new = 0.9 * m + 0.1 * loop, 0.999 * v + 0.001 * loop.square()
    expected = (m_new / (1 - 0.9 ** 8)) / ((v_new / (1 - 0.999 ** 8)).sqrt() + 1e-8)
    torch.testing.assert_close(featurizer(batch), expected, rtol=1e-4, atol=1e-5)


def test_feature_store_resumes_and_refuses_other_settings(tmp_path):
    values = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    one_go = FeatureStore(tmp_path / "a", "feats", 10, 4, {"compressor": "dropout"})
    one_go.write(np.arange(10), values)

    first = FeatureStore(tmp_path / "b", "feats", 10, 4, {"compressor": "dropout"})
    first.write(np.array([7, 1, 3, 5, 9]), values[[7, 1, 3, 5, 9]])
    with first.done_path.open("a") as handle:
        handle.write('{"rows": [0, 2')  # torn line of a killed process: ignored
    del first
    again = FeatureStore(tmp_path / "b", "feats", 10, 4, {"compressor": "dropout"})
    missing = again.missing(np.arange(10))
    assert missing.tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="not computed"):
        again.read(np.array([0, 1]))
    again.write(missing, values[missing])
    assert np.array_equal(again.read(np.arange(10)), one_go.read(np.arange(10)))
    lines = again.done_path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["rows"] == [0, 2, 4, 6, 8]  # torn line kept apart
    assert json.loads((tmp_path / "b" / "feats.json").read_text())["n_rows"] == 10
    with pytest.raises(SettingsMismatch, match="compressor"):
        FeatureStore(tmp_path / "b", "feats", 10, 4, {"compressor": "projection"})
