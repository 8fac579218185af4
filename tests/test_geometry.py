"""Geometry and CKA: known answers on synthetic activations, nulls that can fail, identities, and clear errors."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kstest
from sklearn.metrics import pairwise_distances, silhouette_score

from emotion_circuits import geometry as geo
from emotion_circuits.config import EMOTIONS, ConfigError, parse_section
from emotion_circuits.io import DataError, save_npz

ROOT = Path(__file__).resolve().parents[1]
FAST = geo.GeometrySettings(n_perm=99, n_components=4)


def stage(name: str):
    """Import a stage script (stages/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labels(per: int = 12) -> np.ndarray:
    return np.repeat(np.array(EMOTIONS), per)


def clustered(rng, emotions, d: int, separation: float) -> np.ndarray:
    """`(n, d)` noise plus `separation` times a one-hot direction per emotion."""
    X = rng.normal(size=(len(emotions), d))
    X[:, :len(EMOTIONS)] += separation * np.eye(len(EMOTIONS))[geo.codes(emotions)]
    return X


def write_set(path: Path, h: np.ndarray, emotions, ids=None, drop: tuple[str, ...] = ()) -> Path:
    ids = np.array([f"x-{i:03d}" for i in range(len(h))]) if ids is None else np.asarray(ids)
    arrays = {"h": h.astype(np.float32), "a": h.astype(np.float32), "m": h.astype(np.float32), "ids": ids,
              "emotions": np.asarray(emotions), "n_tokens": np.full(len(h), 5), "meta": np.array("{}")}
    save_npz(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


PARAMS = """
seed: 0
stimuli: {A: a.jsonl, B: b.jsonl}
models:
  m1: {source: hf, hf_id: x/m1}
  m2: {source: hf, hf_id: x/m2}
  m1-random-init: {source: random-init, base: m1}
prompts:
  two-shot: {template: "Text: {text}\\nAnswer:"}
run: {models: [m1, m2], prompts: [two-shot], sets: [A, B]}
geometry: {n_perm: 99, n_components: 4}
cka: {n_depths: 4}
"""


# ---------------------------------------------------------------- silhouette


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouettes_match_sklearn(metric):
    rng = np.random.default_rng(0)
    y = geo.codes(labels())
    X = clustered(rng, labels(), 20, 1.0)
    D = pairwise_distances(X, metric=metric)
    shuffled = np.stack([y, rng.permutation(y), np.r_[y[1:], 3]])          # the last one unbalanced
    ours = geo.silhouettes(D, shuffled, len(EMOTIONS))
    theirs = [silhouette_score(D, row, metric="precomputed") for row in shuffled]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_silhouette_p_is_small_for_separated_clusters_and_finds_their_layer():
    rng = np.random.default_rng(1)
    emotions = labels()
    h = np.stack([rng.normal(size=(96, 16)), clustered(rng, emotions, 16, 4.0), rng.normal(size=(96, 16))], axis=1)
    g = geo.analyze_set(h, emotions, FAST, seed=0)
    assert g.peak == 1
    assert g.silhouette[1] > 0.1 and g.silhouette[1] - g.null_mean[1] > 0.15 and abs(g.null_mean[1]) < 0.1
    assert g.p_peak == pytest.approx(1 / 100)
    assert g.p_layer[0] > 0.01 and g.p_layer[1] == pytest.approx(1 / 100)
    assert g.explained.shape == (3, 4) and g.coords.shape == (96, 2)


def test_silhouette_null_can_fail_p_values_are_spread_for_shuffled_labels():
    """20 noise datasets (labels carry nothing): the max-over-layers p-values look uniform, not all small."""
    ps = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        h = rng.normal(size=(96, 2, 12))
        ps.append(geo.analyze_set(h, rng.permutation(labels()), FAST, seed=seed).p_peak)
    ps = np.array(ps)
    assert kstest(ps, "uniform").pvalue > 0.01
    assert np.mean(ps < 0.05) <= 0.25 and ps.max() > 0.5


def test_given_peak_layer_is_used():
    rng = np.random.default_rng(2)
    h = np.stack([clustered(rng, labels(), 10, 3.0), rng.normal(size=(96, 10))], axis=1)
    g = geo.analyze_set(h, labels(), FAST, seed=0, peak_layer=1)
    assert g.peak == 1 and g.peak_given and g.p_peak > 0.01
    with pytest.raises(ValueError, match="peak layer 5"):
        geo.analyze_set(h, labels(), FAST, seed=0, peak_layer=5)


# ---------------------------------------------------------------- the wheel


def test_wheel_matrix():
    W = geo.wheel_distances()
    assert (W == W.T).all() and (np.diag(W) == 0).all()
    for row in W:
        assert sorted(row) == [0, 1, 1, 2, 2, 3, 3, 4]
    at = EMOTIONS.index
    for a, b in zip(geo.WHEEL, geo.WHEEL[1:] + geo.WHEEL[:1]):
        assert W[at(a), at(b)] == 1
    for a, b in [("ecstasy", "grief"), ("admiration", "loathing"), ("terror", "rage"), ("amazement", "vigilance")]:
        assert W[at(a), at(b)] == 4
    assert W[at("rage"), at("vigilance")] == 1 and W[at("rage"), at("grief")] == 2


def circle(order) -> np.ndarray:
    """`(8, 2)` points on a circle, emotion e at the angle of its position in `order`."""
    angle = np.array([order.index(e) for e in EMOTIONS]) * 2 * np.pi / 8
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def test_wheel_spearman_is_one_for_centroids_on_the_wheel():
    null = geo.WheelNull.exact()
    C = circle(geo.WHEEL)
    result = null.test(C @ C.T)
    assert result["rho"] == pytest.approx(1.0)
    assert result["rho_p"] == pytest.approx(16 / 40320)           # only the 16 symmetries of the wheel tie it
    assert result["opposite"] == pytest.approx(-1.0) and result["adjacent"] == pytest.approx(np.sqrt(0.5))
    scrambled = null.test(circle(EMOTIONS) @ circle(EMOTIONS).T)   # the config order is not the wheel order
    assert scrambled["rho"] < 0.5 and scrambled["rho_p"] > 0.05


def test_wheel_p_not_all_small_for_random_centroids():
    null = geo.WheelNull.exact()
    ps = []
    for seed in range(20):
        C = np.random.default_rng(seed).normal(size=(8, 30))
        C = C / np.linalg.norm(C, axis=1, keepdims=True)
        ps.append(null.test(C @ C.T)["rho_p"])
    assert kstest(ps, "uniform").pvalue > 0.01 and max(ps) > 0.5


def test_wheel_through_analyze_set():
    rng = np.random.default_rng(3)
    emotions = labels()
    centres = circle(geo.WHEEL)[geo.codes(emotions)] * 5
    h = np.concatenate([centres, np.zeros((96, 4))], axis=1)[:, None, :] + 0.3 * rng.normal(size=(96, 1, 6))
    g = geo.analyze_set(h, emotions, FAST, seed=0)
    assert g.wheel_rho[0] > 0.9 and g.wheel_p[0] < 0.01
    assert g.adjacent[0] > g.opposite[0] and g.gap_p[0] < 0.01
    assert np.allclose(np.diag(g.cosine), 1.0)


# ---------------------------------------------------------------- CKA


def test_cka_identities():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30))
    Q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    assert geo.linear_cka(X, X) == pytest.approx(1.0)
    assert geo.linear_cka(X, X @ Q) == pytest.approx(1.0)
    assert geo.linear_cka(X, 3 * X + 7) == pytest.approx(1.0)
    assert geo.linear_cka(rng.normal(size=(1000, 10)), rng.normal(size=(1000, 10))) < 0.05
    Y = rng.normal(size=(200, 20))
    assert geo.cka_from_grams(geo.gram(X), geo.gram(Y)) == pytest.approx(geo.linear_cka(X, Y))
    assert geo.cka_from_grams(geo.gram(X), geo.gram(X @ Q), debiased=True) == pytest.approx(1.0)


def test_debiased_cka_removes_the_high_dimension_bias():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(50, 2000)), rng.normal(size=(50, 2000))
    assert geo.linear_cka(X, Y) > 0.8                               # the known bias of linear CKA when d >> n
    assert abs(geo.cka_from_grams(geo.gram(X), geo.gram(Y), debiased=True)) < 0.05


def test_depth_layers():
    depths, layers = geo.depth_layers(18, 10)
    assert depths[0] == 0 and depths[-1] == 1 and layers[0] == 0 and layers[-1] == 17
    assert (np.diff(layers) > 0).all()
    assert list(geo.depth_layers(30, 4)[1]) == [0, 10, 19, 29]


# ---------------------------------------------------------------- stages and errors


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"geometry\.metric: 'manhattan'"):
        parse_section({"metric": "manhattan"}, geo.GeometrySettings, "geometry")
    with pytest.raises(ConfigError, match=r"geometry\.n_perm"):
        parse_section({"n_perm": 5}, geo.GeometrySettings, "geometry")
    with pytest.raises(ConfigError, match=r"cka\.n_depths"):
        parse_section({"n_depths": 1}, geo.CkaSettings, "cka")


def test_missing_arrays_and_bad_labels_are_one_line_errors(tmp_path):
    h = np.zeros((96, 2, 4))
    path = write_set(tmp_path / "A.npz", h, labels(), drop=("h",))
    with pytest.raises(DataError) as err:
        geo.read_h(path)
    assert str(path) in str(err.value) and "missing arrays h" in str(err.value) and "\n" not in str(err.value)
    path = write_set(tmp_path / "B.npz", h, np.concatenate([labels()[:-1], ["joy"]]))
    with pytest.raises(DataError, match=r"B\.npz: emotions joy"):
        geo.read_h(path)


def layered(rng, emotions, n_layers: int, d: int) -> np.ndarray:
    """`(n, L, d)`: each layer a different random mix of one clustered latent, so layers are told apart."""
    z = clustered(rng, emotions, d, 3.0)
    return np.stack([np.tanh(z @ rng.normal(size=(d, d)) / np.sqrt(d) * (1 + l)) for l in range(n_layers)], axis=1)


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(6)
    (tmp_path / "params.yaml").write_text(PARAMS)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    for name in ("A", "B"):
        h = layered(rng, labels(), 4, 12)
        ids = [f"{name.lower()}-{i:03d}" for i in range(96)]
        write_set(tmp_path / "act" / "m1" / "two-shot" / f"{name}.npz", h, labels(), ids)
        write_set(tmp_path / "act" / "m2" / "two-shot" / f"{name}.npz", h @ Q, labels(), ids)   # m1 rotated
    return tmp_path


def run(module: str, project: Path, *extra: str):
    args = ["--params", str(project / "params.yaml"), "--activations", str(project / "act"),
            "--metrics", str(project / "metrics"), "--plots", str(project / "plots"), *extra]
    stage(module).main(args)


def test_geometry_stage_writes_its_outputs(project):
    run("geometry", project, "--model", "m1")
    metrics = json.loads((project / "metrics" / "m1" / "geometry.json").read_text())
    for name in ("A", "B"):
        m = metrics[name]
        assert m["silhouette_p"] == pytest.approx(0.01) and m["silhouette"] > 0.03
        assert 0 <= m["best_layer"] < 4 and m["best_depth"] == pytest.approx((m["best_layer"] + 1) / 4)
        for key in ("wheel_spearman", "wheel_p", "opposite_cosine", "adjacent_cosine", "adjacent_minus_opposite_p"):
            assert key in m
    rows = (project / "plots" / "m1" / "geometry.csv").read_text().splitlines()
    assert rows[0].startswith("set,layer,depth,silhouette,null_mean") and len(rows) == 1 + 2 * 4
    pca = (project / "plots" / "m1" / "pca_A.csv").read_text().splitlines()
    assert pca[0] == "id,emotion,pc1,pc2" and len(pca) == 97 and pca[1].startswith("a-000,rage,")
    cos = (project / "plots" / "m1" / "centroid_cosine_B.csv").read_text().splitlines()
    assert cos[0] == "emotion_a,emotion_b,cosine,wheel_steps" and len(cos) == 65 and cos[1] == "rage,rage,1.0,0"


def test_cka_stage_finds_the_rotated_copy(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("cka: {n_depths: 4}", "cka: {n_depths: 4, standardize: false, "
                                                                       "n_perm: 39, n_boot: 100}"))
    run("cka", project)
    pair = json.loads((project / "metrics" / "cka.json").read_text())["pairs"]["m1__m2"]
    assert pair["mean_matched_cka"] == pytest.approx(1.0) and pair["mean_matched_cka_debiased"] == pytest.approx(1.0)
    for name in ("A", "B"):
        per_set = pair["sets"][name]
        assert per_set["matched_is_best_fraction"] == 1.0 and per_set["n_depths_above_null_bh"] == 4
        assert per_set["mean_matched_null_p95"] < 0.5
    assert pair["mean_matched_cka_debiased_low"] > 0.99 and "reference" not in pair   # no random-init pair in run
    rows = (project / "plots" / "cka.csv").read_text().splitlines()
    assert rows[0] == ("set,model_a,model_b,depth_a,depth_b,layer_a,layer_b,cka,cka_debiased,cka_low,cka_high,"
                       "null_p95,p,q_bh,cka_debiased_low,cka_debiased_high,reference_debiased,"
                       "debiased_minus_reference,minus_reference_low,minus_reference_high") and len(rows) == 1 + 2 * 16


def test_debiased_cka_half_sample_interval_covers_zero_where_a_bootstrap_does_not():
    """Independent representations (d >> n), 20 data sets: debiased CKA ~0 and its half-sample interval covers 0;
    a with-replacement bootstrap duplicates stimuli, which align in both models, and its interval never covers 0.
    Identical up to rotation: 1 with an interval at 1."""
    rng = np.random.default_rng(0)
    n, d = 96, 300
    halves = geo.half_samples(n, 100, seed=1)
    assert halves.shape == (100, 48) and all(len(set(h)) == 48 for h in halves)
    half_covers = boot_covers = 0
    for _ in range(20):
        K, L = geo.gram(rng.normal(size=(n, d)), True), geo.gram(rng.normal(size=(n, d)), True)
        point = geo.cka_from_grams(K, L, debiased=True)
        assert abs(point) < 0.05
        low, high = geo.half_interval(point, geo.debiased_half_draws(K, L, halves))
        half_covers += low <= 0 <= high
        boot = geo.debiased_half_draws(K, L, rng.integers(0, n, size=(100, n)))      # rows with replacement
        boot_covers += np.percentile(boot, 2.5) <= 0 <= np.percentile(boot, 97.5)
    assert half_covers >= 18 and boot_covers == 0
    X = rng.normal(size=(n, 20))
    Q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    K, L = geo.gram(X), geo.gram(X @ Q)
    point = geo.cka_from_grams(K, L, debiased=True)
    low, high = geo.half_interval(point, geo.debiased_half_draws(K, L, halves))
    assert point == pytest.approx(1.0) and low > 0.999 and high < 1.001


def test_cka_is_compared_with_the_random_init_pair(tmp_path):
    """Every model carries the same text-driven component (as random-init models reading the same texts do) in half
    its features, rotated; the other half is the model's own noise, except in m1 and m2, which share an emotion
    component there. m1/m2 exceed their random-init pair (interval above 0); m1/m3 share only the text half: their
    CKA beats the shuffled-rows null, but not the random-init pair. Differences are paired (same half-samples)."""
    rng = np.random.default_rng(3)
    params = PARAMS.replace("  m1-random-init: {source: random-init, base: m1}\n",
                            "  m1-random-init: {source: random-init, base: m1}\n"
                            "  m2-random-init: {source: random-init, base: m2}\n"
                            "  m3: {source: hf, hf_id: x/m3}\n"
                            "  m3-random-init: {source: random-init, base: m3}\n")
    params = params.replace("run: {models: [m1, m2]", "run: {models: [m1, m2, m3, m1-random-init, m2-random-init, "
                                                      "m3-random-init]")
    (tmp_path / "params.yaml").write_text(params.replace("cka: {n_depths: 4}", "cka: {n_depths: 3, n_perm: 39, "
                                                                                "n_boot: 100}"))
    n, d = 96, 8

    def rotated(x):
        return x @ np.linalg.qr(rng.normal(size=(d, d)))[0]

    for name in ("A", "B"):
        text, emotion = rng.normal(size=(n, 3, d)), rng.normal(size=(n, 3, d))
        ids = [f"{name.lower()}-{i:03d}" for i in range(n)]
        for model in ("m1", "m2", "m3", "m1-random-init", "m2-random-init", "m3-random-init"):
            other = emotion if model in ("m1", "m2") else rng.normal(size=(n, 3, d))
            h = np.concatenate([rotated(text), rotated(other)], axis=2) + 0.3 * rng.normal(size=(n, 3, 2 * d))
            write_set(tmp_path / "act" / model / "two-shot" / f"{name}.npz", h, labels(), ids)
    run("cka", tmp_path)
    pairs = json.loads((tmp_path / "metrics" / "cka.json").read_text())["pairs"]
    trained, text_only = pairs["m1__m2"], pairs["m1__m3"]
    assert trained["reference"] == "m1-random-init__m2-random-init"
    assert trained["mean_matched_reference_debiased"] > 0.1                  # the reference is far from 0
    assert trained["mean_matched_debiased_minus_reference_low"] > 0.05
    assert text_only["sets"]["A"]["n_depths_above_null_bh"] == 3              # beats the shuffled-rows null ...
    assert (text_only["mean_matched_debiased_minus_reference_low"] < 0
            < text_only["mean_matched_debiased_minus_reference_high"])       # ... but not the random-init pair
    assert "reference" not in pairs["m1__m1-random-init"]
    assert pairs["m1__m2"]["mean_matched_cka_debiased_low"] <= pairs["m1__m2"]["mean_matched_cka_debiased"]


def test_per_set_cka_is_not_fooled_by_a_set_difference_that_concatenation_measures():
    """Two models unrelated within each set, both separating the sets: CKA over A+B is high, per set at the null."""
    rng = np.random.default_rng(0)
    n, d = 60, 20
    shift = np.zeros(d)
    shift[:8] = 12.0
    a = {s: rng.normal(size=(n, d)) + (shift if s == "B" else 0) for s in "AB"}
    b = {s: rng.normal(size=(n, d)) + (shift if s == "B" else 0) for s in "AB"}
    together = geo.cka_from_grams(geo.gram(np.vstack([a["A"], a["B"]]), True), geo.gram(np.vstack([b["A"], b["B"]]), True))
    assert together > 0.3
    for s in "AB":
        found = geo.cka_null_and_interval(geo.gram(a[s], True), geo.gram(b[s], True), 99, 100, seed=1)
        assert found["p"] > 0.05 and found["cka"] < found["null_p95"] + 0.05 and found["low"] <= found["cka"]
    same = geo.cka_null_and_interval(geo.gram(a["A"], True), geo.gram(a["A"] * 3, True), 99, 100, seed=1)
    assert same["cka"] == pytest.approx(1.0) and same["p"] == pytest.approx(0.01) and same["low"] > 0.99


def test_standardized_gram_ignores_per_feature_scale():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 8))
    scaled = X * np.array([100, 1, 1, 1, 1, 1, 1, 0.01])
    assert geo.cka_from_grams(geo.gram(X, True), geo.gram(scaled, True)) == pytest.approx(1.0)
    assert geo.cka_from_grams(geo.gram(X), geo.gram(scaled)) < 0.9


def test_cka_stage_rejects_mismatched_ids(project):
    path = project / "act" / "m2" / "two-shot" / "B.npz"
    h = np.zeros((96, 4, 12)) + np.arange(96)[:, None, None]
    write_set(path, h, labels(), [f"b-{i:03d}" for i in range(95, -1, -1)])     # same ids, reversed order
    with pytest.raises(DataError) as err:
        run("cka", project)
    message = str(err.value)
    assert message.startswith(str(path)) and "ids differ" in message and "index 0" in message and "\n" not in message
