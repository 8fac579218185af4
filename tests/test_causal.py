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
from emotion_circuits import causal_report, causal_summary
from emotion_circuits.causal import (HeadSettings, InterventionSettings, KnockoutSettings, PatchingSettings,
                                     clean_runs, design_pairs, heads, knockout, matched_controls, patching,
                                     resolve_layers, unit_directions)
from emotion_circuits.config import EMOTIONS, ConfigError, load_params, parse_section
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.sites import Intervention, Site, hooked
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
    pairs, control = design_pairs(labels, EMOTIONS, per_source=2, seed=0)
    assert pairs.shape == (24 * 7 * 2, 2)
    counts = {}
    for t, s in pairs:
        assert labels[t] != labels[s]
        counts[labels[t], labels[s]] = counts.get((labels[t], labels[s]), 0) + 1
    assert len(counts) == 56 and set(counts.values()) == {6}                   # 3 targets x 2 sources
    assert sorted(set(pairs[:, 0].tolist())) == list(range(24))                # every item is a target ...
    assert set(np.bincount(pairs[:, 0]).tolist()) == {14}                      # ... once, with 7 x 2 sources
    assert set(np.bincount(pairs[:, 1], minlength=24).tolist()) == {14}        # sources spread evenly
    for t, c in enumerate(control):
        assert labels[c] == labels[t] and c != t
    again, _ = design_pairs(labels, EMOTIONS, per_source=2, seed=0)
    assert np.array_equal(pairs, again)
    with pytest.raises(ConfigError, match="at least two stimuli of each emotion; grief has fewer"):
        design_pairs(np.array([e for e in labels if e != "grief"] + ["grief"]), EMOTIONS, 1, 0)


def test_patching_h_at_the_last_layer_recovers_the_source_and_identical_controls_recover_nothing():
    """Items of one emotion are identical, so the same-emotion control patches the target with its own state: its
    recovery is 0 at every cell; patching h[L-1] copies the whole source state (single-token labels): LD_patched =
    LD_source, recovery 1, transfer 1."""
    loaded, readout, engine, _ = setup_twins = _twins()
    clean = setup_twins[3]
    last = engine.n_layers - 1
    result = patching(engine, readout, clean, ["h", "a"], [0, last], per_source=1, seed=3)
    np.testing.assert_allclose(result.ld_patch[:, 0, 1], result.ld_source, atol=ATOL)
    np.testing.assert_allclose(result.ld_control, np.broadcast_to(result.ld_target[:, None, None],
                                                                   result.ld_control.shape), atol=ATOL)
    out = causal_summary.patching_summary(result, 200, 0, 199)
    rows = {(r["site"], r["layer"]): r for r in out["rows"]}
    assert rows["h", last]["recovery"] == pytest.approx(1.0, abs=1e-4)
    assert rows["h", last]["transfer"] == 1.0
    assert all(abs(r["control_recovery"]) < 1e-4 for r in out["rows"])
    assert out["h"]["first_layer"] in (0, last)


def _twins():
    """Two identical stimuli per emotion, read out with single-token labels (one byte each: the byte tokenizer
    gives ' ' + word two tokens, so the readout is built by hand)."""
    loaded = tiny_model("llama")
    letters = "abcdefgh"
    ids = [loaded.tokenizer(c, add_special_tokens=False)["input_ids"] for c in letters]
    assert all(len(i) == 1 for i in ids)
    readout = Readout(EMOTIONS, tuple(letters), tuple(tuple(i) for i in ids), tuple(range(len(EMOTIONS))))
    engine = Engine(loaded, readout, batch_size=16)
    twins = [Stimulus(f"b-{e}-{i}", "B", e, f"{e} story: the end of {e}.") for e in EMOTIONS for i in range(2)]
    return loaded, readout, engine, clean_runs(engine, loaded.tokenizer, TEMPLATE, twins, ANSWERS)


def test_patching_a_stimulus_into_itself_changes_nothing(setup):
    _, readout, engine, clean = setup
    prep = clean.prepared[0]
    sites = [Site(k, layer) for k in "ham" for layer in range(engine.n_layers)]
    out = engine.run(prep, [[Intervention(site, "set", prep.sites[site])] for site in sites])
    torch.testing.assert_close(clean.calibrate(out), clean.log_probs[0].expand(len(sites), -1), rtol=0, atol=ATOL)


def test_matched_controls_have_the_ablations_displacement_norm(setup):
    """Each random control moves the site by exactly ||delta|| (asserted on the values that flow downstream), and
    the shift op moves it by its own norm, as zeroing does."""
    loaded, _, engine, clean = setup
    rng = np.random.default_rng(0)
    site = Site("m", 1)
    v = clean.prepared[3].sites[site]
    mean = torch.stack([p.sites[site] for p in clean.prepared]).mean(0)
    ids = clean.prepared[3].ids
    for delta in (-v, mean - v, clean.prepared[7].sites[site] - v):
        controls = matched_controls(delta, unit_directions(rng, (4,), v.shape[-1]))
        torch.testing.assert_close(controls.norm(dim=-1), delta.norm().expand(4))
        for c in controls:
            with hooked(loaded.model, reads=[site], interventions=[Intervention(site, "add", c)]) as read:
                loaded.model(input_ids=torch.tensor([ids]))
            assert float((read[site][0] - v).norm()) == pytest.approx(float(delta.norm()), rel=1e-4)
    u = unit_directions(rng, (), v.shape[-1])
    with hooked(loaded.model, reads=[site], interventions=[Intervention(site, "shift", u)]) as read:
        loaded.model(input_ids=torch.tensor([ids]))
    assert float((read[site][0] - v).norm()) == pytest.approx(float(v.norm()), rel=1e-4)


def test_knockout_known_answers_at_the_last_layer(setup):
    """Zeroing m[L-1] leaves h[L-2] + a[L-1]; the set's mean leaves h[L-2] + a[L-1] + mean(m[L-1]); the recorded
    displacement norms are ||m|| and ||mean - m||."""
    _, readout, engine, clean = setup
    last = engine.n_layers - 1
    result = knockout(engine, readout, clean, ["m"], [last], ["zero", "mean", "resample"], n_random=2, seed=0)
    a, m = Site("a", last), Site("m", last)
    mean_m = torch.stack([p.sites[m] for p in clean.prepared]).mean(0)
    for i, prep in enumerate(clean.prepared):
        base = clean.log_probs[i]
        own = EMOTIONS.index(clean.labels[i])
        for o, residual in enumerate([prep.resid[last, 0] + prep.sites[a], prep.resid[last, 0] + prep.sites[a] + mean_m]):
            lp = head_log_probs(engine, readout, clean, i, residual)
            kl = float((base.exp() * (base - lp)).sum())
            assert result.kl[i, 0, 0, o] == pytest.approx(max(kl, 0.0), abs=ATOL)
            assert result.drop[i, 0, 0, o] == pytest.approx(float(base[own] - lp[own]), abs=ATOL)
        assert result.norm[i, 0, 0, 0] == pytest.approx(float(prep.sites[m].norm()), rel=1e-5)
        assert result.norm[i, 0, 0, 1] == pytest.approx(float((mean_m - prep.sites[m]).norm()), rel=1e-5)
        assert result.norm[i, 0, 0, 2] > 0                                     # resampled from another stimulus
    assert (result.kl >= 0).all() and np.isfinite(result.control_kl).all()


def test_heads_split_half_and_matches_the_plain_path(setup):
    loaded, readout, engine, clean = setup
    result = heads(engine, readout, clean, [0, 2], top=3, n_random=2, seed=1)
    n_heads = loaded.model.config.num_attention_heads
    assert result.rank_drop.shape == (8, 2, n_heads) and result.drop.shape == (8, 3)
    assert not set(result.rank_half) & set(result.test_half)
    ranked = result.rank_drop.mean(0)
    assert ranked[[0, 2].index(result.tested[0][0]), result.tested[0][1]] == ranked.max()
    k = 1
    i = int(result.test_half[k])
    ids = tokenize_prompt(loaded.tokenizer, TEMPLATE, stimuli()[i].text).ids
    groups = [[Intervention(Site("a", int(layer)), "zero", head=int(h))] for layer, h in result.tested]
    lp = clean.calibrate(plain_scores(loaded, readout, ids, groups))
    own = EMOTIONS.index(clean.labels[i])
    np.testing.assert_allclose(result.drop[k], (clean.log_probs[i, own] - lp[:, own]).numpy(), atol=ATOL)


@pytest.mark.parametrize("section, cls, raw, message", [
    ("patching", PatchingSettings, {"sites": ["h", "x"]}, "params.yaml: patching.sites: 'x' is not one of h, a, m"),
    ("patching", PatchingSettings, {"per_source": 0}, "params.yaml: patching.per_source: must be at least 1"),
    ("knockout", KnockoutSettings, {"ablations": ["zero", "noise"]},
     "params.yaml: knockout.ablations: 'noise' is not one of zero, mean, resample"),
    ("heads", HeadSettings, {"n_random": 0}, "params.yaml: heads.n_random: must be at least 1"),
    ("knockout", KnockoutSettings, {"layer_step": 0}, "params.yaml: knockout.layer_step: must be at least 1"),
    ("interventions", InterventionSettings, {"n_flip": 10}, "params.yaml: interventions.n_flip: must be at least 99"),
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
    assert resolve_layers(None, 8, "patching.layers", step=3) == [1, 4, 7]
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
                  patching={"per_source": 1}, knockout={}, heads={"top": 3})
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
    assert json.loads((out / "patching.json").read_text())["n_pairs"] == 16 * 7 == patch["n_pairs"]
    assert set(patch["behaviour"]) == {"A", "B"} and patch["best"]["site"] in "am" and 0 < patch["best"]["p_max"] <= 1
    assert patch["denominator"]["denominator_low"] <= patch["denominator"]["denominator_high"]
    assert {"first_layer", "first_layer_low", "recovery", "control_recovery"} <= set(patch["h"])
    assert set(knock["a"]) == {"zero", "mean"} and "critical_kl" in knock["m"]["zero"]
    assert head["n_tested"] == 3 and head["n_rank"] + head["n_test"] == 16 and "at_chance" in head
    wide = read_csv(plots / "smollm2-135m-instruct" / "patching.csv")
    assert list(wide[0]) == ["layer", "h", "a", "m", "h_control", "a_control", "m_control", "baseline"]
    assert [int(r["layer"]) for r in wide] == [0, 1, 2]
    detail = read_csv(plots / "smollm2-135m-instruct" / "patching_detail.csv")
    assert len(detail) == 9 and {"recovery", "recovery_low", "control_recovery", "recovery_minus_control_low",
                                 "transfer", "flip", "control_flip", "baseline_transfer",
                                 "denominator_covers_zero"} <= set(detail[0])
    assert list(read_csv(plots / "smollm2-135m-instruct" / "knockout.csv")[0]) == [
        "layer", "a_zero", "a_zero_control", "a_mean", "a_mean_control", "m_zero", "m_zero_control", "m_mean",
        "m_mean_control"]
    assert len(read_csv(plots / "smollm2-135m-instruct" / "knockout_detail.csv")) == 2 * 3 * 2
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


def test_common_prefix_counts_the_leading_ids_every_prompt_shares():
    from emotion_circuits.causal import common_prefix
    assert common_prefix([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3)]) == 2
    assert common_prefix([(1, 2), (1, 2, 3)]) == 2
    assert common_prefix([(7, 2), (1, 2)]) == 0
    assert common_prefix([(1, 2, 3)]) == 0                 # one prompt: nothing is shared
