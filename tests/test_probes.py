"""Probes on tiny synthetic activation files: known answers (separable -> 1, noise -> the null), no leakage from test
folds into the standardization, byte-identical reruns, nulls, nested estimate, baselines, MDL and domain-held-out
evaluation each against a simulation where the wrong method gives the wrong answer, one-line errors naming the file."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.model_selection import LeaveOneGroupOut

from emotion_circuits import fastprobe, stats
from emotion_circuits.config import EMOTIONS, ConfigError, load_params, parse_section
from emotion_circuits.io import DataError, save_npz
from emotion_circuits.seeds import splits_seed
from emotion_circuits.probes import (ProbeSettings, Task, domain_held_out, load_set, mdl_order, nested_job,
                                     script_folds, script_held_out,
                                     online_codelength, random_init_of, ridge_null, run_probes, settings_from,
                                     write_outputs)

REPO = Path(__file__).resolve().parents[1]
PER_CLASS, N_LAYERS, D = 6, 3, 12
SIGNAL = (0.0, 1.0, 8.0)      # per layer: noise only, weak, separable
FAST = ProbeSettings(seed=0, folds=3, repeats=2, n_boot=100, n_perm=19, n_jobs=1, tfidf_C=(1.0,))


def make_set(set_name: str, signal=SIGNAL, seed: int = 0, labels_random: bool = False) -> dict[str, np.ndarray]:
    """Set A/B: emotion k adds signal * e_k (B also + e_8, 'emotional'); N: - e_8; C: half like N, half like B."""
    rng = np.random.default_rng(seed)
    n = {"A": 8 * PER_CLASS, "B": 8 * PER_CLASS, "N": 8 * PER_CLASS, "C": 8}[set_name]
    emotions = np.repeat(EMOTIONS, PER_CLASS) if set_name in "AB" else np.full(n, "neutral")
    direction = np.zeros((n, D))
    if set_name in "AB":
        direction[np.arange(n), np.searchsorted(sorted(EMOTIONS), emotions)] = 1.0
    direction[:, 8] = {"A": 0.0, "B": 1.0, "N": -1.0, "C": 0.0}[set_name]
    if set_name == "C":
        direction[:, 8] = np.where(np.arange(n) < n // 2, -1.0, 1.0)
    if labels_random:
        emotions = rng.permutation(emotions)
    out = {}
    for kind in ("h", "a", "m"):
        x = rng.normal(size=(n, N_LAYERS, D)) + np.asarray(signal)[None, :, None] * direction[:, None, :]
        out[kind] = x.astype(np.float32)
    ids = np.array([f"{set_name.lower()}-{i:02d}" for i in range(n)])
    return {**out, "ids": ids, "emotions": emotions, "n_tokens": np.full(n, 40), "meta": np.array("{}")}


def write_prompt(folder: Path, seed: int = 0, sets="ABNC", **kwargs) -> None:
    for i, s in enumerate(sets):
        save_npz(folder / f"{s}.npz", **make_set(s, seed=seed * 10 + i, **kwargs))


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    write_prompt(root / "model" / "two-shot")
    write_prompt(root / "model" / "zero-shot", seed=1)
    write_prompt(root / "model-random-init" / "two-shot", seed=2, sets="ABN", signal=(0.0, 0.0, 0.0))
    return root, run_probes(root / "model", FAST, control_folder=root / "model-random-init", items=make_items())


def make_items(domains: bool = True) -> dict[str, dict]:
    """Stimulus objects for the synthetic ids: B/N twins linked by `pair`, texts, and optional domains and (with
    them) situation scripts."""
    items = {}
    for s in "ABNC":
        for i in range(8 * PER_CLASS if s != "C" else 8):
            item = {"id": f"{s.lower()}-{i:02d}", "set": s, "text": f"word{i % 7} thing{i % 3} text number {i}",
                    **({"domain": f"d{i % 3}", "script": f"s{i % 6}"} if domains else {})}
            if s in "BN":
                item["pair"] = f"{'n' if s == 'B' else 'b'}-{i:02d}"
            items[item["id"]] = item
    return items


def rows_of(result, task):
    return [r for r in result.rows if r["task"] == task]


def test_separable_data_gives_auroc_one(separable):
    _, result = separable
    m = result.metrics
    for site in "ham":
        for task in ("set_a", "set_b", "transfer"):
            assert m[task][site]["auroc"] > 0.99 and m[task][site]["peak_layer"] == 2, (task, site)
            assert m[task][site]["peak_depth"] == 1.0
        assert m["set_b"][site]["accuracy"] > 0.95
        assert m["b_vs_n"][site]["saturation_layer"] in (1, 2)
        assert m["set_b"][site]["p_max_layers"] == pytest.approx(1 / (FAST.n_perm + 1))
        assert m["set_b"][site]["nested_auroc"] > 0.95 and m["set_b"][site]["null_p95"] < 0.75
        # Set C: half the vivid texts were built like Set N, half like Set B
        assert m["set_c"][site]["fraction_emotional"] == 0.5 and m["set_c"][site]["n_fraction_emotional"] < 0.05


def test_shuffled_labels_give_chance_with_interval_covering_half(tmp_path):
    write_prompt(tmp_path / "m" / "two-shot", labels_random=True)
    result = run_probes(tmp_path / "m", ProbeSettings(seed=0, folds=3, n_boot=200, n_perm=50, n_jobs=1,
                                                      zero_shot_prompt=None))
    rows = rows_of(result, "set_b") + rows_of(result, "set_a")
    assert abs(np.mean([r["auroc"] for r in rows]) - 0.5) < 0.1
    assert np.mean([r["low"] <= 0.5 <= r["high"] for r in rows]) >= 0.75
    # where the null's mean sits against labels without signal: tests/test_probe_nulls.py (over 400 data sets)


def test_chance_columns(separable):
    _, result = separable
    for row in result.rows:
        assert row["chance_auroc"] == 0.5
        binary = row["task"].split(".")[-1].startswith("b_vs_n")
        assert row["chance_accuracy"] == (0.5 if binary else 1 / 8), row["task"]
    assert result.metrics["set_b"]["chance_accuracy"] == 1 / 8 and result.metrics["b_vs_n"]["chance_auroc"] == 0.5
    for table in result.curves.values():
        assert all(r["chance"] == 0.5 for r in table)


def test_scaler_is_fitted_on_training_folds_only(tmp_path, monkeypatch):
    """Every CV fit's scaler mean equals its training fold's raw mean (not the whole set's, not a pre-scaled 0)."""
    write_prompt(tmp_path / "m" / "two-shot")
    means = []
    original = fastprobe.probe_pipeline

    def recording(*args, **kwargs):
        pipe = original(*args, **kwargs)
        fit = pipe.fit

        def fit_and_record(X, y, **kwargs):
            fitted = fit(X, y, **kwargs)
            means.append(fitted[0].mean_.copy())
            return fitted
        pipe.fit = fit_and_record
        return pipe
    monkeypatch.setattr(fastprobe, "probe_pipeline", recording)
    settings = ProbeSettings(seed=0, folds=3, n_boot=100, n_perm=0, n_jobs=1, zero_shot_prompt=None)
    run_probes(tmp_path / "m", settings)
    X = load_set(tmp_path / "m" / "two-shot" / "B.npz").sites["h"][:, 2].astype(np.float64)
    y = np.repeat(EMOTIONS, PER_CLASS)
    train_means = [X[train].mean(axis=0) for train, _ in stats.splits(y, settings.folds, splits_seed(settings.seed))[0]]
    for expected in train_means:
        assert any(np.allclose(m, expected) for m in means)
    assert not any(np.allclose(m, X.mean(axis=0)) for m in means)


def test_same_seed_same_bytes_any_n_jobs_and_seed_matters(tmp_path, separable):
    root, first = separable
    again = run_probes(root / "model", ProbeSettings(**{**FAST.__dict__, "n_jobs": 2}),
                       control_folder=root / "model-random-init", items=make_items())
    other = run_probes(root / "model", ProbeSettings(**{**FAST.__dict__, "seed": 1}),
                       control_folder=root / "model-random-init", items=make_items())
    files = {}
    for name, result in (("a", first), ("b", again), ("c", other)):
        write_outputs(result, tmp_path / name / "probes.json", tmp_path / name / "plots")
        files[name] = {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.*")}
    assert files["a"] == files["b"]
    assert files["a"][Path("probes.json")] != files["c"][Path("probes.json")]
    assert len(files["a"]) == 3 + len(first.curves) + len(first.confusions)   # + domain_held_out.csv


def test_outputs_layout(tmp_path, separable):
    _, result = separable
    write_outputs(result, tmp_path / "metrics" / "probes.json", tmp_path / "plots")
    metrics = json.loads((tmp_path / "metrics" / "probes.json").read_text())
    assert metrics["random_init"]["model"] == "model-random-init"
    assert metrics["random_init"]["set_b"]["h"]["auroc"] < 0.8 and metrics["zero_shot"]["set_b"]["h"]["auroc"] > 0.99
    with open(tmp_path / "plots" / "probes.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["task", "site", "layer", "depth", "auroc", "low", "high", "accuracy", "ridge_auroc",
                             "null_mean", "null_p95", "p_layer", "q_bh", "chance_auroc", "chance_accuracy"]
    tasks = {r["task"] for r in rows}
    assert tasks == {p + t for p in ("", "random_init.", "zero_shot.") for t in ("set_a", "set_b", "transfer", "b_vs_n")}
    assert len(rows) == len(tasks) * 3 * N_LAYERS
    with open(tmp_path / "plots" / "probes" / "layers" / "set_b.csv") as f:
        assert f.readline().strip() == ("layer,h,a,m,h_null_mean,a_null_mean,m_null_mean,h_null_p95,a_null_p95,"
                                        "m_null_p95,chance")
    with open(tmp_path / "plots" / "probes" / "confusion" / "set_b_h.csv") as f:
        confusion = list(csv.DictReader(f))
    assert len(confusion) == 8 * PER_CLASS and all(r["actual"] == r["predicted"] for r in confusion)
    with open(tmp_path / "plots" / "probes" / "confusion" / "b_vs_n_h.csv") as f:
        assert {r["actual"] for r in csv.DictReader(f)} == {"emotional", "neutral"}
    (tmp_path / "plots" / "probes" / "layers" / "stale.csv").write_text("x\n")
    write_outputs(result, tmp_path / "metrics" / "probes.json", tmp_path / "plots")
    assert not (tmp_path / "plots" / "probes" / "layers" / "stale.csv").exists()


def test_variants_are_optional_but_not_partial(tmp_path):
    write_prompt(tmp_path / "m" / "two-shot")
    settings = ProbeSettings(seed=0, folds=3, n_boot=100, n_perm=0, n_jobs=1)
    result = run_probes(tmp_path / "m", settings, control_folder=tmp_path / "m-random-init")
    assert "random_init" not in result.metrics and "zero_shot" not in result.metrics
    assert not any(r["task"].startswith(("random_init.", "zero_shot.")) for r in result.rows)
    write_prompt(tmp_path / "m" / "zero-shot", sets="A")
    with pytest.raises(DataError, match=r"zero-shot/B\.npz: not found while other sets"):
        run_probes(tmp_path / "m", settings)


@pytest.mark.parametrize("damage, message", [
    (lambda a: a.pop("a"), r"B\.npz: missing arrays a$"),
    (lambda a: a.update(a=a["a"][:, :, :5]), r"B\.npz: a has shape \(48, 3, 5\) but h has \(48, 3, 12\)"),
    (lambda a: a.update(emotions=a["emotions"][:10]), r"B\.npz: emotions has shape \(10,\)"),
    (lambda a: a.update(h=a["h"][:, :2], a=a["a"][:, :2], m=a["m"][:, :2]),
     r"B\.npz: \(n_layers, d_model\) = \(2, 12\)"),
    (lambda a: a.update(emotions=np.where(a["emotions"] == "rage", "anger", a["emotions"])),
     r"B\.npz: unexpected emotion label 'anger'"),
    (lambda a: a["h"].__setitem__((0, 0, 0), np.nan), r"B\.npz: non-finite values in h"),
])
def test_bad_input_is_one_line_naming_the_file(tmp_path, damage, message):
    write_prompt(tmp_path / "m" / "two-shot")
    arrays = make_set("B", seed=1)
    damage(arrays)
    save_npz(tmp_path / "m" / "two-shot" / "B.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        run_probes(tmp_path / "m", FAST)
    assert "\n" not in str(err.value) and str(tmp_path / "m" / "two-shot" / "B.npz") in str(err.value)


def params_file(tmp_path, probes: dict, stimuli: dict | None = None) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["probes"] = probes
    if stimuli:
        raw["stimuli"] = stimuli
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_settings_from_params(tmp_path):
    params = load_params(params_file(tmp_path, {"n_perm": 10}))
    settings = settings_from(params)
    assert settings.seed == params.seed and settings.n_perm == 10
    assert random_init_of(params, "smollm2-135m-instruct") == "smollm2-135m-instruct-random-init"
    assert random_init_of(params, "smollm2-135m-instruct-random-init") is None
    with pytest.raises(ConfigError, match=r"^params\.yaml: probes\.folds: must be at least 2"):
        parse_section({"folds": 1}, ProbeSettings, "probes")
    with pytest.raises(ConfigError, match=r"unknown prompt 'few-shot'"):
        settings_from(load_params(params_file(tmp_path, {"zero_shot_prompt": "few-shot"})))


def test_stage_script_end_to_end_and_one_line_error(tmp_path):
    model = "smollm2-135m-instruct"
    write_prompt(tmp_path / "act" / model / "two-shot")
    stimuli = {}
    for s in "ABNC":
        stimuli[s] = str(tmp_path / f"set_{s}.jsonl")
        Path(stimuli[s]).write_text("".join(json.dumps(o) + "\n" for o in make_items().values() if o["set"] == s))
    params = params_file(tmp_path, {"folds": 3, "repeats": 1, "n_boot": 100, "n_perm": 0, "n_jobs": 1,
                                    "tfidf_C": [1.0]}, stimuli)
    cmd = [sys.executable, str(REPO / "stages" / "probes.py"), "--model", model, "--params", str(params),
           "--activations", str(tmp_path / "act"), "--metrics", str(tmp_path / "metrics"),
           "--plots", str(tmp_path / "plots"), "--no-embeddings"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "metrics" / model / "probes.json").read_text())["set_b"]["h"]["auroc"] > 0.99
    assert (tmp_path / "plots" / model / "probes" / "layers" / "b_vs_n.csv").exists()
    (tmp_path / "act" / model / "two-shot" / "C.npz").unlink()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "C.npz: not found" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) == 1


def test_controls_nested_baselines_and_mdl_on_separable_data(separable):
    _, result = separable
    m = result.metrics
    for site in "ham":
        assert m["transfer"][site]["peak_layer"] == m["set_a"][site]["peak_layer"]   # chosen on Set A, not Set B
        for task in ("set_a", "set_b", "transfer", "b_vs_n"):
            t = m[task]
            assert t["best_baseline_auroc"] == max(b["auroc"] for b in t["baselines"].values())
            probe = t[site]["auroc"] if task == "transfer" else t[site]["nested_auroc"]   # the nested probe
            assert t[site]["margin"] == pytest.approx(probe - t["best_baseline_auroc"], abs=1e-9)
            assert t[site]["margin_low"] <= t[site]["margin"] <= t[site]["margin_high"]
            assert t[site]["margins"][t["best_baseline"]]["margin"] == t[site]["margin"]
            assert ("peak_margin_optimistic" in t[site]) == (task != "transfer")
            assert t["baseline_repeats"] == ("none (fit on Set A)" if task == "transfer" else "1")  # not repeat 0
    assert set(m["set_b"]["baselines"]) == {"length", "polarity", "bow", "style", "tfidf"}   # no embeddings given
    for task in ("set_a", "set_b"):
        assert m[task]["ridge_agreement"]["corr"] > 0.9
        trained, control = m["mdl"][task]["compression"], m["random_init"]["mdl"][task]["compression"]
        assert trained > 1.2 and control < 1.05, (trained, control)   # 48 items: the first blocks cost most
    assert len(result.domains) == N_LAYERS and m["domain_held_out"]["set_b"]["h"]["n_domains"] == 3
    held = m["script_held_out"]["set_b"]["h"]
    assert held["n_scripts"] == 6 and held["n_folds"] == FAST.folds and held["layer"] == m["set_b"]["h"]["peak_layer"]
    assert held["low"] <= held["auroc"] <= held["high"]


def noise_layers(n_layers=10, n=48, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_layers, d)), np.repeat(np.arange(8), n // 8)


def test_max_over_layers_null_holds_its_level_where_the_per_layer_p_of_the_peak_does_not():
    conditional, selection_aware = [], []
    for seed in range(12):
        X, y = noise_layers(seed=seed)
        task = Task("t", ("A",), y, stats.splits(y, 3, seed), orders=stats.permutations(len(y), 99, seed))
        nulls = np.stack([ridge_null(task, X[:, l], 1.0) for l in range(X.shape[1])])
        peak = int(np.argmax(nulls[:, 0]))
        conditional.append(stats.permutation_p(nulls[peak, 0], nulls[peak, 1:]))
        selection_aware.append(stats.permutation_p(nulls[:, 0].max(), nulls[:, 1:].max(axis=0)))
    assert np.mean(np.array(conditional) < 0.1) >= 0.4      # the best of 10 noise layers "beats" its own null
    assert np.mean(np.array(selection_aware) < 0.1) <= 0.25


def test_nested_estimate_is_not_optimistic_where_the_peak_is():
    gaps = []
    for seed in range(3):
        X, y = noise_layers(seed=seed)
        folds = stats.splits(y, 3, seed)
        task = Task("t", ("A",), y, folds)
        settings = ProbeSettings(seed=seed, folds=3)
        peak = max(stats.auroc(y, stats.cv_proba(X[:, l], y, folds[0])) for l in range(X.shape[1]))
        proba, chosen, _ = nested_job(task, X, settings)
        gaps.append(peak - stats.auroc(y, proba))
        assert len(chosen) == 3 and chosen.max() < X.shape[1]
    assert np.mean(gaps) > 0.04


def test_mdl_order_keeps_twins_together_and_noise_does_not_compress():
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    groups = np.r_[np.arange(20), np.arange(20)]
    order, ends = mdl_order(y, groups, seed=0)
    assert sorted(order) == list(range(40)) and (ends == np.arange(2, 41, 2)).all()
    assert all(groups[order[i]] == groups[order[i + 1]] for i in range(0, 40, 2))
    rng = np.random.default_rng(0)
    noise = online_codelength(rng.normal(size=(96, 10)), np.repeat(np.arange(8), 12), (0.1, 0.2, 0.4, 0.8, 1.0),
                              1.0, 0)
    assert noise["compression"] < 1.05 and noise["uniform_bits"] == pytest.approx(96 * 3)
    X = rng.normal(size=(96, 10))
    X[:, :8] += 4 * np.eye(8)[np.repeat(np.arange(8), 12)]
    signal = online_codelength(X, np.repeat(np.arange(8), 12), (0.1, 0.2, 0.4, 0.8, 1.0), 1.0, 0)
    assert signal["compression"] > 2


def test_domain_held_out_removes_a_domain_specific_cue_that_ordinary_cv_exploits():
    rng = np.random.default_rng(0)
    n_domains, per = 4, 24
    y = np.tile(np.repeat(np.arange(4), per // 4), n_domains)
    domains = np.repeat(np.arange(n_domains), per).astype(str)
    X = rng.normal(size=(len(y), 16))
    for d in range(n_domains):   # each domain codes the classes on its own dimensions
        rows = domains == str(d)
        X[rows, 4 * d + y[rows]] += 5.0
    folds = stats.splits(y, 4, 0)
    task = Task("set_b", ("B",), y, folds)
    ordinary = stats.auroc(y, stats.cv_proba(X, y, folds[0]))
    held_out = domain_held_out(task, X, domains, ProbeSettings(seed=0, n_boot=200))
    assert ordinary > 0.9 and held_out["high"] < 0.6 and held_out["n_domains"] == 4


def test_without_domains_or_items_the_optional_parts_are_skipped(tmp_path, caplog):
    write_prompt(tmp_path / "m" / "two-shot")
    settings = ProbeSettings(seed=0, folds=3, repeats=1, n_boot=100, n_perm=0, n_jobs=1, zero_shot_prompt=None,
                             tfidf_C=(1.0,))
    result = run_probes(tmp_path / "m", settings, items=make_items(domains=False))
    assert "domain_held_out" not in result.metrics and not result.domains
    assert "carry no `domain`" in caplog.text and "carry no `script`" in caplog.text
    assert "script_held_out" not in result.metrics
    bare = run_probes(tmp_path / "m", settings)
    assert "baselines" not in bare.metrics["set_b"] and "ungrouped" not in caplog.text
    assert "B-vs-N splits are not grouped" in caplog.text


def test_online_codelength_matches_a_hand_computed_code():
    """k = 4, n = 80, balanced in transmission order (round robin), block ends at multiples of 4. Features carry no
    information: every prefix is exactly balanced, so each item costs log2(4) = 2 bits, 160 in all. Features that
    separate the classes: the first block (8 items) is sent uniformly, 16 bits, the later blocks cost ~0."""
    y = np.repeat(np.arange(4), 20)
    fractions = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    flat = online_codelength(np.ones((80, 3)), y, fractions, 1.0, 0)
    assert flat["first_block"] == 8 and flat["uniform_bits"] == 160
    assert flat["codelength_bits"] == pytest.approx(160, abs=0.5) and flat["compression"] == pytest.approx(1, abs=0.01)
    rng = np.random.default_rng(0)
    X = 20 * np.eye(4)[y] + rng.normal(0, 0.1, size=(80, 4))
    sharp = online_codelength(X, y, fractions, 100.0, 0)
    assert 16 <= sharp["codelength_bits"] < 16 + 2 and sharp["compression"] > 8.5


def test_online_codelength_of_a_prior_only_probe_matches_the_hand_computed_code():
    """Unbalanced classes (30 zeros, 10 ones) and constant features: the probe can only learn the class frequency
    of the blocks already sent. The order is round robin by class, so the prefixes at the block ends 4, 8, 16, 24, 32
    hold 2, 4, 8, 10, 10 ones, whatever the seed. Bits: 4 (first block, uniform) + 4 + 8 + 8 (prefix frequency 1/2)
    + 8 log2(24/14) (8 zeros after a 14:10 prefix) + 8 log2(32/22) (8 zeros after 22:10) = 34.545. Fitting each
    block on itself too gives 30.84 (the balanced test above cannot see that), natural logs in the later blocks
    25.17, an uninformed code 40."""
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    expected = 24 + 8 * np.log2(24 / 14) + 8 * np.log2(32 / 22)
    for seed in (0, 1):
        out = online_codelength(np.ones((40, 3)), y, (0.1, 0.2, 0.4, 0.6, 0.8, 1.0), 1.0, seed)
        assert out["first_block"] == 4 and out["uniform_bits"] == 40
        assert out["codelength_bits"] == pytest.approx(expected, abs=0.01)
        assert out["compression"] == pytest.approx(40 / expected, abs=1e-3)


def test_mdl_reports_its_range_over_transmission_orders(separable):
    """The codelength depends on the order the items are sent in: `mdl_orders` orders, mean inside [min, max],
    and the range is not a point on data with noise."""
    root, _ = separable
    folder = root / "model"
    base = dict(seed=0, folds=3, repeats=1, n_boot=100, n_perm=0, n_jobs=1, zero_shot_prompt=None, tfidf_C=(1.0,))
    one = run_probes(folder, ProbeSettings(**base, mdl_orders=1)).metrics["mdl"]
    three = run_probes(folder, ProbeSettings(**base, mdl_orders=3)).metrics["mdl"]
    for task, m in three.items():
        assert m["n_orders"] == 3 and one[task]["n_orders"] == 1
        assert m["codelength_bits_min"] <= m["codelength_bits"] <= m["codelength_bits_max"]
        assert m["compression_min"] <= m["compression"] <= m["compression_max"]
        assert one[task]["codelength_bits_min"] == one[task]["codelength_bits_max"]
    assert any(m["codelength_bits_max"] - m["codelength_bits_min"] > 0.5 for m in three.values())
    with pytest.raises(ConfigError, match=r"probes\.mdl_orders"):
        ProbeSettings(mdl_orders=0)


def test_domain_interval_resamples_domains_where_an_item_bootstrap_under_covers():
    """8 domains of 16 items whose difficulty differs (signal strength and class offsets drawn per domain). The
    estimand is the pooled AUROC over the population of domains (3000 domains). Over 100 data sets the item bootstrap
    covers it ~65% of the time; the domain (cluster) bootstrap ~87% (a little under 95% with 8 clusters, as theory
    says) with an interval about twice as wide."""
    from sklearn.metrics import roc_auc_score

    k, per = 4, 16

    def draw(rng, n_domains):
        y = np.tile(np.repeat(np.arange(k), per // k), n_domains)
        domain = np.repeat(np.arange(n_domains), per)
        strength, shift = rng.normal(1.0, 1.0, size=n_domains), rng.normal(0, 1.0, size=(n_domains, k))
        return y, strength[domain][:, None] * np.eye(k)[y] + shift[domain] + rng.normal(size=(len(y), k)), domain

    rng = np.random.default_rng(0)
    y, scores, _ = draw(rng, 3000)
    truth = np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(k)])
    covered, width = {"items": 0, "domains": 0}, {"items": [], "domains": []}
    for r in range(100):
        y, scores, domain = draw(rng, 8)
        for name, groups in (("items", None), ("domains", domain)):
            _, low, high = stats.bootstrap_auroc(y, scores, 200, r, groups=groups)
            covered[name] += low <= truth <= high
            width[name].append(high - low)
    assert covered["items"] <= 75 and covered["domains"] >= 80, covered
    assert np.mean(width["domains"]) > 1.6 * np.mean(width["items"])


def test_domain_held_out_reports_each_domain_and_resamples_domains():
    rng = np.random.default_rng(1)
    y = np.tile(np.repeat(np.arange(4), 6), 4)
    domains = np.repeat(["d0", "d1", "d2", "d3"], 24)
    strength = {"d0": 0.0, "d1": 1.0, "d2": 2.0, "d3": 4.0}       # d0 carries no signal, d3 a strong one
    X = rng.normal(size=(96, 6))
    X[np.arange(96), y] += np.array([strength[d] for d in domains])
    task = Task("set_b", ("B",), y, stats.splits(y, 4, 0))
    out = domain_held_out(task, X, domains, ProbeSettings(seed=0, n_boot=300))
    per = out["per_domain"]
    assert list(per) == ["d0", "d1", "d2", "d3"] and per["d0"] < 0.7 < per["d3"] and per["d3"] > per["d1"]
    assert out["domain_min"] == min(per.values()) and out["domain_sd"] == pytest.approx(np.std(list(per.values()), ddof=1))
    items = stats.bootstrap_auroc(y, stats.cv_proba(X, y, list(LeaveOneGroupOut().split(X, y, domains))), 300, 2)
    assert out["auroc"] == pytest.approx(items[0]) and out["high"] - out["low"] > items[2] - items[1]


def test_script_folds_never_train_on_a_held_out_script():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 15)
    for per_class, folds in ((5, 3), (5, 5), (2, 12)):            # (2, 12): 8 scripts, so 8 folds
        scripts = np.array([f"{c}-{rng.integers(per_class)}" for c in y])   # uneven script sizes
        found = script_folds(y, scripts, folds, seed=folds)
        assert len(found) == min(folds, len(set(scripts)))
        assert sorted(np.concatenate([test for _, test in found])) == list(range(len(y)))
        for train, test in found:
            assert not set(scripts[train]) & set(scripts[test])


def test_script_held_out_removes_a_script_cue_that_ordinary_cv_exploits():
    """Each class told through 4 scripts, each script with its own cue dimension and no shared class signal: ordinary
    CV learns the scripts (the wrong answer for new situations), holding scripts out gives chance."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 24)
    script = y * 4 + np.tile(np.repeat(np.arange(4), 6), 4)           # 16 scripts, 6 items each
    X = rng.normal(size=(len(y), 16))
    X[np.arange(len(y)), script] += 5.0
    task = Task("set_b", ("B",), y, stats.splits(y, 4, 0))
    ordinary = stats.auroc(y, stats.cv_proba(X, y, task.folds[0]))
    runs = [script_held_out(task, X, script.astype(str), ProbeSettings(seed=s, n_boot=200), seed=s) for s in range(4)]
    assert ordinary > 0.9 and all(h["n_scripts"] == 16 and h["n_folds"] == 5 for h in runs)
    assert all(h["low"] < 0.5 < h["high"] for h in runs), runs          # chance on every split drawn
    assert np.mean([h["auroc"] for h in runs]) < 0.6
