"""The probes stage's fast probe equals the plain path (`stats.probe_pipeline`): same row space, same objective and
optimum, same lbfgs iterates, on multi-class, binary, separable, rank-deficient and narrow (d < n) data."""
import numpy as np
import pytest

from emotion_circuits import fastprobe, stats


def data(kind: str, seed: int = 0):
    """(X_train, y_train, X_test): 8, 2 or 3 classes; weak or separable signal; full rank, rank 13 of 120 columns (a
    rank-5 block plus the class shifts), or d < n."""
    rng = np.random.default_rng(seed)
    k = {"binary": 2, "narrow": 3}.get(kind, 8)
    n, d = (48, 6) if kind == "narrow" else (64, 120)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d))
    if kind == "rank5":
        X = rng.normal(size=(n, 5)) @ rng.normal(size=(5, d))   # rank 5 before the class shifts
    shift = 6.0 if kind == "separable" else 0.8
    X[:, :k] += shift * np.eye(k)[y]
    X[:, -1] = 3.0                                            # a constant feature (scale 0 after standardizing)
    return X[:40], y[:40], X[40:]


KINDS = ["weak", "binary", "separable", "rank5", "narrow"]


@pytest.mark.parametrize("kind", KINDS)
def test_fast_probe_gives_the_plain_probe_s_probabilities(kind):
    X, y, T = data(kind)
    plain = stats.probe_pipeline(1.0).fit(X, y)
    fast = fastprobe.probe_pipeline(1.0).fit(X, y)
    assert np.abs(fast.predict_proba(T) - plain.predict_proba(T)).max() < 1e-6
    assert (fast.predict(T) == plain.predict(T)).all()
    assert fast[-1].n_iter_[0] == plain[-1].n_iter_[0]          # the same lbfgs iterates: it stops where sklearn stops
    assert fast[1].components_.shape == plain[1].components_.shape


@pytest.mark.parametrize("kind", KINDS)
def test_fast_probe_reaches_the_same_optimum(kind):
    """Solved tightly, both paths give the exact optimum: the objective (penalty, unpenalized intercept, binomial for
    two classes) is scikit-learn's, not merely close to its iterates."""
    X, y, T = data(kind, seed=1)
    plain = stats.probe_pipeline(1.0, max_iter=50000).set_params(logisticregression__tol=1e-10).fit(X, y)
    fast = fastprobe.probe_pipeline(1.0, max_iter=50000).set_params(logisticlbfgs__tol=1e-10).fit(X, y)
    assert np.abs(fast.predict_proba(T) - plain.predict_proba(T)).max() < 1e-6


def test_gram_row_space_spans_the_svd_row_space():
    for kind in KINDS:
        X = stats.probe_pipeline()[0].fit_transform(data(kind)[0])
        svd, gram = stats.RowSpace().fit(X).components_, fastprobe.GramRowSpace().fit(X).components_
        assert svd.shape == gram.shape
        assert np.allclose(svd @ svd.T, gram @ gram.T, atol=1e-8)      # the same projector onto the row space
        assert np.allclose(gram.T @ gram, np.eye(gram.shape[1]), atol=1e-8)
    zero = fastprobe.GramRowSpace().fit(np.zeros((5, 4)))
    assert zero.transform(np.ones((2, 4))).shape == (2, 1)


def test_logistic_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        fastprobe.LogisticLBFGS().fit(np.ones((4, 2)), np.zeros(4))


@pytest.mark.parametrize("k", [8, 2])
def test_batched_ridge_layer_aurocs_equal_the_per_layer_ridge(k):
    """The nested estimate's inner layer choice: one batched call gives every layer's ridge AUROC as the per-layer
    `stats` path does (so the same layer is chosen)."""
    rng = np.random.default_rng(3)
    n, n_layers, d = 60, 6, 40
    y = np.arange(n) % k
    X = rng.normal(size=(n, n_layers, d))
    X[:, :, :k] += np.linspace(0, 1.5, n_layers)[None, :, None] * np.eye(k)[y][:, None, :]
    X[:, :, -1] = 1.0                                          # a constant feature: scale 0 -> 1, as in ridge_hats
    folds = stats.splits(y, 3, seed=0, groups=np.arange(n) // 2)[0]
    plain = [stats.auroc_many(y[None], stats.ridge_scores(stats.ridge_hats(X[:, layer], folds, 0.7),
                                                          stats.one_hot(y, k)[None]))[0] for layer in range(n_layers)]
    fast = fastprobe.ridge_layer_aurocs(X, y, folds, 0.7)
    assert np.allclose(fast, plain, atol=1e-12)
    assert np.argmax(fast) == np.argmax(plain) and len(set(np.round(plain, 6))) > 1
