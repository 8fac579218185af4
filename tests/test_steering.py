"""Steering (issue 25 items 1-3): directions, the additions on the fast path against the plain hooked forward, a zero
vector and alpha = 0 change nothing, a synthetic readout with one planted direction (steering along it moves the
answer, a same-norm random direction does not, and directions fitted on labels that carry nothing do not either),
the max-statistic p on null data, and one-line errors for bad params."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_model
from emotion_circuits.causal import Clean, clean_runs, resolve_layers
from emotion_circuits.config import EMOTIONS, ConfigError, parse_section
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.readout import AnswerSettings, Readout, calibrate
from emotion_circuits.steering import (Directions, SteeringSettings, against_grain, balanced, fit_directions,
                                       project_out, steer, steer_groups, top_components)
from emotion_circuits.steering_summary import best_cell, grain_summary, steering_summary
from emotion_circuits.stimuli import Stimulus

TEMPLATE = "Text: {text}\nAnswer:"
ATOL = 5e-5


def neutral_items(n: int = 3) -> list[Stimulus]:
    return [Stimulus(f"n-{i}", "N", "neutral", f"The {i * 'old '}clerk filed the form on time.") for i in range(n)]


def random_directions(n_layers: int, d: int, seed: int = 0) -> Directions:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_layers, len(EMOTIONS), d)).astype(np.float32)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    return Directions(EMOTIONS, u, np.full(n_layers, 3.0, np.float32), np.zeros((n_layers, len(EMOTIONS))))


@pytest.fixture(scope="module")
def tiny_setup():
    loaded = tiny_model("llama")
    readout = Readout.build(loaded.tokenizer, AnswerSettings())
    engine = Engine(loaded, readout, batch_size=16)
    clean = clean_runs(engine, loaded.tokenizer, TEMPLATE, neutral_items(), AnswerSettings())
    return loaded, readout, engine, clean


def test_directions_are_unit_differences_of_means_and_denoising_removes_the_components():
    rng = np.random.default_rng(0)
    labels = np.repeat(EMOTIONS, 5)
    h = rng.standard_normal((40, 2, 16))
    h[labels == "rage", :, 0] += 4.0                                   # rage sits along axis 0
    fit = fit_directions(h, labels, EMOTIONS)
    np.testing.assert_allclose(np.linalg.norm(fit.directions, axis=-1), 1, atol=1e-6)
    means = np.stack([h[labels == e].mean(0) for e in EMOTIONS], 1)
    raw = means[:, 0] - means[:, 1:].mean(1)
    np.testing.assert_allclose(fit.directions[:, 0], raw / np.linalg.norm(raw, axis=-1, keepdims=True), atol=1e-6)
    assert (fit.directions[:, 0, 0] > 0.8).all()
    np.testing.assert_allclose(fit.scale, np.median(np.linalg.norm(h, axis=-1), axis=0), rtol=1e-6)
    neutral = rng.standard_normal((30, 2, 16)) * np.r_[10.0, 10.0, np.ones(14)]  # two loud axes
    basis = top_components(neutral, 2)
    den = fit_directions(h, labels, EMOTIONS, neutral, k=2)
    assert np.abs(np.einsum("lkd,led->lke", basis, den.directions)).max() < 1e-6  # orthogonal to what was removed
    assert (den.removed[:, 0] > 0.3).all() and (den.removed >= -1e-9).all()
    assert np.allclose(project_out(basis, basis), 0, atol=1e-9)


def test_probe_directions_find_the_discriminant_where_the_difference_of_means_follows_the_loud_axis():
    """Rage items move +1 along a quiet axis 0 (noise 0.3: very informative) and +3 along a loud axis 1 (noise 10:
    nearly useless). The difference of means points mostly along axis 1 (cosine with axis 0 about 0.3); the probe's
    gradient, like the best linear readout, points along axis 0 (cosine > 0.9). The method can fail: with the
    labels shuffled the probe direction does not find axis 0."""
    rng = np.random.default_rng(0)
    n, d = 400, 12
    labels = np.repeat(EMOTIONS, n // 8)
    h = rng.standard_normal((n, 1, d)) * 0.3
    h[:, 0, 1] = rng.standard_normal(n) * 10.0
    h[labels == "rage", 0, 0] += 1.0
    h[labels == "rage", 0, 1] += 3.0
    probe = fit_directions(h, labels, EMOTIONS, method="probe", C=1.0).directions[0, 0]
    mean = fit_directions(h, labels, EMOTIONS).directions[0, 0]
    assert probe[0] > 0.9 and mean[0] < 0.5
    np.testing.assert_allclose(np.linalg.norm(probe), 1, atol=1e-6)
    shuffled = fit_directions(h, rng.permutation(labels), EMOTIONS, method="probe").directions[0, 0]
    assert abs(shuffled[0]) < 0.5


def test_steering_additions_on_the_fast_path_equal_the_plain_hooked_forward(tiny):
    readout = Readout.build(tiny.tokenizer, AnswerSettings())
    engine = Engine(tiny, readout, batch_size=7)
    ids = tokenize_prompt(tiny.tokenizer, TEMPLATE, "The clerk filed the form on time.").ids
    fit = random_directions(engine.n_layers, engine.cfg.hidden_size)
    vectors = torch.from_numpy(fit.directions[[0, 2]])
    groups = steer_groups([0, 2], [0.5, 4.0], vectors, fit.scale)
    fast = engine.run(engine.prepare(ids), groups)
    plain = plain_scores(tiny, readout, ids, groups)
    torch.testing.assert_close(fast, plain, rtol=0, atol=ATOL)
    assert (fast - engine.prepare(ids).raw).abs().amax(-1).median() > 1e-3   # the additions do move the scores


def test_additions_at_every_text_token_on_the_fast_path_equal_the_plain_hooked_forward(tiny):
    """where: text adds the vector at every token of the stimulus (not the cue): the fast path, recomputing the
    prompt from the first text token, equals one plain hooked forward per group; and it is not the last-token run."""
    from emotion_circuits.steering import text_positions
    readout = Readout.build(tiny.tokenizer, AnswerSettings())
    engine = Engine(tiny, readout, batch_size=5)
    item = neutral_items(1)[0]
    ids = tokenize_prompt(tiny.tokenizer, TEMPLATE, item.text).ids
    (where,) = text_positions(tiny.tokenizer, TEMPLATE, [item])
    assert where and where[-1] < len(ids) - 1 and len(where) < len(ids) - 2         # the text only, not the cue
    fit = random_directions(engine.n_layers, engine.cfg.hidden_size, seed=4)
    vectors = torch.from_numpy(fit.directions[[0, 1]])
    groups = steer_groups([0, 1], [1.0, 3.0], vectors, fit.scale, where)
    assert all(len(g) == len(where) for g in groups)
    fast = engine.run(engine.prepare(ids, positions=True), groups)
    torch.testing.assert_close(fast, plain_scores(tiny, readout, ids, groups), rtol=0, atol=ATOL)
    last = engine.run(engine.prepare(ids), steer_groups([0, 1], [1.0, 3.0], vectors, fit.scale))
    assert (fast - last).abs().max() > 1e-3


def test_zero_vector_and_zero_dose_change_nothing(tiny_setup):
    _, readout, engine, clean = tiny_setup
    fit = random_directions(engine.n_layers, engine.cfg.hidden_size)
    zero = Directions(EMOTIONS, np.zeros_like(fit.directions), fit.scale, fit.removed)
    for dirs, doses in ((zero, [1.0, 4.0]), (fit, [0.0])):
        r = steer(engine, readout, clean, dirs, [0, 1, 2], doses, n_random=1, seed=0)
        expected = np.broadcast_to(clean.log_probs.numpy()[:, None, None, None], r.steer.shape)
        np.testing.assert_allclose(r.steer, expected, atol=ATOL)
    r = steer(engine, readout, clean, fit, [1], [0.0], n_random=2, seed=0)   # random control at dose 0 too
    np.testing.assert_allclose(r.random, np.broadcast_to(clean.log_probs.numpy()[:, None, None, None], r.random.shape),
                               atol=ATOL)


# ---------------------------------------------------------------------- a synthetic readout with a planted direction

D, N_LAYERS = 24, 3


class PlantedEngine:
    """Stands in for `Engine`: the raw score of emotion e is w_e . h + b_e where h is the item's state plus every
    'add' intervention (any layer); only rage reads a direction (w_rage = 3 v, v planted; b_rage = -3, so no clean
    item answers rage), the other scores are constant (0)."""

    def __init__(self, v: np.ndarray):
        w = np.zeros((len(EMOTIONS), D), np.float32)
        w[0] = 3 * v
        self.w = torch.from_numpy(w)

    def run(self, prepared, groups, relative=False):
        states = [prepared.h + sum((iv.value for iv in group), torch.zeros(D)) for group in groups]
        bias = torch.zeros(len(EMOTIONS))
        bias[0] = -3.0
        return torch.stack(states) @ self.w.T + bias


def planted_setup(n: int, seed: int):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(D).astype(np.float32)
    v /= np.linalg.norm(v)
    engine = PlantedEngine(v)
    h = torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32) * 0.3)
    prepared = [SimpleNamespace(h=x) for x in h]
    raw = torch.stack([engine.run(p, [[]])[0] for p in prepared])
    offsets = torch.zeros(len(EMOTIONS))
    lp = calibrate(raw, offsets)
    readout = SimpleNamespace(emotions=EMOTIONS)
    clean = Clean(prepared, raw, offsets, lp, np.asarray(EMOTIONS)[lp.argmax(-1).numpy()], np.array(["neutral"] * n))
    return v, engine, readout, clean, rng


def fitted(rng, v, planted: bool) -> Directions:
    """Directions fitted on synthetic Set A activations in which rage items sit along v (planted) or nowhere."""
    labels = np.repeat(EMOTIONS, 10)
    h = rng.standard_normal((80, N_LAYERS, D))
    if planted:
        h[labels == "rage"] += 3.0 * v
    return fit_directions(h, labels, EMOTIONS)


def test_steering_along_a_planted_direction_moves_the_answer_and_random_does_not():
    """With the direction planted in the fitting data, d_rage moves the answer to rage, the same-norm random control
    does not, and the best cell is significant; fitted on labels that carry nothing, d_rage moves no answer (the
    method can fail) and its effect is a fraction of the planted one. The per-item sign-flip p is conditional on the
    fitted directions: an unrelated direction's chance alignment with the readout is a consistent effect on every
    item, which it can detect (seen here: p 0.005-0.16 over seeds), so p says 'these directions beat random ones on
    these items', not 'a direction-level null is rejected'."""
    out = {}
    for planted in (True, False):
        v, engine, readout, clean, rng = planted_setup(40, seed=1)
        dirs = fitted(rng, v, planted)
        dirs.scale[:] = 1.0
        r = steer(engine, readout, clean, dirs, [0, 1, 2], [0.5, 2.0], n_random=2, seed=0)
        out[planted] = steering_summary(r, EMOTIONS, n_boot=200, seed=0, n_flip=199)
    rage = out[True]["per_emotion"]["rage"]
    assert rage["share"] > 0.9 and rage["random_share"] < 0.2 and rage["share_minus_random_low"] > 0.5
    assert out[True]["best"]["p_max"] <= 0.01 and out[True]["best"]["dose"] == 2.0
    assert out[True]["specificity"]["matrix"][0, 0] > 1.0 and out[True]["specificity"]["diagonal_minus_off_low"] > 0.5
    assert out[False]["per_emotion"]["rage"]["share"] < 0.1 and out[False]["best"]["share_minus_random"] < 0.05
    assert out[False]["best"]["delta_minus_random"] < 0.5 * out[True]["best"]["delta_minus_random"]


def test_against_the_grain_moves_other_emotions_items_to_the_planted_one():
    v, engine, readout, clean, rng = planted_setup(16, seed=2)
    clean.labels = np.array([EMOTIONS[1 + i % 7] for i in range(16)])   # items of the seven other emotions
    dirs = fitted(rng, v, planted=True)
    dirs.scale[:] = 1.0
    g = grain_summary(against_grain(engine, readout, clean, dirs, layer=1, dose=2.0, n_random=2, seed=0),
                      EMOTIONS, n_boot=200, seed=0, n_flip=199)
    rage = g["per_emotion"]["rage"]
    assert rage["moved"] > 0.9 and rage["random_moved"] < 0.2 and rage["ld_change_minus_random_low"] > 1.0
    assert g["per_emotion"]["grief"]["n"] == 13 and g["p"] < 0.05


def test_max_statistic_p_holds_its_level_on_null_data_and_the_smallest_cell_p_does_not():
    """Null: per-item differences symmetric about 0 in every cell of a 6 x 4 grid (cells correlated within an item,
    as layers and doses are). Over 300 datasets the max-statistic p falls below 0.05 about 5% of the time; the
    smallest uncorrected per-cell p does far more often (the wrong method)."""
    rng = np.random.default_rng(0)
    hits_max, hits_min = 0, 0
    for t in range(300):
        shared = rng.standard_normal((32, 1, 1))
        diff = 0.5 * shared + rng.standard_normal((32, 6, 4))
        out = best_cell(diff, n_flip=199, seed=t)
        hits_max += out["p_max"] < 0.05
        hits_min += out["p_cells"].min() < 0.05
    assert 0.02 <= hits_max / 300 <= 0.09
    assert hits_min / 300 > 0.2


def test_layer_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match=r"params.yaml: steering.layers: layer 40 out of range \(the model has "
                                          r"layers 0..29\)") as err:
        resolve_layers((3, 40), 30, "steering.layers", 3)
    assert "\n" not in str(err.value)
    assert resolve_layers(None, 30, "steering.layers", 3) == list(range(2, 30, 3))


def test_balanced_takes_emotions_in_turn():
    items = [Stimulus(f"b-{e}-{i}", "B", e, "t") for e in EMOTIONS for i in range(3)]
    picked = balanced(items, EMOTIONS, 10)
    assert [s.emotion for s in picked[:8]] == list(EMOTIONS) and picked[8].id == "b-rage-1"


@pytest.mark.parametrize("raw, message", [
    ({"doses": []}, "params.yaml: steering.doses: empty"),
    ({"doses": [1.0, -2.0]}, r"params.yaml: steering.doses\[1\]: -2.0 must be positive"),
    ({"n_random": 0}, "params.yaml: steering.n_random: must be at least 1"),
    ({"n_items": 1}, "params.yaml: steering.n_items: must be at least 2"),
    ({"denoise_k": -1}, "params.yaml: steering.denoise_k"),
    ({"fit_set": "N"}, "params.yaml: steering.fit_set: 'N' is also steering.set"),
    ({"fit_set": "B"}, "params.yaml: steering.fit_set: 'B' is also steering.grain_set"),
    ({"dose": [1.0]}, "params.yaml: steering.dose: unknown key"),
    ({"where": "every"}, "params.yaml: steering.where: .every., expected one of last, text"),
    ({"directions": "pca"}, "params.yaml: steering.directions: .pca., expected one of mean_difference, probe"),
    ({"probe_C": 0}, "params.yaml: steering.probe_C: 0.0 must be positive"),
])
def test_bad_steering_params_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_section(raw, SteeringSettings, "steering")
    assert "\n" not in str(err.value)


def test_summary_rows_read_the_stage_metrics():
    """report.steering_rows on metrics shaped as the stage writes them (JSON round trip: NaN -> null)."""
    import json
    from emotion_circuits import report
    from emotion_circuits.io import _clean
    v, engine, readout, clean, rng = planted_setup(16, seed=3)
    dirs = fitted(rng, v, planted=True)
    dirs.scale[:] = 1.0
    out = steering_summary(steer(engine, readout, clean, dirs, [0, 1], [2.0], 1, 0), EMOTIONS, 100, 0, 99)
    clean.labels = np.array([EMOTIONS[1 + i % 7] for i in range(16)])
    grain = grain_summary(against_grain(engine, readout, clean, dirs, 1, 2.0, 1, 0), EMOTIONS, 100, 0, 99)
    spec = {k: x for k, x in out["specificity"].items() if k not in ("matrix", "random", "emotions")}
    metrics = json.loads(json.dumps(_clean({"n": 16, "set": "N", "grain_set": "B", "best": out["best"],
                                            "earliest": out["earliest"], "n_layers": N_LAYERS,
                                            "specificity": spec, "grain": grain})))
    rows = report.steering_rows(metrics)
    assert [r[0] for r in rows] == ["steering.best", "steering.earliest", "steering.share", "steering.specificity",
                                    "steering.grain"]
    assert out["earliest"] is None and rows[1][2].text == "none in the grid"   # one planted emotion of eight
    assert report.earliest_cell(dict(out["best"], layer=2), N_LAYERS).text.startswith(f"h2 (depth {3 / N_LAYERS:.2f}), dose 2")
    assert "layer" in rows[0][2].text and "(p " in rows[0][2].text and "vs random" in rows[2][2].text
    assert report.steering_rows({}) == []


def test_earliest_reads_the_shallowest_layer_that_clears_the_bar_not_the_largest_effect():
    """The largest effect sits at the last layer and largest dose; earliest names the shallowest layer whose whole
    interval clears the bar, at its smallest such dose, and None when no cell does."""
    from emotion_circuits.steering_summary import earliest

    def row(layer, dose, low):
        return {"layer": layer, "dose": dose, "share": low + 0.05, "share_low": low, "share_high": low + 0.1,
                "random_share": 0.1, "random_share_low": 0.05, "random_share_high": 0.15,
                "share_minus_random": low, "share_minus_random_low": low - 0.02, "share_minus_random_high": low + 0.02}
    rows = [row(9, 1.0, 0.9), row(9, 0.5, 0.8), row(5, 1.0, 0.6), row(5, 0.5, 0.3), row(1, 1.0, 0.1)]
    got = earliest(rows)
    assert (got["layer"], got["dose"]) == (5, 1.0) and got["bar"] == 0.5
    assert earliest(rows, bar=0.95) is None


def test_ablation_generation_and_valence_rows_read_the_stage_metrics():
    """The summary's extra steering rows: the first ablation layer's next / last drops minus random with the removed
    norms, generation's steered share beside random and unsteered, valence's PC, signed r and exact p."""
    from emotion_circuits import report
    drop = lambda v: {"drop_minus_random": v, "drop_minus_random_low": v - 0.1, "drop_minus_random_high": v + 0.1}  # noqa
    metrics = {"ablation": {"per_layer": {"9": {"rank": 7, "next_layer": drop(0.125), "last_layer": drop(0.25),
                                                "removed_norm": 0.787, "random_removed_norm": 0.778}}},
               "generation": {"steered": 0.16, "steered_low": 0.13, "steered_high": 0.22, "random": 0.0,
                              "unsteered": 0.01, "p_steered_vs_random": 0.0035, "layer": 17, "dose": 1.0},
               "affect": {"valence": {"pc": 2, "r": 0.30, "signed_r": -0.30, "p": 0.71}}}
    rows = {key: cell for key, _, cell in report.steering_extra_rows(metrics)}
    assert list(rows) == ["steering.ablation", "steering.generation", "steering.valence"]
    assert rows["steering.ablation"].text == "h9: 0.125 [0.025, 0.225] / 0.250 [0.150, 0.350] (removed norm 0.79 vs 0.78)"
    assert rows["steering.ablation"].stats["next_drop_minus_random"] == 0.125 and rows["steering.ablation"].stats["layer"] == 9
    assert rows["steering.generation"].text.startswith("0.160 [0.130, 0.220] vs 0.00 vs 0.01 (p 0.0035; h17, dose 1)")
    assert rows["steering.valence"].text == "PC2, r -0.30 (p 0.71)"
    assert report.steering_extra_rows({}) == []
