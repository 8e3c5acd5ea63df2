"""What the InfluenceNetwork reads of a record (``--network.input``): the example text, or that beside the response alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nncift.data.records import Record
from nncift.models.embeddings import embed_records, embed_texts
from nncift.settings.stages import NetworkSettings
from nncift.steps.select import ADDED_SETTINGS


def _records() -> list[Record]:
    return [Record(instruction=f"Classify review {i}.", input=f"the film was {'good' if i % 2 else 'dull'} {i}", output=out)
            for i, out in enumerate(["positive", "negative", "positive", "neutral, with a longer answer"])]


def test_text_and_response_are_two_unit_halves_whose_cosine_is_the_mean_of_both(tmp_path, tiny_lm_dir, monkeypatch) -> None:
    monkeypatch.setenv("NNCIFT_CACHE", str(tmp_path / "cache"))
    model, records = f"lm:{tiny_lm_dir}", _records()
    text = embed_records(records, model=model, progress=False)
    both = embed_records(records, model=model, progress=False, network_input="text+response")
    responses = embed_texts([r.output for r in records], model=model, progress=False)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    assert both.shape == (4, 2 * text.shape[1]) and both.dtype == np.float32
    np.testing.assert_allclose(both[:, : text.shape[1]] * math.sqrt(2), unit(text), atol=1e-6)
    np.testing.assert_allclose(both[:, text.shape[1] :] * math.sqrt(2), unit(responses), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(both @ both.T, (unit(text) @ unit(text).T + unit(responses) @ unit(responses).T) / 2, atol=1e-6)
    np.testing.assert_array_equal(embed_records(records, model=model, progress=False, network_input="text"), text)
    with pytest.raises(ValueError, match="network input"):
        embed_records(records, model=model, progress=False, network_input="response")


def test_text_is_the_default_and_what_older_folders_ran_with() -> None:
    assert NetworkSettings().input == "text"  # text+response pulled LESS's picks off-task on less-p3 (docs/network.md)
    assert ADDED_SETTINGS["network.input"] == "text"  # a folder from before the setting resumes, unchanged
    with pytest.raises(ValueError, match="input"):
        NetworkSettings(input="response")
