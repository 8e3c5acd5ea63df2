"""The experiment report: statistics, the verdict, and the page rendered in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nncift_research.report import arm_table, markdown_table, render_html, verdict_sentences, verdicts, write_report

METRICS = ("loss", "rouge_l", "embedding_cosine", "exact_match")


def _arm(name: str, seed: int | None, exact: float, loss: float, by_family: dict[str, int] | None = None) -> dict:
    arm = {"arm": name, "seed": seed, "finetune_seconds": 10.0 if by_family else 0.0,
           "metrics": {"loss": loss, "rouge_l": exact / 2, "embedding_cosine": 0.5 + exact / 4, "exact_match": exact, "n": 50}}
    if by_family:
        total = sum(by_family.values())
        arm.update(n_train=total, by_family=by_family, target_share=by_family.get("ag_news", 0) / total)
    return arm


def _results() -> dict:
    """A results dict shaped like ``results.json`` of :mod:`nncift_research.experiment` (two seeds, one function)."""
    rng = np.random.default_rng(0)
    arms = [_arm("base", None, 0.10, 3.0)]
    for seed, (original, nncift) in enumerate([(0.70, 0.66), (0.72, 0.69)]):
        arms += [_arm("random", seed, 0.40 + seed / 100, 1.5, {"ag_news": 9, "quartz": 36}),
                 _arm("full", seed, 0.60, 1.2, {"ag_news": 30, "quartz": 120}),
                 _arm("delift-se:original", seed, original, 1.0, {"ag_news": 30, "quartz": 15}),
                 _arm("delift-se:nncift", seed, nncift, 1.1, {"ag_news": 27, "quartz": 18})]
    rows = [{"fraction": u, "split": q, "n": 100, "mse_network": 0.01 / u, "mse_mean": 0.05, "mse_random": 0.1, "spearman": 0.5,
             "top10_overlap": 0.3} for u in (0.05, 0.1, 0.2) for q in ("Q1", "Q2", "Q3", "Q4")]
    true = rng.uniform(0, 1, 500)
    return {
        "name": "Synthetic report", "budget": 45, "influences": ["delift-se"], "unavailable": {"delift": "not available in this build"},
        "original_omitted": {}, "seconds": 600.0, "arms": arms,
        "config": {"experiment": {"headline_metric": "exact_match", "target_family": "ag_news", "model": "smollm2-135m-instruct", "seeds": [0, 1]},
                   "select": {"selection": {"budget": 0.3}, "sampling": {"fraction": 0.05}},
                   "finetune": {"lora_r": 8, "lora_alpha": 16, "learning_rate": 2e-4, "epochs": 3, "batch_size": 4, "max_length": 256}},
        "environment": {"command": "nncift experiment --config bench/experiment_targeted.yaml", "packages": {}},
        "data": {"pool": 150, "targets": 20, "heldout": 50, "pool_by_family": {"ag_news": 30, "quartz": 120}},
        "cost": {"delift-se": {"original": {"seconds_by_stage": {"influence on full matrix": 12.0, "selection": 0.5}, "evaluations": 25500},
                               "nncift": {"seconds_by_stage": {"influence on sampled block": 0.4, "embeddings": 0.2, "network training": 0.3,
                                                               "prediction": 0.1, "selection": 0.5}, "evaluations": 64}}},
        "fidelity": {"delift-se": {"rows": rows, "fraction": 0.05, "subset_overlap": [0.8, 0.75],
                                   "scatter": {"true": true.tolist(), "predicted": (true + rng.normal(0, 0.1, 500)).tolist(),
                                               "split": rng.choice(["Q1", "Q2", "Q3", "Q4"], 500).tolist()}}},
    }


def test_arm_table_means_and_sample_spread() -> None:
    rows = {row["arm"]: row for row in arm_table(_results())}
    assert list(rows) == ["base", "random", "full", "delift-se:original", "delift-se:nncift"]
    assert rows["delift-se:original"]["exact_match"][0] == pytest.approx(0.71)
    assert rows["delift-se:original"]["exact_match"][1] == pytest.approx(np.std([0.70, 0.72], ddof=1))
    assert rows["delift-se:nncift"]["target_share"][0] == pytest.approx(0.6)
    assert rows["base"]["seeds"] == 1 and rows["random"]["seeds"] == 2


def test_verdict_counts_seeds_where_nncift_is_worse_with_metric_direction() -> None:
    verdict = verdicts(_results())[0]
    assert verdict["seeds"] == 2
    assert verdict["exact_match"]["difference"] == pytest.approx(-0.035)
    assert verdict["exact_match"]["worse_on"] == 2 and verdict["exact_match"]["better_on"] == 0
    assert verdict["loss"]["difference"] == pytest.approx(0.1) and verdict["loss"]["worse_on"] == 2  # higher loss is worse
    sentences = verdict_sentences(_results())
    assert sentences[0].startswith("NN-CIFT + delift-se is worse than delift-se on exact match")
    assert "-0.035" in sentences[0] and "worse on 2 of 2 seed(s)" in sentences[0]
    assert any("delift: not available" in s for s in sentences)


def test_markdown_table_has_one_row_per_arm() -> None:
    table = markdown_table(_results())
    assert table.count("\n") == 2 + 5
    assert "| NN-CIFT + delift-se | 2 | 45 | 0.60 ± 0.00 |" in table


def test_html_is_self_contained() -> None:
    page = render_html(_results())
    assert page.count('src="data:image/png;base64,') == 5
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)  # nothing loaded from elsewhere
    for encoded in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and "NN-CIFT + delift-se" in page and "Cost of selection" in page


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not found: apt-get install -y chromium (the CI installs it)")


_CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.setAttribute('data-images', images.length + '/' + loaded);
});
</script></body>"""


@pytest.mark.browser
def test_report_renders_with_its_images_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    report = write_report(_results(), tmp_path / "report.html")
    probe = tmp_path / "probe.html"  # the report plus a script that counts decoded images
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", _CHECK), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images="5/5"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1100,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, text=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    assert pixels.shape[:2] == (2400, 1100)
    not_background = np.abs(pixels - pixels[5, 5]).sum(axis=2) > 30
    assert not_background.mean() > 0.05  # text, table and figures drawn, not a blank page
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert colourful.sum() > 5000  # the coloured plots are there


def test_flat_metric_carries_no_information_and_cost_excludes_cold_stages() -> None:
    results = _results()
    for arm in results["arms"]:
        arm["metrics"]["exact_match"] = 0.0  # free-form answers: exact match 0 everywhere
    sentences = verdict_sentences(results)
    assert sentences[0].startswith("exact match is 0.000 for every arm and seed: it carries no information")
    assert not any("worse than delift-se on exact match" in s or "not worse than delift-se on exact match" in s for s in sentences)
    assert any("no verdict on exact match" in s for s in sentences)
    # influence + network + prediction only: 0.4 + 0.3 + 0.1 for NN-CIFT vs 12.0 (embeddings and selection left out)
    assert any("0.8 s for NN-CIFT vs 12.0 s for the original" in s for s in sentences)


def test_the_sizes_sentence_reads_the_stage_settings() -> None:
    from nncift_research.report import sizes_sentence

    sentence = sizes_sentence(_results())
    assert "(budget 0.3)" in sentence and "u = 0.05" in sentence


def _judged(results: dict) -> dict:
    """The results with an LLM judge's metrics on every arm (the NN-CIFT arm's judge parsed nothing on seed 1)."""
    for index, arm in enumerate(results["arms"]):
        score = 1.0 + 4 * arm["metrics"]["exact_match"]
        unparseable = index % 3
        arm["metrics"].update(judge_score=score, judge_unparseable=unparseable, judge_unparseable_share=unparseable / 50)
        if arm["arm"] == "delift-se:nncift" and arm["seed"] == 1:
            arm["metrics"].update(judge_score=None, judge_unparseable=50, judge_unparseable_share=1.0)
    return results


def test_judged_arms_show_the_judge_next_to_rouge_l() -> None:
    results = _judged(_results())
    rows = {row["arm"]: row for row in arm_table(results)}
    assert rows["delift-se:original"]["judge_score"][0] == pytest.approx(1.0 + 4 * 0.71)
    assert rows["delift-se:nncift"]["judge_score"] == (pytest.approx(1.0 + 4 * 0.66), 0.0)  # the seed without a parsed judgement left out
    assert rows["delift-se:nncift"]["judge_unparseable_share"][0] == pytest.approx(np.mean([arm["metrics"]["judge_unparseable_share"]
                                                                                             for arm in results["arms"] if arm["arm"] == "delift-se:nncift"]))
    table = markdown_table(results)
    header = table.splitlines()[0]
    assert header.index("ROUGE-L") < header.index("judge (1–5)") < header.index("judge unparseable")
    assert table.count("\n") == 2 + 5 and table.splitlines()[2].count("|") == header.count("|")
    page = render_html(results)
    assert "judge (1–5)" in page and "did not parse" in page
    verdict = verdicts(results)[0]
    assert verdict["judge_score"]["difference"] == pytest.approx(4 * (0.66 - 0.70)) and "judge_unparseable_share" not in verdict
    assert any("judge (1–5) -0.160" in sentence for sentence in verdict_sentences(results))


def test_unjudged_results_have_no_judge_columns() -> None:
    assert "judge" not in markdown_table(_results()) and "judge" not in render_html(_results())


def test_the_judge_as_headline_metric() -> None:
    results = _judged(_results())
    results["config"]["experiment"]["headline_metric"] = "judge_score"
    assert verdict_sentences(results)[0].startswith("NN-CIFT + delift-se is worse than delift-se on judge (1–5)")
    for arm in results["arms"]:
        arm["metrics"].update(judge_score=None, judge_unparseable_share=1.0)
    assert verdict_sentences(results)[0] == "NN-CIFT + delift-se: no verdict on judge (1–5) (not measured on both arms)."
