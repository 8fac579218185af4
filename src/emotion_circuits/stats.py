"""The one statistics toolbox: the probe protocol, fast AUROC, bootstrap intervals and permutation p-values.

Everything that reports an AUROC (probes, text-only baselines, interventions) uses these functions, so every
number is computed the same way. AUROC chance is 0.5; accuracy chance is 1/k.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def probe_pipeline(C: float = 1.0, max_iter: int = 2000) -> Pipeline:
    """Standardization and L2 logistic regression in one Pipeline, so CV fits the scaler on training folds only."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def folds(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits (shuffled with `seed`); the same splits for every feature set of a task."""
    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < n_folds:
        raise ValueError(f"a class has {counts.min()} items, fewer than the {n_folds} folds")
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y))


def cv_proba(X: np.ndarray, y: np.ndarray, splits, C: float = 1.0, model_factory=None) -> np.ndarray:
    """Out-of-fold class probabilities `(n, k)` (columns in sorted label order) under the given splits."""
    X = np.asarray(X)
    if X.dtype.kind in "biuf":  # numeric features; texts (for a bag-of-words factory) pass through as they are
        X = X.astype(np.float64)
        if X.ndim == 1:
            X = X[:, None]
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    for train, test in splits:
        model = model_factory() if model_factory is not None else probe_pipeline(C)
        model.fit(X[train], y[train])
        cols = np.searchsorted(classes, model.classes_)
        proba[np.ix_(test, cols)] = model.predict_proba(X[test])
    return proba


def _pairwise_auroc(is_pos: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of binary labels and scores for each row of item multiplicities `counts (B, n)` (ties count half).

    A resample's AUROC is the count-weighted share of (positive, negative) pairs ranked right, so one comparison
    matrix serves every bootstrap resample (no per-resample ranking). NaN where a resample lacks a class.
    """
    pos, neg = scores[is_pos], scores[~is_pos]
    right = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    c_pos, c_neg = counts[:, is_pos], counts[:, ~is_pos]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((c_pos @ right) * c_neg).sum(axis=1) / (c_pos.sum(axis=1) * c_neg.sum(axis=1))


def auroc(y: np.ndarray, proba: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """Macro one-vs-rest AUROC of `proba (n, k)` against labels `y` (k = 2: AUROC of the second column).

    `index (B, n)` evaluates B resamples at once and returns `(B,)`; without it, a scalar.
    """
    y = np.asarray(y)
    classes = np.unique(y)
    proba = np.asarray(proba, dtype=np.float64)
    single = index is None
    n = len(y)
    if single:
        counts = np.ones((1, n))
    else:
        index = np.asarray(index)
        rows = len(index)
        counts = np.bincount((index + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
        counts = counts.astype(np.float64)
    if len(classes) == 2:
        scores = proba[:, 1] if proba.ndim == 2 else proba
        result = _pairwise_auroc(y == classes[1], scores, counts)
    else:
        per_class = [_pairwise_auroc(y == c, proba[:, j], counts) for j, c in enumerate(classes)]
        result = np.nanmean(np.stack(per_class), axis=0)
    return float(result[0]) if single else result


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean(classes[np.argmax(proba, axis=1)] == y))


def bootstrap_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n)` resampling indices over stimuli, drawn once from `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_auroc(y, proba, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, low, high): percentile interval over stimuli resampled with replacement."""
    point = auroc(y, proba)
    values = auroc(y, proba, bootstrap_index(len(y), n_boot, seed))
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    return point, float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-item values, percentile bootstrap over items."""
    values = np.asarray(values, dtype=np.float64)
    means = values[bootstrap_index(len(values), n_boot, seed)].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(values.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of `observed` against a permutation null, counting the observed value (never 0)."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def control_labels(y: np.ndarray, seed: int) -> np.ndarray:
    """Control task: the labels shuffled once with `seed`, so each stimulus keeps a fixed random label."""
    return np.random.default_rng(seed).permutation(np.asarray(y))
