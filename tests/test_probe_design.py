"""The probe pipeline's design, on synthetic activation folders where the wrong design gives the wrong answer: B-vs-N
twins that are near copies stay in one fold (split twins anti-learn), the text baselines run on the probes' own
folds and repeats, and the transfer layer is Set A's peak when Sets A and B peak at different layers."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emotion_circuits import stats
from emotion_circuits.io import save_npz
from emotion_circuits.probes import (baseline_probas, evaluation_repeats, load_prompt, make_tasks, run_probes,
                                     text_features)

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
    """(folder, result of the grouped run, the folds each text-baseline fit was given: (n, test folds) per call)."""
    root = tmp_path_factory.mktemp("twins") / "model"
    write_twins(root / "two-shot")
    calls = []
    original = stats.cv_proba

    def recording(X, y, folds, C=1.0, model_factory=None, groups=None):
        if model_factory is not None:                            # a text baseline (probes pass no factory)
            calls.append((len(y), [test.tolist() for _, test in folds]))
        return original(X, y, folds, C, model_factory, groups)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats, "cv_proba", recording)
        result = run_probes(root, SETTINGS, items=make_items())
    return root, result, calls


def twin_tasks(folder):
    data = load_prompt(folder / "two-shot")
    return data, make_tasks(data, SETTINGS, {i: o.get("pair") for i, o in make_items().items()})


def b_vs_n_rows(result):
    return [r for r in result.rows if r["task"] == "b_vs_n"]


def test_near_copy_twins_stay_in_one_fold_and_b_vs_n_on_no_signal_gives_chance(twins):
    """Measured: grouped (pairs from the stimuli) every layer x site 0.49-0.51, the peak's interval covers 0.5,
    nested 0.50; the same activations without pair links (ungrouped stratified splits) 0.23-0.28: a held-out item's
    near copy sits in training with the opposite label."""
    folder, grouped, _ = twins
    task = twin_tasks(folder)[1]["b_vs_n"]
    twin_of = np.r_[np.arange(48, 96), np.arange(48)]          # row i of B is the twin of row 48 + i (Set N)
    assert task.groups is not None and (task.groups == task.groups[twin_of]).all() and len(np.unique(task.groups)) == 48
    for folds in task.folds:
        for train, test in folds:
            assert set(twin_of[test]) == set(test)               # every held-out item's twin is held out with it
    aurocs = [r["auroc"] for r in b_vs_n_rows(grouped)]
    assert 0.45 < min(aurocs) and max(aurocs) < 0.55, aurocs
    for site in "ham":
        m = grouped.metrics["b_vs_n"][site]
        assert m["low"] <= 0.5 <= m["high"] and abs(m["nested_auroc"] - 0.5) < 0.05, m
        assert m["p_max_layers"] > 0.05
    leaky = run_probes(folder, SETTINGS)                         # no pair links: the splits ignore the twins
    assert max(r["auroc"] for r in b_vs_n_rows(leaky)) < 0.35   # the fixture detects a leak


def test_baselines_run_on_the_probes_own_folds_and_repeats(twins):
    """Every baseline fit sees exactly the probe's splits of its task, repeat by repeat in the evaluation order the
    nested probe uses (so the margins are paired). On the twins (same text for B and its N) the grouped splits give
    every B-vs-N baseline exactly 0.5; the bag of words on ungrouped splits of the same task 0.25."""
    folder, result, calls = twins
    data, tasks = twin_tasks(folder)
    repeats = evaluation_repeats(SETTINGS)
    assert repeats == [1, 2]
    expected = {}
    for name in ("set_a", "set_b", "b_vs_n"):                    # Sets A and B: same labels, same seed, same folds
        expected[len(tasks[name].y)] = [[t.tolist() for _, t in tasks[name].folds[r]] for r in repeats]
    methods = 4                                                  # length, polarity, bow, tfidf (no embeddings)
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
    transfer curve is highest at layer 2 (Set B's peak), but the layer must be chosen on Set A (layer 1)."""
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
