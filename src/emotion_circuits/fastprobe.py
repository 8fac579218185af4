"""The probes stage's probe: the model, objective and solver of `stats.probe_pipeline`, at a fraction of its cost.

`stats.probe_pipeline` (StandardScaler, `stats.RowSpace` by SVD, scikit-learn's lbfgs LogisticRegression) is the
plain path. `probe_pipeline` here computes the same thing:
- `GramRowSpace` takes the row space from the eigendecomposition of the smaller Gram matrix (X X^T when n < d): its
  eigenvectors are X's singular vectors, so the coordinates are the SVD's up to sign and order, at ~1/4 the cost.
- `LogisticLBFGS` hands scipy's L-BFGS-B the objective scikit-learn's lbfgs solver minimizes (mean log loss +
  ||W||^2 / (2 C n), intercept unpenalized; binomial for two classes, multinomial otherwise) from the same start with
  the same options (gtol `tol`, maxls 50, ftol 64 eps), without scikit-learn's per-call validation and loss
  objects. The iterates are the same up to rounding (L-BFGS is invariant to the order and signs of coordinates),
  so it stops where scikit-learn stops: out-of-fold probabilities agree with the plain path within 1e-6 (the
  tests), far inside the plain path's own distance from the exact optimum (~1e-2 at tol 1e-4 on the real sets).
Bench: bench/bench_probes.py prints the ratio to the plain path.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .stats import auroc_many


class GramRowSpace(BaseEstimator, TransformerMixin):
    """`stats.RowSpace` from the eigendecomposition of the smaller Gram matrix: `(n, d) -> (n, rank)`.

    X X^T = U S^2 U^T gives the right singular vectors as X^T U / S (X^T X gives them directly when d <= n). Kept:
    S^2 > 1e-10 S_max^2 (the Gram matrix resolves S^2 only to ~n eps S_max^2; the null directions of centring sit
    there, and a direction this weak is one lbfgs at tol 1e-4 does not move along)."""

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        wide = n < d
        lam, vec = np.linalg.eigh(X @ X.T if wide else X.T @ X)
        lam, vec = lam[::-1], vec[:, ::-1]                     # descending, as the SVD orders them
        if not lam[0] > 0:                                     # constant X: one (zero) coordinate
            self.components_ = np.eye(d, 1)
            return self
        keep = lam > lam[0] * 1e-10
        self.components_ = X.T @ (vec[:, keep] / np.sqrt(lam[keep])) if wide else vec[:, keep]
        return self

    def transform(self, X):
        return np.asarray(X, dtype=np.float64) @ self.components_


def lbfgsb(objective, x0: np.ndarray, maxiter: int, gtol: float, ftol: float, maxls: int = 50, m: int = 10,
           maxfun: int = 15000) -> tuple[np.ndarray, int, bool]:
    """`scipy.optimize.minimize(objective, x0, method="L-BFGS-B", jac=True)` without bounds: the same driver loop
    around scipy's own L-BFGS-B routine (`_lbfgsb.setulb`, scipy 1.17), without the per-evaluation wrapper (a copy,
    a comparison and a result object per step, ~1/3 of a small fit). Returns (x, iterations, converged)."""
    from scipy.optimize import _lbfgsb

    n = len(x0)
    x = np.array(x0, dtype=np.float64)
    f, g = np.array(0.0), np.zeros(n)
    low, high, nbd = np.zeros(n), np.zeros(n), np.zeros(n, np.int32)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m)
    iwa, task, ln_task = np.zeros(3 * n, np.int32), np.zeros(2, np.int32), np.zeros(2, np.int32)
    lsave, isave, dsave = np.zeros(4, np.int32), np.zeros(44, np.int32), np.zeros(29)
    nit = nfev = 0
    while True:
        _lbfgsb.setulb(m, x, low, high, nbd, f, g, ftol / np.finfo(float).eps, gtol, wa, iwa, task, lsave, isave,
                       dsave, maxls, ln_task)
        if task[0] == 3:                                   # FG: evaluate at x
            f, g = objective(x.copy())
            g = np.asarray(g, dtype=np.float64)
            nfev += 1
        elif task[0] == 1:                                 # NEW_X: one iteration done
            nit += 1
            if nit >= maxiter or nfev > maxfun:
                task[0], task[1] = 5, 504
        else:
            return x, nit, bool(task[0] == 4)


class LogisticLBFGS(ClassifierMixin, BaseEstimator):
    """L2 logistic regression with an intercept, exactly scikit-learn's `LogisticRegression(C, max_iter, tol)` with
    solver lbfgs: same objective, start (zeros), parameter layout and L-BFGS-B options. `X (n, d)` dense or sparse."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-4):
        self.C, self.max_iter, self.tol = C, max_iter, tol

    def fit(self, X, y):
        X = X.astype(np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        self.classes_, codes = np.unique(np.asarray(y), return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"LogisticLBFGS needs at least 2 classes in the training labels, got {k}")
        n, d = X.shape
        l2 = 1.0 / (self.C * n)
        rows = np.arange(n)

        if k == 2:
            t = codes.astype(np.float64)

            def objective(w):
                raw = X @ w[:d] + w[d]
                g = (expit(raw) - t) / n
                grad = np.empty(d + 1)
                grad[:d] = X.T @ g + l2 * w[:d]
                grad[d] = g.sum()
                return float(np.sum(np.logaddexp(0.0, raw) - t * raw) / n + 0.5 * l2 * (w[:d] @ w[:d])), grad
            size = d + 1
        else:
            def objective(w):
                W = w.reshape(k, d + 1, order="F")            # scikit-learn's layout: the classes of a feature adjacent
                raw = X @ W[:, :d].T + W[:, d]
                top = raw.max(axis=1, keepdims=True)
                e = np.exp(raw - top)
                total = e.sum(axis=1)
                loss = np.sum(np.log(total) + top[:, 0] - raw[rows, codes]) / n
                p = e / total[:, None]
                p[rows, codes] -= 1.0
                p /= n
                grad = np.empty((k, d + 1), order="F")
                grad[:, :d] = (X.T @ p).T + l2 * W[:, :d]
                grad[:, d] = p.sum(axis=0)
                return float(loss + 0.5 * l2 * np.sum(W[:, :d] ** 2)), grad.ravel(order="F")
            size = k * (d + 1)
        x, nit, converged = lbfgsb(objective, np.zeros(size), self.max_iter, self.tol, 64 * np.finfo(float).eps)
        if not converged:
            warnings.warn(f"lbfgs failed to converge after {nit} iterations", ConvergenceWarning, stacklevel=2)
        self.n_iter_ = np.array([min(nit, self.max_iter)])
        W = x.reshape(1, d + 1) if k == 2 else x.reshape(k, d + 1, order="F")
        self.coef_, self.intercept_ = np.array(W[:, :d]), np.array(W[:, d])
        return self

    def decision_function(self, X):
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if len(self.classes_) == 2:
            p = expit(scores)
            return np.stack([1 - p, p], axis=1)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def probe_pipeline(C: float = 1.0, max_iter: int = 2000) -> Pipeline:
    """`stats.probe_pipeline(C, max_iter)` (standardization, row space, L2 logistic regression), fast."""
    return make_pipeline(StandardScaler(), GramRowSpace(), LogisticLBFGS(C=C, max_iter=max_iter))


def ridge_layer_aurocs(X: np.ndarray, codes: np.ndarray, folds, alpha: float = 1.0, k: int | None = None
                       ) -> np.ndarray:
    """`(n_layers,)` out-of-fold ridge AUROC of every layer of `X (n, n_layers, d)` on `folds`: what
    `stats.ridge_hats` + `stats.ridge_scores` + `stats.auroc_many` give layer by layer (standardization on each
    training fold, penalty alpha * trace(K) / n_train), with every layer's Gram matrix and solve in one batched call.
    `codes (n,)` labels 0..k-1 (`k` default: the largest code + 1)."""
    X = np.asarray(X, dtype=np.float64).transpose(1, 0, 2)           # (L, n, d)
    k = int(codes.max()) + 1 if k is None else k
    Y = (codes[:, None] == np.arange(k)).astype(np.float64)
    scores = np.zeros((X.shape[0], X.shape[1], k))
    for train, test in folds:
        xtr, xte = X[:, train], X[:, test]
        mu, sd = xtr.mean(axis=1, keepdims=True), xtr.std(axis=1, keepdims=True)
        sd[sd == 0] = 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
        K = xtr @ xtr.transpose(0, 2, 1)                              # (L, n_train, n_train)
        lam = alpha * np.trace(K, axis1=1, axis2=2) / len(train)
        H = np.linalg.solve(K + lam[:, None, None] * np.eye(len(train)), xtr @ xte.transpose(0, 2, 1))
        ytr = Y[train]
        mean = ytr.mean(axis=0)
        scores[:, test] = H.transpose(0, 2, 1) @ (ytr - mean) + mean
    return auroc_many(np.broadcast_to(codes, scores.shape[:2]), scores)
