"""The tuned TF-IDF baseline, computed once per text instead of once per fit.

`probes.tfidf_model` (kept as the plain path) is a GridSearchCV over C of word (1-2) and character (2-5, within
words) TF-IDF n-grams and logistic regression: every candidate C and every inner split refits both vectorizers, and
the character analyzer is pure Python. `TfidfSearch` computes the same: an analyzer reads one text at a time, so
the n-gram counts of every text are taken once (`TfidfCounts`); a fold's vocabulary (the terms of its training
texts, in the vectorizer's sorted order), idf, sublinear tf and l2 normalization are then exact array operations on
those counts. The inner grouped splits, the scorer (macro one-vs-rest AUROC, `stats.auroc`, equal to `roc_auc_ovr`), the choice (first C of the
highest mean score) and the refit on the whole training fold are GridSearchCV's; the logistic fits are
`fastprobe.LogisticLBFGS` (scikit-learn's lbfgs iterates). Tests compare it with `probes.tfidf_model`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import normalize

from . import stats
from .fastprobe import LogisticLBFGS

ANALYZERS = ({"ngram_range": (1, 2)}, {"analyzer": "char_wb", "ngram_range": (2, 5)})  # TfidfVectorizer's defaults


class TfidfCounts:
    """N-gram counts `(n_texts, vocabulary)` of each analyzer over a fixed list of texts, rows looked up by text."""

    def __init__(self, texts):
        unique = sorted(set(map(str, texts)))
        self.row = {t: i for i, t in enumerate(unique)}
        self.counts = [CountVectorizer(**kw).fit_transform(unique).tocsc() for kw in ANALYZERS]

    def features(self, fit_texts, other_texts) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """TF-IDF `(n_fit, V)` and `(n_other, V)` as `TfidfVectorizer(sublinear_tf=True)` per analyzer, fit on
        `fit_texts` and stacked like a FeatureUnion."""
        fit_rows = [self.row[str(t)] for t in fit_texts]
        other_rows = [self.row[str(t)] for t in other_texts]
        fit_blocks, other_blocks = [], []
        for counts in self.counts:
            a = counts[fit_rows]
            df = np.diff(a.indptr)                                    # csc: documents per term
            vocab = np.flatnonzero(df)
            idf = np.log((1 + len(fit_rows)) / (1 + df[vocab])) + 1   # smooth_idf
            for rows, out in ((a, fit_blocks), (counts[other_rows], other_blocks)):
                x = rows[:, vocab].tocsr().astype(np.float64)
                x.sort_indices()
                np.log(x.data, x.data)
                x.data += 1                                           # sublinear tf
                x.data *= idf[x.indices]
                out.append(normalize(x, norm="l2", copy=False) if x.shape[0] else x)
        return sp.hstack(fit_blocks, format="csr"), sp.hstack(other_blocks, format="csr")


class TfidfSearch(ClassifierMixin, BaseEstimator):
    """`probes.tfidf_model(grid, folds, seed)` on cached counts: C tuned by an inner grouped CV inside the training
    texts (`fit(texts, y, groups=...)`), then refit on all of them. `texts` must be among `counts`' texts."""

    def __init__(self, counts: TfidfCounts, grid=(0.1, 1.0, 10.0), folds: int = 3, seed: int = 0):
        self.counts, self.grid, self.folds, self.seed = counts, grid, folds, seed

    def fit(self, texts, y, groups=None):
        texts, y = np.asarray(texts), np.asarray(y)
        cv = StratifiedGroupKFold(n_splits=self.folds, shuffle=True, random_state=self.seed)
        scores = np.full((self.folds, len(self.grid)), np.nan)
        for s, (train, test) in enumerate(cv.split(texts, y, groups)):
            a, b = self.counts.features(texts[train], texts[test])
            for j, C in enumerate(self.grid):
                proba = LogisticLBFGS(C=C).fit(a, y[train]).predict_proba(b)
                if np.array_equal(np.unique(y[test]), np.unique(y[train])):   # else roc_auc_ovr fails: error_score
                    scores[s, j] = stats.auroc(y[test], proba)                 # roc_auc_ovr (macro), within 1e-12
        mean = np.mean(scores, axis=0)
        self.best_C_ = self.grid[int(np.argmax(np.where(np.isnan(mean), -np.inf, mean)))]
        self.texts_ = texts
        a, _ = self.counts.features(texts, texts[:0])
        self.model_ = LogisticLBFGS(C=self.best_C_).fit(a, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, texts):
        _, b = self.counts.features(self.texts_, texts)
        return self.model_.predict_proba(b)
