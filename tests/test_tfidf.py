"""The cached TF-IDF baseline equals the plain GridSearchCV pipeline (`probes.tfidf_model`): same features per fold,
same tuned C, same probabilities, for 8 classes and for two, with groups and unseen test words."""
import numpy as np
import pytest

from emotion_circuits import stats
from emotion_circuits.probes import tfidf_model
from emotion_circuits.tfidf import TfidfCounts, TfidfSearch

WORDS = "calm storm bright gloomy quiet loud sharp soft warm cold river stone".split()


def texts_and_labels(k: int, n: int = 48, seed: int = 0):
    """Texts whose label shows in one cue word (often missing), the rest random; twins share a group."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    cue = [f"cue{c}" for c in range(k)]
    texts = [" ".join([*rng.choice(WORDS, 6), cue[c] if rng.random() < 0.6 else rng.choice(WORDS)]) + "."
             for c in y]
    texts[3] = texts[5]                                     # a duplicate text
    return np.array(texts), y, np.arange(n) // 2


@pytest.mark.parametrize("k", [8, 2])
def test_cached_tfidf_search_equals_the_plain_grid_search(k):
    texts, y, groups = texts_and_labels(k)
    folds = stats.splits(y, 3, seed=0, groups=groups)[0]
    counts = TfidfCounts(texts)
    tuned = set()
    for train, test in folds:
        plain = tfidf_model((0.1, 1.0, 10.0), 3, 0).fit(texts[train], y[train], groups=groups[train])
        fast = TfidfSearch(counts, (0.1, 1.0, 10.0), 3, 0).fit(texts[train], y[train], groups=groups[train])
        assert fast.best_C_ == plain.best_params_["logisticregression__C"]
        assert np.abs(fast.predict_proba(texts[test]) - plain.predict_proba(texts[test])).max() < 1e-6
        tuned.add(fast.best_C_)
        union = plain.best_estimator_[0]
        a, b = counts.features(texts[train], texts[test])
        assert np.abs((a - union.transform(texts[train])).toarray()).max() < 1e-12
        assert np.abs((b - union.transform(texts[test])).toarray()).max() < 1e-12
    assert len(tuned) > 1      # the folds tune different C here, so the choice itself is compared

