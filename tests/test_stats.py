"""The shared statistics: AUROC against scikit-learn, bootstrap resamples against a plain loop, p-values, grouped
splits (the twin simulation where stratified splits fail), the row-space probe and closed-form ridge null, BH."""
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score

from emotion_circuits import stats


@pytest.mark.parametrize("k", [2, 8])
def test_auroc_matches_sklearn_with_ties(k):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(k), 12)
    proba = np.round(rng.random((len(y), k)), 1)  # many ties
    proba /= proba.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, proba[:, 1]) if k == 2 else roc_auc_score(y, proba, multi_class="ovr")
    assert stats.auroc(y, proba) == pytest.approx(expected, abs=1e-12)
    index = stats.bootstrap_index(len(y), 50, seed=3)
    fast = stats.auroc(y, proba, index)
    for row, resample in zip(fast, index):
        yb, pb = y[resample], proba[resample]
        if len(np.unique(yb)) < k:
            continue
        plain = roc_auc_score(yb, pb[:, 1]) if k == 2 else np.mean(
            [roc_auc_score(yb == c, pb[:, c]) for c in range(k) if 0 < (yb == c).sum() < len(yb)])
        assert row == pytest.approx(plain, abs=1e-12)


def test_bootstrap_interval_and_permutation_p():
    y = np.repeat([0, 1], 50)
    perfect = np.stack([1 - y, y], axis=1).astype(float)
    point, low, high = stats.bootstrap_auroc(y, perfect, n_boot=200, seed=0)
    assert (point, low, high) == (1.0, 1.0, 1.0)
    noise = np.random.default_rng(0).random((100, 2))
    point, low, high = stats.bootstrap_auroc(y, noise, n_boot=500, seed=0)
    assert low < 0.5 < high and low < point < high
    assert stats.permutation_p(0.9, np.array([0.5, 0.6, 0.95])) == pytest.approx(2 / 4)
    assert stats.permutation_p(1.0, np.zeros(199)) == pytest.approx(1 / 200)


def twins(n_pairs=48, d=20, seed=0):
    """B/N twins: each pair shares a template vector, the label (B = 1, N = 0) adds nothing to X."""
    rng = np.random.default_rng(seed)
    template = rng.normal(size=(n_pairs, d)) * 3
    X = np.concatenate([template + rng.normal(size=(n_pairs, d)), template + rng.normal(size=(n_pairs, d))])
    y = np.r_[np.ones(n_pairs, int), np.zeros(n_pairs, int)]
    ids = [f"b{i}" for i in range(n_pairs)] + [f"n{i}" for i in range(n_pairs)]
    pairs = [f"n{i}" for i in range(n_pairs)] + [f"b{i}" for i in range(n_pairs)]
    return X, y, stats.groups_from_pairs(ids, pairs)


def test_grouped_splits_keep_twins_together_and_give_chance_where_stratified_anti_learns():
    X, y, groups = twins()
    assert len(np.unique(groups)) == 48
    grouped = stats.splits(y, 5, seed=0, groups=groups, repeats=3)
    for folds in grouped:
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
    strat = stats.splits(y, 5, seed=0, repeats=3)
    g = stats.repeated_auroc(y, [stats.cv_proba(X, y, f) for f in grouped], n_boot=300, groups=groups)
    s = stats.repeated_auroc(y, [stats.cv_proba(X, y, f) for f in strat], n_boot=300, groups=groups)
    assert g[1] < 0.5 < g[2], g
    assert s[0] < 0.35, s   # split twins: each held-out item's near copy is in training with the opposite label


def test_splits_errors_are_one_line():
    y = np.repeat([0, 1], 3)
    with pytest.raises(ValueError, match="fewer than the 5 folds"):
        stats.splits(y, 5, seed=0)
    with pytest.raises(ValueError, match="2 groups, fewer than the 3 folds"):
        stats.splits(y, 3, seed=0, groups=np.array([0, 0, 0, 1, 1, 1]))


def test_row_space_probe_equals_the_plain_probe():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 100)), np.repeat(np.arange(4), 10)
    X[:, :4] += np.eye(4)[y] * 1.5
    fast = stats.probe_pipeline(row_space=True).fit(X[:30], y[:30]).predict_proba(X[30:])
    plain = stats.probe_pipeline(row_space=False, max_iter=10000).fit(X[:30], y[:30]).predict_proba(X[30:])
    assert np.abs(fast - plain).max() < 1e-3


def test_ridge_hats_match_sklearn_ridge_and_auroc_many_matches_auroc():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(36, 50)), np.repeat(np.arange(3), 12)
    X[:, :3] += np.eye(3)[y]
    folds = stats.splits(y, 3, seed=0)[0]
    orders = stats.permutations(len(y), 4, seed=1)
    Y = stats.one_hot(y[orders], 3)
    scores = stats.ridge_scores(stats.ridge_hats(X, folds, alpha=0.5), Y)
    for train, test in folds:
        mu, sd = X[train].mean(axis=0), X[train].std(axis=0)
        xtr, xte = (X[train] - mu) / sd, (X[test] - mu) / sd
        lam = 0.5 * np.trace(xtr @ xtr.T) / len(train)
        for p in range(len(orders)):
            expected = Ridge(alpha=lam).fit(xtr, Y[p, train]).predict(xte)
            assert np.allclose(scores[p, test], expected, atol=1e-8)
    many = stats.auroc_many(y[orders], scores)
    assert np.allclose(many, [stats.auroc(y[o], s) for o, s in zip(orders, scores)], atol=1e-12)
    assert (orders[0] == np.arange(len(y))).all()


def test_repeated_interval_adds_refit_variance_and_paired_difference_is_exact():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    base = rng.random((60, 2))
    same = stats.repeated_auroc(y, [base] * 4, n_boot=400, seed=0)
    assert same == pytest.approx(stats.bootstrap_auroc(y, base, n_boot=400, seed=0))
    spread = [base + rng.normal(scale=0.5, size=base.shape) for _ in range(4)]
    wide = stats.repeated_auroc(y, spread, n_boot=400, seed=0)
    assert wide[2] - wide[1] > 0
    diff = stats.repeated_auroc(y, [base] * 2, n_boot=200, seed=0, minus=[base] * 2)
    assert diff == (0.0, 0.0, 0.0)


def test_cluster_bootstrap_draws_twins_together():
    groups = np.r_[np.arange(10), np.arange(10)]
    counts = stats.bootstrap_counts(groups, 20, 50, seed=0)
    assert (counts[:, :10] == counts[:, 10:]).all() and (counts.sum(axis=1) == 20).all()


def test_benjamini_hochberg_known_answer():
    p = np.array([[0.01, 0.04], [0.03, 0.5]])
    assert np.allclose(stats.benjamini_hochberg(p), [[0.04, 0.16 / 3], [0.16 / 3, 0.5]])


def test_agreement_kappa_is_zero_for_independent_predictors_that_share_a_favourite_class():
    """Two predictors that both answer one emotion most of the time agree often by chance: raw agreement says
    they agree (~0.45 here), kappa and its permutation p do not (p < 0.05 at the nominal rate), and planted
    dependence is found."""
    rng = np.random.default_rng(0)
    emotions = np.array(list("abcdefgh"))
    skew = np.r_[0.65, np.full(7, 0.05)]
    raw_high, rejected, kappas, planted_found = 0, 0, [], 0
    for _ in range(200):
        a, b = rng.choice(emotions, 96, p=skew), rng.choice(emotions, 96, p=skew)
        found = stats.agreement(a, b, n_boot=50, seed=1, n_perm=200)
        raw_high += found["agreement"] > 0.35
        rejected += found["p"] < 0.05
        kappas.append(found["kappa"])
        assert found["chance"] == pytest.approx(sum(np.mean(a == e) * np.mean(b == e) for e in emotions))
        copied = np.where(rng.random(96) < 0.4, a, b)                 # 40% of items: b repeats a
        planted = stats.agreement(a, copied, n_boot=50, seed=1, n_perm=200)
        planted_found += planted["p"] < 0.05 and planted["kappa_low"] > 0
    assert raw_high >= 180                          # the raw rate looks like agreement ...
    assert abs(np.mean(kappas)) < 0.03              # ... kappa is centred on 0 ...
    assert 0.02 <= rejected / 200 <= 0.08           # ... and its test holds its level
    assert planted_found >= 180                     # planted dependence: found


def test_agreement_known_values_and_bad_input():
    found = stats.agreement(["x", "x", "y", "y"], ["x", "y", "y", "y"], n_boot=50)
    assert found["agreement"] == 0.75 and found["n"] == 4
    assert found["chance"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.75)
    assert found["kappa"] == pytest.approx((0.75 - 0.5) / 0.5)
    with pytest.raises(ValueError, match="one length"):
        stats.agreement(["x"], ["x", "y"])


def test_repeated_cv_interval_covers_the_refit_estimand_where_a_stimulus_only_interval_under_covers():
    """Estimand: the AUROC of a probe fit on a data set of the same size (40 items, 20 dims, classes 1.5 sd apart
    on one), on the population (closed form for Gaussian classes: a large fresh draw in the limit), averaged over
    2000 training draws: 0.733. 300 simulated data sets, 5 x 5-fold CV of the closed-form ridge probe (the fast
    stand-in for the logistic one; the interval does not depend on the probe). Measured (1000 sets): the
    repeated-CV interval with refit variance (`repeated_auroc`, 5 repeats) covers 92.5%; one repeat's stimulus
    bootstrap 85.9%; the stimulus bootstrap of the probabilities averaged over repeats 86-87%."""
    from scipy.stats import norm

    n_half, d, alpha = 20, 20, 1.0
    delta = np.zeros(d)
    delta[0] = 1.5

    def draw(rng):
        y = np.repeat([0, 1], n_half)
        return rng.normal(size=(2 * n_half, d)) + np.outer(y - 0.5, delta), y

    def population_auroc(X, y):
        """AUROC on the population of the ridge score fit on (X, y): Phi(v . delta / sqrt(2 v . v)), v the weights
        on the raw features (ridge_hats' fit in primal form)."""
        mu, sd = X.mean(axis=0), X.std(axis=0)
        xs = (X - mu) / sd
        K = xs @ xs.T
        v = xs.T @ np.linalg.solve(K + alpha * np.trace(K) / len(X) * np.eye(len(X)), y - y.mean()) / sd
        return norm.cdf(v @ delta / np.sqrt(2 * v @ v))

    rng = np.random.default_rng(123)
    truth = np.mean([population_auroc(*draw(rng)) for _ in range(2000)])
    covered = {"refit": [], "one_repeat": [], "averaged": []}
    for seed in range(300):
        X, y = draw(np.random.default_rng(seed))
        Y = stats.one_hot(y, 2)[None]
        probas = np.stack([stats.ridge_scores(stats.ridge_hats(X, folds, alpha), Y)[0]
                           for folds in stats.splits(y, 5, seed, repeats=5)])
        for name, (_, low, high) in (("refit", stats.repeated_auroc(y, probas, 200, seed)),
                                     ("one_repeat", stats.repeated_auroc(y, probas[:1], 200, seed)),
                                     ("averaged", stats.bootstrap_auroc(y, probas.mean(axis=0), 200, seed))):
            covered[name].append(low <= truth <= high)
    rate = {name: float(np.mean(v)) for name, v in covered.items()}
    assert rate["refit"] >= 0.88, rate
    assert rate["one_repeat"] <= rate["refit"] - 0.03 and rate["averaged"] <= rate["refit"] - 0.03, rate
