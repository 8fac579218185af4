"""Patching, knockout and head ablation on a tiny random model: the pair design, known answers at the last layer
(where the effect of an intervention can be computed by hand), agreement with the plain path, the stages' output
files, and one-line errors naming the params.yaml key."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_model
from emotion_circuits import causal_report
from emotion_circuits.causal import (HeadSettings, InterventionSettings, KnockoutSettings, PatchingSettings,
                                     clean_runs, design_pairs, heads, knockout, patching, resolve_layers)
from emotion_circuits.config import EMOTIONS, ConfigError, load_params, parse_section
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.sites import Intervention, Site
from emotion_circuits.stimuli import Stimulus

REPO = Path(__file__).resolve().parents[1]
WORDS = {"admiration": ["pride"]}  # the other emotions score their own names (multi-token, byte-level)
ANSWERS = AnswerSettings(words=WORDS)
TEMPLATE = "Text: {text}\nAnswer:"
ATOL = 1e-5


def stimuli(set_name: str = "B", per_emotion: int = 2) -> list[Stimulus]:
    return [Stimulus(f"{set_name.lower()}-{e}-{i}", set_name, e, f"{e} story {i}: the {i * 'very '}end of {e}.")
            for e in EMOTIONS for i in range(per_emotion)]


@pytest.fixture(scope="module")
def setup():
    loaded = tiny_model("llama")
    readout = Readout.build(loaded.tokenizer, ANSWERS)
    engine = Engine(loaded, readout, batch_size=16)
    clean = clean_runs(engine, loaded.tokenizer, TEMPLATE, stimuli(), ANSWERS)
    return loaded, readout, engine, clean


def head_log_probs(engine, readout, clean, i, h):
    """Calibrated answers of stimulus i when its last token's final residual becomes `h (d_model,)`: only the
    words' first tokens change (the label tokens at the last layer attend to keys computed from its unchanged
    input), so raw = clean raw + new minus clean log-prob of each word's first token (one word per emotion)."""
    first = [seq[0] for seq in readout.sequences]
    with torch.inference_mode():
        lp = [torch.log_softmax(engine.model.lm_head(engine.base.norm(x[None])).float(), -1)[0, first]
              for x in (h, clean.prepared[i].resid[-1, 0])]
    return clean.calibrate(clean.prepared[i].raw + lp[0] - lp[1])


def test_design_pairs_cover_every_ordered_pair():
    labels = np.repeat(EMOTIONS, 3)
    pairs, control = design_pairs(labels, EMOTIONS, per_pair=2, seed=0)
    assert pairs.shape == (56 * 2, 2)
    counts = {}
    for t, s in pairs:
        assert labels[t] != labels[s]
        counts[labels[t], labels[s]] = counts.get((labels[t], labels[s]), 0) + 1
    assert len(counts) == 56 and set(counts.values()) == {2}
    assert len(set(pairs[:, 0].tolist())) == 24  # targets spread over every stimulus
    for t, c in control.items():
        assert labels[c] == labels[t] and c != t
    again, _ = design_pairs(labels, EMOTIONS, per_pair=2, seed=0)
    assert np.array_equal(pairs, again)
    with pytest.raises(ConfigError, match="at least two stimuli of each emotion; grief has fewer"):
        design_pairs(np.array([e for e in labels if e != "grief"] + ["grief"]), EMOTIONS, 1, 0)


def test_patching_at_the_last_residual_known_answer(setup):
    """Overwriting h[L-1] with the source's value gives the target the source's first-token distribution while the
    later label tokens still read the target's prompt (multi-token words): flip, d_source and d_target follow from
    `head_log_probs`. Same-emotion control and baseline likewise."""
    _, readout, engine, clean = setup
    last = engine.n_layers - 1
    result = patching(engine, readout, clean, ["h"], [last], per_pair=1, seed=3)
    lp = clean.log_probs
    index = {e: i for i, e in enumerate(EMOTIONS)}
    _, control = design_pairs(clean.labels, EMOTIONS, 1, 3)
    for r, (t, s) in enumerate(result.pairs):
        src, tgt = index[clean.labels[s]], index[clean.labels[t]]
        c = control[t]
        patched, ctrl = (head_log_probs(engine, readout, clean, int(t), clean.prepared[x].resid[-1, 0]) for x in (s, c))
        assert result.flip[r, 0, 0] == (patched.argmax() == src)
        assert result.d_source[r, 0, 0] == pytest.approx(float(patched[src] - lp[t, src]), abs=ATOL)
        assert result.d_target[r, 0, 0] == pytest.approx(float(patched[tgt] - lp[t, tgt]), abs=ATOL)
        assert result.control_flip[r, 0, 0] == (ctrl.argmax() == src)
        assert result.control_d_source[r, 0, 0] == pytest.approx(float(ctrl[src] - lp[t, src]), abs=ATOL)
        assert result.baseline_flip[r] == (clean.top1[t] == clean.labels[s])


def test_patching_a_stimulus_into_itself_changes_nothing(setup):
    _, readout, engine, clean = setup
    prep = clean.prepared[0]
    sites = [Site(k, layer) for k in "ham" for layer in range(engine.n_layers)]
    out = engine.run(prep, [[Intervention(site, "set", prep.sites[site])] for site in sites])
    torch.testing.assert_close(clean.calibrate(out), clean.log_probs[0].expand(len(sites), -1), rtol=0, atol=ATOL)


def test_knockout_known_answers_at_the_last_layer(setup):
    """Zeroing m[L-1] leaves h[L-2] + a[L-1]; the set's mean leaves h[L-2] + a[L-1] + mean(m[L-1])."""
    _, readout, engine, clean = setup
    last = engine.n_layers - 1
    result = knockout(engine, readout, clean, ["m"], [last], n_random=2, seed=0)
    a, m = Site("a", last), Site("m", last)
    mean_m = torch.stack([p.sites[m] for p in clean.prepared]).mean(0)
    for i, prep in enumerate(clean.prepared):
        base = clean.log_probs[i]
        own = EMOTIONS.index(clean.labels[i])
        for o, residual in enumerate([prep.resid[last, 0] + prep.sites[a], prep.resid[last, 0] + prep.sites[a] + mean_m]):
            lp = head_log_probs(engine, readout, clean, i, residual)
            kl = float((base.exp() * (base - lp)).sum())
            assert result.kl[i, 0, 0, o] == pytest.approx(max(kl, 0.0), abs=ATOL)
            assert result.drop[i, 0, 0, o] == pytest.approx(float(base[own].exp() - lp[own].exp()), abs=ATOL)
            assert result.changed[i, 0, 0, o] == float(lp.argmax() != base.argmax())
    assert (result.kl >= 0).all() and np.isfinite(result.kl).all()


def test_head_ablation_matches_the_plain_path(setup):
    loaded, readout, engine, clean = setup
    result = heads(engine, readout, clean, [0, 2])
    assert result.drop.shape == (16, 2, loaded.model.config.num_attention_heads)
    ids = tokenize_prompt(loaded.tokenizer, TEMPLATE, stimuli()[5].text).ids
    groups = [[Intervention(Site("a", 2), "zero", head=h)] for h in range(4)]
    lp = clean.calibrate(plain_scores(loaded, readout, ids, groups))
    own = EMOTIONS.index(clean.labels[5])
    expected = clean.log_probs[5, own].exp() - lp[:, own].exp()
    np.testing.assert_allclose(result.drop[5, 1], expected.numpy(), atol=ATOL)


@pytest.mark.parametrize("section, cls, raw, message", [
    ("patching", PatchingSettings, {"sites": ["h", "x"]}, "params.yaml: patching.sites: 'x' is not one of h, a, m"),
    ("patching", PatchingSettings, {"per_pair": 0}, "params.yaml: patching.per_pair: must be at least 1"),
    ("patching", PatchingSettings, {"layer": [1]}, "params.yaml: patching.layer: unknown key"),
    ("knockout", KnockoutSettings, {"sites": ["h"]}, "params.yaml: knockout.sites: 'h' is not one of a, m"),
    ("heads", HeadSettings, {"layers": "all"}, "params.yaml: heads.layers: expected a list"),
    ("interventions", InterventionSettings, {"batch_size": 0}, "params.yaml: interventions.batch_size: must be"),
])
def test_bad_settings(section, cls, raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_section(raw, cls, section)
    assert "\n" not in str(err.value)


def test_layers_resolved_and_checked():
    assert resolve_layers(None, 4, "heads.layers") == [0, 1, 2, 3]
    assert resolve_layers((3, 1, 3), 4, "heads.layers") == [1, 3]
    with pytest.raises(ConfigError, match=r"params.yaml: patching.layers: layer 30 out of range \(the model has "
                                          r"layers 0..29\)"):
        resolve_layers((0, 30), 30, "patching.layers")
    with pytest.raises(ConfigError, match="params.yaml: knockout.layers: empty list"):
        resolve_layers((), 30, "knockout.layers")


def write_params(tmp_path: Path, **sections) -> Path:
    """A params file with two short stimulus sets (2 per emotion), a short prompt and the given sections."""
    for set_name in "AB":
        lines = [json.dumps({k: v for k, v in s.__dict__.items() if v is not None})   # optional keys unset: absent
                 for s in stimuli(set_name)]
        (tmp_path / f"set_{set_name}.jsonl").write_text("\n".join(lines) + "\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["stimuli"] = {name: str(tmp_path / f"set_{name}.jsonl") for name in "AB"}
    params["run"]["sets"] = ["A", "B"]
    params["prompts"]["short"] = {"template": TEMPLATE}
    params.update(answers={"words": WORDS}, interventions={"prompt": "short", "n_boot": 100, "batch_size": 32},
                  patching={"per_pair": 1}, knockout={}, heads={"top": 3})
    for key, value in sections.items():
        params[key].update(value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def tiny_registry(monkeypatch):
    """The stages load the tiny Llama whatever model they are asked for."""
    monkeypatch.setattr(causal_report, "load_model", lambda name, params: tiny_model("llama"))


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_stages_write_their_outputs(tmp_path, tiny_registry):
    params = load_params(write_params(tmp_path))
    metrics = tmp_path / "metrics"
    plots = tmp_path / "plots"
    patch = causal_report.run_stage(params, "smollm2-135m-instruct", "patching", metrics, plots)
    knock = causal_report.run_stage(params, "smollm2-135m-instruct", "knockout", metrics, plots)
    head = causal_report.run_stage(params, "smollm2-135m-instruct", "heads", metrics, plots)
    out = metrics / "smollm2-135m-instruct"
    assert json.loads((out / "patching.json").read_text())["n_pairs"] == 56 == patch["n_pairs"]
    assert set(patch["behaviour"]) == {"A", "B"} and patch["peak"]["site"] in "ham"
    assert 0 <= patch["n_answered"] <= 56 and "flip_answered" in patch["baseline"]
    assert patch["baseline"]["flip_low"] <= patch["baseline"]["flip"] <= patch["baseline"]["flip_high"]
    assert set(knock["a"]) == {"zero", "mean", "random"} and "critical" in knock["m"]["zero"]
    assert len(head["top"]) == 3 and head["top"]["01"]["drop"] >= head["top"]["03"]["drop"]
    wide = read_csv(plots / "smollm2-135m-instruct" / "patching.csv")
    assert list(wide[0]) == ["layer", "h", "a", "m", "h_control", "a_control", "m_control", "baseline"]
    assert [int(r["layer"]) for r in wide] == [0, 1, 2]
    detail = read_csv(plots / "smollm2-135m-instruct" / "patching_detail.csv")
    assert len(detail) == 9 and {"flip", "flip_low", "flip_high", "control_flip", "d_source", "d_target",
                                 "baseline_flip", "flip_answered", "control_flip_answered"} <= set(detail[0])
    assert list(read_csv(plots / "smollm2-135m-instruct" / "knockout.csv")[0]) == [
        "layer", "a_zero", "a_mean", "a_random", "m_zero", "m_mean", "m_random"]
    assert len(read_csv(plots / "smollm2-135m-instruct" / "knockout_detail.csv")) == 2 * 3 * 3
    assert len(read_csv(plots / "smollm2-135m-instruct" / "heads.csv")) == 3 * 4


@pytest.mark.parametrize("stage, sections, message", [
    ("patching", {"patching": {"layers": [1, 3]}},
     "params.yaml: patching.layers: layer 3 out of range (the model has layers 0..2)"),
    ("heads", {"heads": {"set": "Z"}}, "params.yaml: heads.set: unknown stimulus set 'Z'"),
    ("patching", {"patching": {"behaviour_sets": ["A", "Q"]}},
     "params.yaml: patching.behaviour_sets[1]: unknown stimulus set 'Q'"),
    ("knockout", {"interventions": {"prompt": "three-shot"}},
     "params.yaml: interventions.prompt: unknown prompt 'three-shot'"),
])
def test_stage_errors_name_the_key(tmp_path, tiny_registry, stage, sections, message):
    params = load_params(write_params(tmp_path, **sections))
    with pytest.raises(ConfigError) as err:
        causal_report.run_stage(params, "gemma3-270m", stage, tmp_path / "m", tmp_path / "p")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "m").exists()


def test_unknown_site_stage_script_one_line(tmp_path):
    """Through the stage script: bad params stop before any model is loaded, with one stderr line."""
    path = write_params(tmp_path, patching={"sites": ["h", "resid"]})
    run = subprocess.run([sys.executable, str(REPO / "stages/patching.py"), "--model", "gemma3-270m",
                          "--params", str(path), "--metrics", str(tmp_path / "m"), "--plots", str(tmp_path / "p")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: params.yaml: patching.sites: 'resid' is not one of h, a, m"
