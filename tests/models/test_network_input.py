"""What the InfluenceNetwork reads of a record (``--network.input``, ``--network.response_weight``): the example text, or that
beside the response alone, and ``auto``, each influence function's own choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nncift.data.records import Record
from nncift.influence import network_reading
from nncift.models.embeddings import embed_records, embed_texts
from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT
from nncift.settings.stages import NetworkSettings
from nncift.steps.select import ADDED_SETTINGS


def _records() -> list[Record]:
    return [Record(instruction=f"Classify review {i}.", input=f"the film was {'good' if i % 2 else 'dull'} {i}", output=out)
            for i, out in enumerate(["positive", "negative", "positive", "neutral, with a longer answer"])]


def test_text_and_response_are_two_weighted_unit_halves(tmp_path, tiny_lm_dir, monkeypatch) -> None:
    """Each half is unit length; the response half is weighted w, the text half √(1 − w²): the rows stay unit vectors and
    their cosine is (1 − w²) × the texts' + w² × the responses' (w = 1/√2: the mean of both, as before the weight existed)."""
    monkeypatch.setenv("NNCIFT_CACHE", str(tmp_path / "cache"))
    model, records = f"lm:{tiny_lm_dir}", _records()
    text = embed_records(records, model=model, progress=False)
    responses = embed_texts([r.output for r in records], model=model, progress=False)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    d = text.shape[1]
    for w in (DEFAULT_RESPONSE_WEIGHT, 1 / math.sqrt(2), 0.9):
        both = embed_records(records, model=model, progress=False, network_input="text+response", response_weight=w)
        assert both.shape == (4, 2 * d) and both.dtype == np.float32
        np.testing.assert_allclose(both[:, :d], math.sqrt(1 - w * w) * unit(text), atol=1e-6)
        np.testing.assert_allclose(both[:, d:], w * unit(responses), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(both @ both.T, (1 - w * w) * (unit(text) @ unit(text).T) + w * w * (unit(responses) @ unit(responses).T),
                                   atol=1e-6)
    default = embed_records(records, model=model, progress=False, network_input="text+response")
    np.testing.assert_allclose(default[:, d:], DEFAULT_RESPONSE_WEIGHT * unit(responses), atol=1e-6)
    np.testing.assert_array_equal(embed_records(records, model=model, progress=False, network_input="text"), text)
    with pytest.raises(ValueError, match="network input"):
        embed_records(records, model=model, progress=False, network_input="response")
    with pytest.raises(ValueError, match="response weight"):
        embed_records(records, model=model, progress=False, network_input="text+response", response_weight=1.5)


def test_auto_reads_what_each_influence_function_chose() -> None:
    """DELIFT-SE reads text (its prior is then the function itself), SelectIT text (not measured with the response), LESS
    and DELIFT text+response at the weight set, a function a user registers text; an input named explicitly is kept."""
    from nncift.influence.base import PairwiseInfluence, PointwiseInfluence

    auto = NetworkSettings()
    assert auto.input == "auto" and auto.response_weight == DEFAULT_RESPONSE_WEIGHT == 0.2
    assert network_reading("delift-se", auto) == {"network_input": "text", "response_weight": 0.2}
    assert network_reading("selectit", auto)["network_input"] == "text"
    for influence in ("less", "delift"):
        assert network_reading(influence, auto) == {"network_input": "text+response", "response_weight": 0.2}
    assert PairwiseInfluence.network_input == PointwiseInfluence.network_input == "text"  # unmeasured functions: the text
    assert network_reading("less", NetworkSettings(input="text"))["network_input"] == "text"
    assert network_reading("delift-se", NetworkSettings(input="text+response", response_weight=0.5)) == {
        "network_input": "text+response", "response_weight": 0.5}


def test_older_folders_resume_as_they_ran_and_bad_values_are_refused() -> None:
    assert ADDED_SETTINGS["network.input"] == "text"  # a folder from before the input setting resumes, unchanged
    assert ADDED_SETTINGS["network.response_weight"] == pytest.approx(1 / math.sqrt(2))  # text+response was the mean of both
    with pytest.raises(ValueError, match="input"):
        NetworkSettings(input="response")
    with pytest.raises(ValueError, match="response_weight|≤ 1"):
        NetworkSettings(response_weight=1.2)
