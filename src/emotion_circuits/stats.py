"""The one statistics toolbox: splits, the probe, fast AUROC, intervals with refit variance, nulls and multiplicity.

Everything that reports an AUROC (probes, text-only baselines, interventions) uses these functions, so every
number is computed the same way. Splits are grouped wherever items are linked (a B item and its N twin share a
group): split twins teach a probe the opposite label of a near copy and drive AUROC below 0.5. The reference line
for a pooled out-of-fold AUROC is its permutation null (which sits a little below 0.5 for small n); accuracy
chance is 1/k.
"""
from __future__ import annotations

import hashlib

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .seeds import derive


class RowSpace(BaseEstimator, TransformerMixin):
    """Coordinates in the row space of the (centred) training matrix: `(n, d) -> (n, rank)`, rank <= n_train.

    An L2 logistic regression's weights lie in that row space (the gradient is X^T r + w / C), so fitting on these
    coordinates gives the same predictions as on the raw features while costing O(n^2) per step instead of O(n d)."""

    def fit(self, X, y=None):
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        keep = s > s[0] * 1e-10 if len(s) and s[0] > 0 else np.arange(len(s)) < 1   # constant X: one zero column
        self.components_ = vt[keep].T
        return self

    def transform(self, X):
        return X @ self.components_


def probe_pipeline(C: float = 1.0, max_iter: int = 2000, row_space: bool = True) -> Pipeline:
    """Standardization and L2 logistic regression in one Pipeline, so CV fits the scaler on training folds only.
    `row_space` fits in the training rows' span (same predictions, faster when d > n)."""
    steps = [StandardScaler(), *([RowSpace()] if row_space else []), LogisticRegression(C=C, max_iter=max_iter)]
    return make_pipeline(*steps)


def groups_from_pairs(ids, pairs) -> np.ndarray:
    """Group codes `(n,)`: an item and its `pair` twin (if also present) share one code; unlinked items their own."""
    ids = [str(i) for i in ids]
    key = [min(i, p) if p and p in set(ids) else i for i, p in zip(ids, pairs)]
    return np.unique(key, return_inverse=True)[1]


def splits(y: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None,
           repeats: int = 1) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """`repeats` lists of stratified k-fold splits, repeat r shuffled with `derive(seed, "repeat", r)`; grouped
    (StratifiedGroupKFold) when `groups (n,)` is given, so linked items always share a fold. The same splits serve every feature set of a task."""
    y = np.asarray(y)
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < n_folds:
        raise ValueError(f"a class has {counts.min()} items, fewer than the {n_folds} folds")
    if groups is not None and len(np.unique(groups)) < n_folds:
        raise ValueError(f"{len(np.unique(groups))} groups, fewer than the {n_folds} folds")
    out = []
    for r in range(repeats):
        if groups is None:
            cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=derive(seed, "repeat", r))
            out.append(list(cv.split(np.zeros(len(y)), y)))
        else:
            cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=derive(seed, "repeat", r))
            out.append(list(cv.split(np.zeros(len(y)), y, groups)))
    return out


def folds_digest(folds, ids) -> str:
    """A short digest of a split as a partition of item ids (the test fold of each id, folds in any order): two
    analyses that claim the same splits must give the same digest."""
    ids = np.asarray(ids).astype(str)
    parts = sorted("\n".join(sorted(ids[np.asarray(test)])) for _, test in folds)
    return hashlib.sha256("\n\n".join(parts).encode()).hexdigest()[:16]


def cv_proba(X: np.ndarray, y: np.ndarray, folds, C: float = 1.0, model_factory=None,
             groups: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold class probabilities `(n, k)` (columns in sorted label order) under one list of folds.
    `groups` is passed to the model's `fit` (a tuned baseline's inner grouped search needs it)."""
    X = np.asarray(X)
    if X.dtype.kind in "biuf":  # numeric features; texts (for a bag-of-words factory) pass through as they are
        X = X.astype(np.float64)
        if X.ndim == 1:
            X = X[:, None]
    classes = np.unique(y)
    proba = np.zeros((len(y), len(classes)))
    for train, test in folds:
        model = model_factory() if model_factory is not None else probe_pipeline(C)
        model.fit(X[train], y[train], **({} if groups is None else {"groups": groups[train]}))
        cols = np.searchsorted(classes, model.classes_)
        proba[np.ix_(test, cols)] = model.predict_proba(X[test])
    return proba


# ------------------------------------------------------------------------------------------------- AUROC


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


def index_counts(index: np.ndarray, n: int) -> np.ndarray:
    """Item multiplicities `(B, n)` of resampling indices `(B, m)`."""
    index = np.asarray(index)
    rows = len(index)
    return np.bincount((index + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n) * 1.0


def auroc(y: np.ndarray, proba: np.ndarray, index: np.ndarray | None = None,
          counts: np.ndarray | None = None) -> np.ndarray:
    """Macro one-vs-rest AUROC of `proba (n, k)` against labels `y` (k = 2: AUROC of the second column).

    `index (B, n)` (resampling indices) or `counts (B, n)` (item multiplicities) evaluates B resamples at once and
    returns `(B,)`; without either, a scalar.
    """
    y = np.asarray(y)
    classes = np.unique(y)
    proba = np.asarray(proba, dtype=np.float64)
    single = index is None and counts is None
    n = len(y)
    if single:
        counts = np.ones((1, n))
    elif counts is None:
        counts = index_counts(index, n)
    if len(classes) == 2:
        scores = proba[:, 1] if proba.ndim == 2 else proba
        result = _pairwise_auroc(y == classes[1], scores, counts)
    else:
        per_class = [_pairwise_auroc(y == c, proba[:, j], counts) for j, c in enumerate(classes)]
        result = np.nanmean(np.stack(per_class), axis=0)
    return float(result[0]) if single else result


def auroc_many(codes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUROC for many label vectors at once (rank formula, ties averaged).

    `codes (P, n)` integer labels 0..k-1 (same class counts in every row, e.g. permutations), `scores (P, n, k)`
    (k = 2: the second column is scored). Returns `(P,)`; equals `auroc` row by row."""
    codes = np.asarray(codes)
    k = scores.shape[2]
    cols = [1] if k == 2 else range(k)
    out = np.zeros(len(codes))
    for c in cols:
        ranks = rankdata(scores[:, :, c], axis=1)
        pos = codes == c
        n_pos = pos.sum(axis=1)
        n_neg = codes.shape[1] - n_pos
        out += ((ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out / len(cols)


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean(classes[np.argmax(proba, axis=1)] == y))


# ------------------------------------------------------------------------------------------------- intervals


def bootstrap_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n)` resampling indices over stimuli, drawn once from `seed`."""
    return np.random.default_rng(derive(seed, "bootstrap")).integers(0, n, size=(n_boot, n))


def bootstrap_counts(groups: np.ndarray | None, n: int, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n)` item multiplicities of a bootstrap over groups (a cluster bootstrap: twins are drawn together);
    without groups, over items."""
    if groups is None:
        return index_counts(bootstrap_index(n, n_boot, seed), n)
    codes = np.unique(groups, return_inverse=True)[1]
    g = codes.max() + 1
    drawn = index_counts(bootstrap_index(g, n_boot, seed), g)
    return drawn[:, codes]


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def repeated_auroc(y, probas, n_boot: int = 1000, seed: int = 0, groups=None, level: float = 0.95,
                   minus=None) -> tuple[float, float, float]:
    """(AUROC, low, high) of repeated cross-validation: `probas (R, n, k)`, one out-of-fold matrix per repeat.

    The point is the mean over repeats. Each bootstrap resample of stimuli (of groups, when given) is scored with one
    repeat drawn at random, so the percentile interval carries both stimulus sampling and refit (split) variance.
    `minus (R, n, k')`: the paired difference AUROC(probas) - AUROC(minus), same resamples and repeats."""
    probas = np.asarray(probas, dtype=np.float64)
    counts = bootstrap_counts(groups, len(y), n_boot, seed)
    pick = np.random.default_rng(derive(seed, "repeat pick")).integers(0, len(probas), size=n_boot)

    def scored(stack):
        point = float(np.mean([auroc(y, p) for p in stack]))
        values = np.empty(n_boot)
        for r in range(len(stack)):
            rows = pick == r
            if rows.any():
                values[rows] = auroc(y, stack[r], counts=counts[rows])
        return point, values

    point, values = scored(probas)
    if minus is not None:
        other, other_values = scored(np.asarray(minus, dtype=np.float64))
        point, values = point - other, values - other_values
    return (point, *_percentiles(values, level))


def bootstrap_auroc(y, proba, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    groups=None) -> tuple[float, float, float]:
    """(AUROC, low, high): percentile interval over stimuli (groups, when given) resampled with replacement."""
    return repeated_auroc(y, np.asarray(proba)[None], n_boot, seed, groups, level)


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-item values, percentile bootstrap over items."""
    values = np.asarray(values, dtype=np.float64)
    means = values[bootstrap_index(len(values), n_boot, seed)].mean(axis=1)
    return (float(values.mean()), *_percentiles(means, level))


def agreement(a, b, n_boot: int = 1000, seed: int = 0, level: float = 0.95, n_perm: int = 1000) -> dict:
    """How often two label sequences `(n,)` agree item by item, against the agreement their marginals give by
    chance. Raw agreement rewards two predictors that both favour one class, so Cohen's kappa
    (p_o - p_e) / (1 - p_e) is reported beside it; intervals: percentile bootstrap over items (p_e recomputed per
    resample); `p`: one-sided permutation p of the agreement with `b` shuffled against `a` (exact under
    independence; the marginals, hence p_e, are kept). Returns agreement, chance, kappa, each with `_low`/`_high`,
    p and n."""
    a, b = np.asarray(a).astype(str), np.asarray(b).astype(str)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"agreement needs two label sequences of one length, got shapes {a.shape} and {b.shape}")
    classes, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    ca, cb, k = codes[:len(a)], codes[len(a):], len(classes)
    index = np.vstack([np.arange(len(a)), bootstrap_index(len(a), n_boot, seed)])    # row 0: the observed items

    def rates(rows):
        same = (ca[rows] == cb[rows]).mean(axis=1)
        chance = sum((ca[rows] == c).mean(axis=1) * (cb[rows] == c).mean(axis=1) for c in range(k))
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.where(chance < 1, (same - chance) / (1 - chance), np.nan)
        return same, chance, kappa

    out = {"n": int(len(a))}
    for name, values in zip(("agreement", "chance", "kappa"), rates(index)):
        low, high = _percentiles(values[1:], level)
        out.update({name: float(values[0]), f"{name}_low": low, f"{name}_high": high})
    shuffled = permutations(len(a), n_perm, seed)[1:]
    out["p"] = permutation_p(out["agreement"], (ca[None, :] == cb[shuffled]).mean(axis=1))
    return out


# ------------------------------------------------------------------------------------------------- nulls


def permutation_p(observed: float, null: np.ndarray) -> float:
    """One-sided p-value of `observed` against a permutation null, counting the observed value (never 0)."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


def permutations(n: int, n_perm: int, seed: int) -> np.ndarray:
    """`(n_perm + 1, n)` label orders drawn from `seed`, row 0 the identity (the observed labels)."""
    rng = np.random.default_rng(derive(seed, "permutations"))
    return np.vstack([np.arange(n), np.argsort(rng.random((n_perm, n)), axis=1)])


def block_permutations(blocks, n: int, n_perm: int, seed: int) -> np.ndarray:
    """`(n_perm + 1, n)` label orders that permute only within each block of indices (row 0 the identity).

    With the test folds of a fixed split as blocks, every fold keeps its label counts under every permutation, so
    the null meets the folds the observed labels were stratified for. A free shuffle against stratified folds
    scores low and inflates false positives (measured on pure noise: 11% at alpha 0.05)."""
    rng = np.random.default_rng(derive(seed, "block permutations"))
    out = np.tile(np.arange(n), (n_perm + 1, 1))
    for block in blocks:
        block = np.asarray(block)
        if len(block) > 1:
            out[1:, block] = block[np.argsort(rng.random((n_perm, len(block))), axis=1)]
    return out


def pair_swaps(pairs: np.ndarray, blocks, n: int, n_perm: int, seed: int) -> np.ndarray:
    """`(n_perm + 1, n)` label orders of a paired design (row 0 the identity): each twin pair `pairs (m, 2)` swaps
    its two labels with probability 1/2, independently; the other items are permuted within `blocks` (their test
    folds, as in `block_permutations`). Near-copy twins stay together, so the null keeps the pairing."""
    out = block_permutations(blocks, n, n_perm, derive(seed, "blocks"))
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    swap = np.random.default_rng(derive(seed, "pair swaps")).random((n_perm, len(pairs))) < 0.5
    out[1:, pairs[:, 0]] = np.where(swap, pairs[:, 1], pairs[:, 0])
    out[1:, pairs[:, 1]] = np.where(swap, pairs[:, 0], pairs[:, 1])
    return out


def ridge_hats(X: np.ndarray, folds, alpha: float = 1.0, X_test: np.ndarray | None = None):
    """Per fold `(train, test, H (n_test, n_train))`: ridge predictions on standardized features are `H @ Y_train`
    (Y centred on the training fold). H depends on X only, so one H serves every permutation of the labels.
    The penalty is `alpha * trace(K) / n_train` (K the training Gram matrix, ~ alpha * d). `X_test` given: one
    "fold", fit on all of X and scored on X_test (transfer)."""
    X = np.asarray(X, dtype=np.float64)
    if X_test is not None:
        folds = [(np.arange(len(X)), None)]
    out = []
    for train, test in folds:
        mu, sd = X[train].mean(axis=0), X[train].std(axis=0)
        sd[sd == 0] = 1.0
        xtr = (X[train] - mu) / sd
        xte = ((X[test] if X_test is None else np.asarray(X_test, dtype=np.float64)) - mu) / sd
        K = xtr @ xtr.T
        lam = alpha * np.trace(K) / len(train)
        H = np.linalg.solve(K + lam * np.eye(len(train)), xtr @ xte.T).T
        out.append((train, test, H))
    return out


def ridge_scores(hats, Y: np.ndarray, n_out: int | None = None) -> np.ndarray:
    """Out-of-fold ridge scores `(P, n_out, k)` for one-hot labels `Y (P, n, k)` (P label vectors at once)."""
    P, n, k = Y.shape
    out = np.zeros((P, n if n_out is None else n_out, k))
    for train, test, H in hats:
        ytr = Y[:, train]
        mean = ytr.mean(axis=1, keepdims=True)
        flat = (ytr - mean).transpose(1, 0, 2).reshape(len(train), P * k)     # one GEMM for every permutation
        pred = (H @ flat).reshape(H.shape[0], P, k).transpose(1, 0, 2) + mean
        if test is None:
            out[:] = pred
        else:
            out[:, test] = pred
    return out


def one_hot(codes: np.ndarray, k: int) -> np.ndarray:
    """`(..., n) -> (..., n, k)` float one-hot."""
    return (np.asarray(codes)[..., None] == np.arange(k)).astype(np.float64)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values, same shape as `p` (any shape; the family is every entry)."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    order = np.argsort(flat)
    m = len(flat)
    ranked = flat[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out.reshape(p.shape)


# ------------------------------------------------------------------------------------------------- causal


def two_way_counts(rows: np.ndarray, cols: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n_pairs)` multiplicities of a two-way cluster bootstrap of pairs `(rows[k], cols[k])` (e.g. target
    and source items): rows and cols are resampled independently and a pair is kept as often as the product of its
    row's and its column's draw counts, so pairs that share an item move together."""
    r = np.unique(rows, return_inverse=True)[1]
    c = np.unique(cols, return_inverse=True)[1]
    rng = np.random.default_rng(derive(seed, "two-way"))
    nr, nc = r.max() + 1, c.max() + 1
    count_r = index_counts(rng.integers(0, nr, size=(n_boot, nr)), nr)
    count_c = index_counts(rng.integers(0, nc, size=(n_boot, nc)), nc)
    return count_r[:, r] * count_c[:, c]


def weighted_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Resampled means `(n_boot, ...)` of `values (n, ...)` under multiplicities `counts (n_boot, n)` (NaN where a
    resample keeps nothing)."""
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (counts @ flat) / total[:, None]
    return out.reshape(len(counts), *np.shape(values)[1:])


def interval(point, resampled: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high): percentile interval of `resampled (n_boot,)` (non-finite resamples dropped)."""
    resampled = np.asarray(resampled, np.float64)
    if not np.isfinite(resampled).any():
        return float(point), np.nan, np.nan
    return (float(point), *_percentiles(resampled, level))


def sign_flips(n: int, n_flip: int, seed: int) -> np.ndarray:
    """`(n_flip, n)` random signs +-1 drawn from `seed`."""
    return np.random.default_rng(derive(seed, "sign flips")).choice(np.array([-1.0, 1.0]), size=(n_flip, n))


def sign_flip_test(diffs: np.ndarray, n_flip: int, seed: int, scale=None) -> tuple[np.ndarray, np.ndarray, float]:
    """One-sided sign-flip test of `diffs (n_units, n_cells)` (paired differences per unit, e.g. ablation minus its
    matched control per stimulus, or patch minus control summed over a target item's pairs), H0: each unit's
    difference is symmetric about 0. The statistic per cell is the sum over units divided by `scale` (scalar or
    `(n_cells,)`, default n_units, i.e. the mean). One flip vector is used in every cell, so the max over cells has
    its null too. Returns (statistic `(n_cells,)`, per-cell p `(n_cells,)`, max-statistic p of the largest cell);
    p-values count the observed statistic (never 0). NaN units (no pair) count as 0."""
    d = np.nan_to_num(np.asarray(diffs, np.float64).reshape(len(diffs), -1))
    scale = len(d) if scale is None else np.asarray(scale, np.float64)
    observed = d.sum(axis=0) / scale
    null = (sign_flips(len(d), n_flip, seed) @ d) / scale
    p_cell = (1 + (null >= observed - 1e-12).sum(axis=0)) / (1 + n_flip)
    p_max = (1 + (null.max(axis=1) >= observed.max() - 1e-12).sum()) / (1 + n_flip)
    return observed, p_cell, float(p_max)
