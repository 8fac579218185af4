"""The shared statistics: AUROC against scikit-learn, bootstrap resamples against a plain loop, p-values."""
import numpy as np
import pytest
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


def test_control_labels_keep_counts_and_seed():
    y = np.repeat(np.arange(8), 12)
    a, b = stats.control_labels(y, 0), stats.control_labels(y, 0)
    assert (a == b).all() and (np.sort(a) == np.sort(y)).all() and (a != y).any()
