"""The probe pipeline's design, on synthetic activation folders where the wrong design gives the wrong answer: B-vs-N
twins that are near copies stay in one fold (split twins anti-learn), the text baselines run on the probes' own
folds and repeats, the transfer layer is Set A's peak when Sets A and B peak at different layers, and the TF-IDF
baseline's C is tuned inside the training folds (per data set, better than a fixed bad C, and not optimistic)."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from emotion_circuits import stats
from emotion_circuits.io import save_npz
from emotion_circuits.probes import (ProbeSettings, Task, baseline_probas, evaluation_repeats, load_prompt, make_tasks,
                                     run_probes, text_features, tfidf_model)

from test_probes import FAST, make_items, make_set

SETTINGS = dataclasses.replace(FAST, repeats=3, zero_shot_prompt=None)   # evaluation repeats 1 and 2


def write_twins(folder, noise: float = 0.1) -> None:
    """Set N item i is Set B item i plus `noise` sd (every site and layer): B vs N carries no signal in the
    activations, and `make_items` gives twins the same text, so no text baseline has any either."""
    b = make_set("B", seed=1)
    n = make_set("N", seed=2)
    rng = np.random.default_rng(5)
    for kind in "ham":
        n[kind] = (b[kind] + noise * rng.normal(size=b[kind].shape)).astype(np.float32)
    for name, arrays in (("A", make_set("A", seed=0)), ("B", b), ("N", n), ("C", make_set("C", seed=3))):
        save_npz(folder / f"{name}.npz", **arrays)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(folder, result of the grouped run, the folds each text-baseline fit was given: (n, test folds) per call,
    the groups each split was drawn with: (n, groups or None) per `stats.splits` call)."""
    root = tmp_path_factory.mktemp("twins") / "model"
    write_twins(root / "two-shot")
    calls, split_calls = [], []
    cv_proba, splits = stats.cv_proba, stats.splits

    def recording(X, y, folds, C=1.0, model_factory=None, groups=None):
        callers = {sys._getframe(k).f_code.co_name for k in range(1, 4)}
        if "baseline_probas" in callers:                                # a text baseline's fit (not a probe's)
            calls.append((len(y), [test.tolist() for _, test in folds]))
        return cv_proba(X, y, folds, C, model_factory, groups)

    def recording_splits(y, n_folds, seed, groups=None, repeats=1):
        split_calls.append((len(y), None if groups is None else np.array(groups)))
        return splits(y, n_folds, seed, groups, repeats)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats, "cv_proba", recording)
        patch.setattr(stats, "splits", recording_splits)
        result = run_probes(root, SETTINGS, items=make_items())
    return root, result, calls, split_calls


def twin_tasks(folder):
    data = load_prompt(folder / "two-shot")
    return data, make_tasks(data, SETTINGS, {i: o.get("pair") for i, o in make_items().items()})


def b_vs_n_rows(result):
    return [r for r in result.rows if r["task"] == "b_vs_n"]


def test_near_copy_twins_stay_in_one_fold_and_b_vs_n_on_no_signal_gives_chance(twins):
    """Measured: grouped (pairs from the stimuli) every layer x site 0.49-0.51, the peak's interval covers 0.5,
    nested 0.50 (its inner splits grouped too), MDL compression 0.97-0.99; the same activations without pair links
    (ungrouped stratified splits) 0.23-0.28, MDL compression 0.68-0.78: a held-out item's near copy sits in
    training with the opposite label."""
    folder, grouped, _, split_calls = twins
    task = twin_tasks(folder)[1]["b_vs_n"]
    twin_of = np.r_[np.arange(48, 96), np.arange(48)]          # row i of B is the twin of row 48 + i (Set N)
    assert task.groups is not None and (task.groups == task.groups[twin_of]).all() and len(np.unique(task.groups)) == 48
    for folds in task.folds:
        for train, test in folds:
            assert set(twin_of[test]) == set(test)               # every held-out item's twin is held out with it
    inner = [g for n, g in split_calls if n == 64]               # the nested probe's inner splits of B vs N
    assert len(inner) == 3 * 3 * len(evaluation_repeats(SETTINGS))                  # 3 sites x 3 outer folds
    assert all(g is not None and (np.bincount(g)[g] == 2).all() for g in inner)     # grouped, twins kept whole
    aurocs = [r["auroc"] for r in b_vs_n_rows(grouped)]
    assert 0.45 < min(aurocs) and max(aurocs) < 0.55, aurocs
    for site in "ham":
        m = grouped.metrics["b_vs_n"][site]
        assert m["low"] <= 0.5 <= m["high"] and abs(m["nested_auroc"] - 0.5) < 0.05, m
        assert m["p_max_layers"] > 0.05
    assert grouped.metrics["mdl"]["b_vs_n"]["compression_min"] > 0.95     # twins sent in one block: no code gain
    leaky = run_probes(folder, SETTINGS)                         # no pair links: the splits ignore the twins
    assert max(r["auroc"] for r in b_vs_n_rows(leaky)) < 0.35   # the fixture detects a leak
    assert leaky.metrics["mdl"]["b_vs_n"]["compression_max"] < 0.85        # a twin sent earlier misleads the code


def test_baselines_run_on_the_probes_own_folds_and_repeats(twins):
    """Every baseline fit sees exactly the probe's splits of its task, repeat by repeat in the evaluation order the
    nested probe uses (so the margins are paired). On the twins (same text for B and its N) the grouped splits give
    every B-vs-N baseline exactly 0.5; the bag of words on ungrouped splits of the same task 0.25."""
    folder, result, calls, _ = twins
    data, tasks = twin_tasks(folder)
    repeats = evaluation_repeats(SETTINGS)
    assert repeats == [1, 2]
    expected = {}
    for name in ("set_a", "set_b", "b_vs_n"):                    # Sets A and B: same labels, same seed, same folds
        expected[len(tasks[name].y)] = [[t.tolist() for _, t in tasks[name].folds[r]] for r in repeats]
    methods = 5                                                  # length, polarity, bow, style, tfidf (no embeddings)
    assert len(calls) == 3 * methods * len(repeats)
    for start in range(0, len(calls), len(repeats)):             # one job per (task, method), repeats in order
        batch = calls[start:start + len(repeats)]
        assert [folds for _, folds in batch] == expected[batch[0][0]]

    for method, b in result.metrics["b_vs_n"]["baselines"].items():
        assert b["auroc"] == 0.5, (method, b)
    task = tasks["b_vs_n"]
    ungrouped = dataclasses.replace(task, folds=stats.splits(task.y, SETTINGS.folds, SETTINGS.seed, repeats=2),
                                    groups=None)
    texts = [make_items()[i]["text"] for s in "BN" for i in data[s].ids]
    leaky = baseline_probas(ungrouped, {"bow": text_features(texts, None)["bow"]}, SETTINGS)["bow"]
    assert np.mean([stats.auroc(task.y, p) for p in leaky]) < 0.35


def test_transfer_is_read_at_set_a_s_peak_when_set_b_peaks_elsewhere(tmp_path):
    """Set A carries its signal at layer 1 (8 sd, 1.5 at layer 2), Set B at layer 2 (8 sd, 1 at layer 1): the
    transfer curve is highest at layer 2 (Set B's peak), but the layer must be chosen on Set A (layer 1). Measured
    at site h, layers 0-2: Set A 0.46 / 1.00 / 0.77, Set B 0.48 / 0.64 / 1.00, transfer 0.44 / 0.65 / 1.00."""
    folder = tmp_path / "m" / "two-shot"
    signal = {"A": (0.0, 8.0, 1.5), "B": (0.0, 1.0, 8.0), "N": (0.0, 1.0, 8.0), "C": (0.0, 1.0, 8.0)}
    for i, s in enumerate("ABNC"):
        save_npz(folder / f"{s}.npz", **make_set(s, signal=signal[s], seed=i))
    result = run_probes(tmp_path / "m", dataclasses.replace(SETTINGS, repeats=1, n_perm=0))
    m = result.metrics
    for site in "ham":
        curve = [r["auroc"] for r in result.rows if r["task"] == "transfer" and r["site"] == site]
        assert m["set_a"][site]["peak_layer"] == 1 and m["set_b"][site]["peak_layer"] == 2, site
        assert int(np.argmax(curve)) == 2 and curve[2] > curve[1] + 0.02, curve     # the fixture can fail
        assert m["transfer"][site]["peak_layer"] == 1 and m["transfer"][site]["auroc"] == curve[1]
        assert m["transfer"][site]["peak_depth"] == pytest.approx(2 / 3)


POOL = ("kalo", "mirute", "zopa", "nisuve", "dofa", "lomi", "rute", "pani", "suvedo", "faka")


def counted_texts(rng, n: int = 48, signal: bool = True):
    """Class 1 says `alpha` once more than `beta`, class 0 as often; both counts share a random 1-8 (without
    signal: the extra `alpha` ignores the label). Only a weakly penalized fit reads the difference: a strong
    penalty leaves the class-mean direction, which the shared count drowns."""
    y = np.repeat([0, 1], n // 2)
    extra = y if signal else rng.permutation(y)
    texts = []
    for e in extra:
        m = int(rng.integers(1, 9))
        words = ["alpha"] * (m + e) + ["beta"] * m
        rng.shuffle(words)
        texts.append(" ".join(words))
    return np.array(texts), y


def noisy_texts(rng, n: int = 48):
    """One class word (`alpha` / `beta`, wrong for 25% of the items) and four common filler words: a weak penalty
    fits the flipped items through the fillers, a strong one keeps to the class word."""
    y = np.repeat([0, 1], n // 2)
    texts = [" ".join([("beta", "alpha")[c if rng.random() >= 0.25 else 1 - c], *rng.choice(POOL, 4)]) for c in y]
    return np.array(texts), y


def tfidf_auroc(texts, y, grid, seed: int) -> float:
    """The probes stage's TF-IDF baseline (C tuned inside each training fold over `grid`), one repeat."""
    task = Task("set_b", ("B",), y, stats.splits(y, 3, seed))
    settings = ProbeSettings(seed=0, folds=3, repeats=1, tfidf_C=tuple(grid))
    return stats.auroc(y, baseline_probas(task, {"tfidf": texts}, settings)["tfidf"][0])


def test_tfidf_c_is_tuned_per_data_set_and_tuning_beats_a_fixed_bad_c():
    """Grid (0.01, 100). Measured (5 data sets each): the counted texts choose C = 100 every time (fixed 0.01:
    AUROC 0.64-0.82, fixed 100: 0.92-0.99, tuned 0.87-0.99); the noisy texts choose C = 0.01 every time (fixed
    0.01 beats fixed 100 in 4 of 5). A one-value grid, or a C that ignores the grid, fails here."""
    grid = (0.01, 100.0)
    with threadpool_limits(limits=1):
        for seed in (0, 1):
            for make, best in ((counted_texts, 100.0), (noisy_texts, 0.01)):
                texts, y = make(np.random.default_rng(seed))
                search = tfidf_model(grid, 2, 0).fit(texts, y, groups=np.arange(len(y)))
                assert search.best_params_["logisticregression__C"] == best, (make.__name__, seed)
            texts, y = counted_texts(np.random.default_rng(seed))
            tuned, bad = tfidf_auroc(texts, y, grid, seed), tfidf_auroc(texts, y, grid[:1], seed)
            assert tuned > 0.85 and tuned > bad + 0.15, (tuned, bad)


def test_tfidf_c_is_chosen_without_the_test_fold_s_labels():
    """Inverting the labels of one test fold leaves that fold's TF-IDF predictions exactly as they were (C is
    tuned on the training folds only). On this data set the inversion moves the C that a search over every item
    picks from 100 to 0.01, so tuning with the test fold's labels would change them (checked beside it)."""
    grid = (0.01, 100.0)
    a, ya = counted_texts(np.random.default_rng(0), 24)
    b, yb = noisy_texts(np.random.default_rng(0), 24)
    texts, y = np.r_[a, b], np.r_[ya, yb]
    folds = stats.splits(y, 3, 0)
    test = folds[0][0][1]
    inverted = y.copy()
    inverted[test] = 1 - inverted[test]
    settings = ProbeSettings(seed=0, folds=3, repeats=1, tfidf_C=grid)
    with threadpool_limits(limits=1):
        ours = [baseline_probas(Task("set_b", ("B",), labels, folds), {"tfidf": texts}, settings)["tfidf"][0]
                for labels in (y, inverted)]
        assert np.array_equal(ours[0][test], ours[1][test])
        leaky = []
        for labels in (y, inverted):                          # C chosen on every item, then cross-validated
            c = tfidf_model(grid, 2, 0).fit(texts, labels, groups=np.arange(len(y))).best_params_
            leaky.append((c["logisticregression__C"], stats.cv_proba(
                texts, labels, folds[0], model_factory=lambda: tfidf_model(grid, 2, 0).estimator.set_params(**c))))
    assert [c for c, _ in leaky] == [100.0, 0.01]
    assert np.abs(leaky[0][1][test] - leaky[1][1][test]).max() > 0.01


@pytest.mark.slow   # ~25 s on the loaded 2-core machine (96 tuned searches): the effect is small per data set
def test_tuning_c_inside_training_folds_is_not_optimistic_where_tuning_on_the_test_folds_is():
    """96 counted-text data sets without signal (24 items, 3 folds, grid (0.01, 100)). Measured: the C that scores
    best on the outer test folds gives mean AUROC 0.521; the stage's tuning inside training folds 0.501, and each
    fixed C 0.489 / 0.484 (pooled out-of-fold AUROC sits a little below 0.5 on noise); paired difference +0.020
    (sd 0.05 per data set)."""
    grid = (0.01, 100.0)
    settings = ProbeSettings(seed=0, folds=3, tfidf_C=grid)
    fixed, ours = [], []
    with threadpool_limits(limits=1):
        for seed in range(96):
            texts, y = counted_texts(np.random.default_rng(seed), 24, signal=False)
            folds = stats.splits(y, 3, seed)
            fixed.append([stats.auroc(y, stats.cv_proba(texts, y, folds[0], model_factory=lambda: tfidf_model(
                grid, 2, 0).estimator.set_params(logisticregression__C=c))) for c in grid])
            ours.append(stats.auroc(y, baseline_probas(Task("set_b", ("B",), y, folds), {"tfidf": texts},
                                                       settings)["tfidf"][0]))
    fixed, ours = np.array(fixed), np.array(ours)
    on_test = fixed.max(axis=1)
    assert on_test.mean() - ours.mean() > 0.01, (on_test.mean(), ours.mean())
    assert on_test.mean() > fixed.mean(axis=0).max() + 0.02 and ours.mean() < fixed.mean(axis=0).max() + 0.02
