"""Probe statistics against simulations on the project's own functions, where the wrong method gives the wrong
answer: the design-keeping permutation null (level and power, emotion sets and paired B vs N)."""
from __future__ import annotations

import numpy as np
import pytest

from emotion_circuits import stats
from emotion_circuits.probes import (HEADLINE, SITES, ProbeSettings, Task, _layer_job, _max_p, _variant_metrics,
                                     nested_job, null_orders, ridge_null)


def null_rates(kind: str, paired: bool, n_sets: int, signal: float = 0.0, n_perm: int = 99, layers: int = 3):
    """Rates of per-layer p < 0.05 and of max-over-layers p < 0.05 over `n_sets` simulated data sets.

    Emotion sets: 8 classes x 6 items, 3 stratified folds, `layers` layers of 10 noise dimensions (+ `signal` on
    the class's own dimension). Paired: 24 B items and their N twins (near copies: shared 2-sd part, 0.5-sd own
    noise), grouped folds, `signal` on one dimension. `kind` 'free' = the old free shuffle, 'design' = null_orders."""
    per_layer, max_layers, offsets = [], [], []
    for seed in range(n_sets):
        rng = np.random.default_rng(seed)
        if paired:
            m = 24
            y, groups = np.r_[np.ones(m, int), np.zeros(m, int)], np.r_[np.arange(m), np.arange(m)]
            shared = 2 * rng.normal(size=(m, layers, 10))
            X = np.concatenate([shared, shared]) + 0.5 * rng.normal(size=(2 * m, layers, 10))
            X[:, :, 0] += signal * (2 * y - 1)[:, None]
        else:
            y, groups = np.repeat(np.arange(8), 6), None
            X = rng.normal(size=(len(y), layers, 10))
            X[:, :, :8] += signal * np.eye(8)[y][:, None, :]
        folds = stats.splits(y, 3, seed, groups)
        orders = (stats.permutations(len(y), n_perm, seed) if kind == "free"
                  else null_orders(folds[0], len(y), n_perm, seed, groups))
        task = Task("t", ("B", "N") if paired else ("A",), y, folds, groups=groups, orders=orders)
        nulls = np.stack([ridge_null(task, X[:, layer], 1.0) for layer in range(layers)])
        per_layer += [stats.permutation_p(row[0], row[1:]) for row in nulls]
        max_layers.append(_max_p(nulls))
        offsets.append(np.mean(nulls[:, 1:].mean(axis=1) - nulls[:, 0]))
    null_rates.offset = float(np.mean(offsets))   # mean of the null minus the observed AUROC (0 if calibrated)
    return float(np.mean(np.array(per_layer) < 0.05)), float(np.mean(np.array(max_layers) < 0.05))


def test_null_orders_keep_fold_counts_and_swap_only_twins():
    y = np.repeat(np.arange(4), 6)
    folds = stats.splits(y, 3, 0)
    orders = null_orders(folds[0], len(y), 50, 1)
    assert (orders[0] == np.arange(len(y))).all()
    for _, test in folds[0]:
        for row in orders[1:]:
            assert sorted(row[test]) == sorted(test)       # labels move only inside their test fold
    ybn, groups = np.r_[np.ones(6, int), np.zeros(8, int)], np.r_[np.arange(6), np.arange(6), 6, 7]
    swaps = null_orders(stats.splits(ybn, 2, 0, groups)[0], 14, 400, 2, groups)
    twin = np.r_[np.arange(6, 12), np.arange(6)]
    for i in range(12):
        assert set(swaps[1:, i]) == {i, twin[i]}
        assert 0.4 < np.mean(swaps[1:, i] == twin[i]) < 0.6
    assert set(swaps[1:, 12:].ravel()) <= {12, 13}


def test_design_null_holds_its_level_where_the_free_shuffle_does_not():
    """400 pure-noise 8-class data sets. Measured: free shuffle 14.1% per layer, 15.5% max over layers (at 4 folds x
    64 items x 20 dims: 12.0% / 15.5%); within-test-fold null 4.0% / 4.0% (the exact level of p < 0.05 with 99
    permutations is 4%; 4.9% / 5.0% at 4 folds x 64 items). Planted signal 1.5 (30 sets): power 98% / 100%."""
    free = null_rates("free", False, 400)
    free_offset = null_rates.offset
    design = null_rates("design", False, 400)
    assert free[0] > 0.08 and free[1] > 0.08, free
    # the free shuffle's band sits below the AUROC of labels without signal (the old test asserted a null mean
    # < 0.5 as expected); the design-keeping one sits where it does. Measured: -0.041 free, -0.0025 design.
    assert free_offset < -0.02 and abs(null_rates.offset) < 0.01, (free_offset, null_rates.offset)
    assert 0.02 <= design[0] <= 0.07 and 0.02 <= design[1] <= 0.07, design
    assert min(null_rates("design", False, 30, signal=1.5)) > 0.8


def test_pair_swap_null_holds_its_level_and_has_power_where_the_free_shuffle_has_none():
    """400 pure-noise B-vs-N data sets with near-copy twins. Measured: free shuffle 0.0% / 0.0% (over-conservative:
    its band ignores the pairs), with signal 0.5 power 8% / 1%; pair swaps 3.0% / 2.75%, power 91% / 99%."""
    free = null_rates("free", True, 400)
    design = null_rates("design", True, 400)
    assert 0.02 <= design[0] <= 0.07 and 0.02 <= design[1] <= 0.07, design
    assert free[0] < 0.02, free
    power_free = null_rates("free", True, 60, signal=0.5)
    power = null_rates("design", True, 60, signal=0.5)
    assert power[1] > 0.8 and power_free[1] < 0.3, (power, power_free)


def equal_information_margins(n_sets: int, n_layers: int = 4, repeats: int = 3):
    """Per simulated data set (binary, 30 + 30 items, 3 folds): (nested margin, low, high) and the old peak-layer
    margin. Every layer and the baseline are independent noisy views (5 dims, signal 0.8 sd on one) of the same
    label: the true margin is 0."""
    settings = ProbeSettings(seed=0, folds=3, repeats=repeats, n_boot=200)
    nested, peak = [], []
    for seed in range(n_sets):
        rng = np.random.default_rng(seed)
        y = np.repeat([0, 1], 30)
        views = rng.normal(size=(n_layers + 1, len(y), 5))
        views[:, :, 0] += 0.8 * (2 * y - 1)
        X, base = views[:-1].transpose(1, 0, 2), views[-1]
        folds = stats.splits(y, 3, seed, repeats=repeats)
        task = Task("t", ("B",), y, folds)
        probe = np.stack([nested_job(task, X, settings, r)[0] for r in range(repeats)])
        baseline = np.stack([stats.cv_proba(base, y, f) for f in folds])
        nested.append(stats.repeated_auroc(y, probe, 200, seed, minus=baseline))
        layers = [np.stack([stats.cv_proba(X[:, layer], y, f) for f in folds]) for layer in range(n_layers)]
        best = int(np.argmax([np.mean([stats.auroc(y, p) for p in stack]) for stack in layers]))
        peak.append(stats.repeated_auroc(y, layers[best], 200, seed, minus=baseline)[0])
    return np.array(nested), np.array(peak)


def test_nested_margin_is_unbiased_where_the_peak_margin_is_not():
    """Equal-information data sets. Measured (80 sets, 3 repeats): nested margin mean +0.013, its interval covers 0
    in 93.8%; the old peak-layer margin mean +0.067 (biased upward: the peak is the best of 4 noisy layers chosen
    on the scored items). The test runs 30 sets x 2 repeats."""
    nested, peak = equal_information_margins(30, repeats=2)
    covered = np.mean((nested[:, 1] <= 0) & (0 <= nested[:, 2]))
    assert abs(nested[:, 0].mean()) < 0.02 and covered >= 0.9, (nested[:, 0].mean(), covered)
    assert peak.mean() > 0.025, peak.mean()


@pytest.mark.slow   # ~1 min on an idle core (9 min measured on the loaded 2-core machine)
def test_p_attached_to_the_reported_peak_holds_its_level_where_the_peak_s_own_p_does_not():
    """Pure noise, 200 binary data sets (20 + 20 items, 5 layers, 3 folds, 1 repeat, 99 permutations): the
    reported peak is the logistic mean's best layer and the p printed beside it is `p_max_layers`. Measured on the
    first 60 sets: 6.7% with p_max_layers < 0.05 (passes at 200 sets); the per-layer p at the chosen peak 16.7%."""
    settings = ProbeSettings(seed=0, folds=3, repeats=1, n_boot=100, n_perm=99)
    attached, own = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = np.repeat([0, 1], 20)
        folds = stats.splits(y, 3, seed)
        task = Task("set_b", ("B",), y, folds, orders=null_orders(folds[0], len(y), 99, seed))
        X = rng.normal(size=(len(y), 5, 6))
        scores = [_layer_job({"B": X[:, layer]}, [task], settings)[0]["set_b"] for layer in range(5)]
        curves = {name: {site: scores for site in SITES} for name in HEADLINE}
        m = _variant_metrics(curves, {name: task for name in HEADLINE}, settings)["set_b"]["h"]
        attached.append(m["p_max_layers"])
        own.append(scores[m["peak_layer"]].p_layer)
    rate, wrong = np.mean(np.array(attached) < 0.05), np.mean(np.array(own) < 0.05)
    assert rate <= 0.07 and wrong > rate, (rate, wrong)
