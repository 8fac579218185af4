"""Valence and arousal in the emotion directions (issue 25 item 6): do the first two principal components of the
eight d_e line up with published ratings of the eight emotion words?

At one layer, PCA of the eight unit directions `(8, d)` centred over emotions: each emotion's coordinates on PC1 and
PC2 and their explained variance. PCs have no sign and no name, so the statistic chooses them: with valence only,
r_V = max over PC in {1, 2} and sign of corr(PC, valence) = max |corr|; with arousal too, the assignment of the two PCs
to (valence, arousal) and the signs maximising |r_V| + |r_A|. Eight points: the exact permutation p over all 8! orders
of the ratings (valence and arousal rows move together), with the assignment and signs chosen again inside every
permutation; fixing them on the observed data and reusing them under permutation rejects far too often (shown in
tests/test_affect.py).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .config import EMOTIONS, ConfigError

log = logging.getLogger(__name__)

VALENCE_SOURCE = ("VADER lexicon (Hutto & Gilbert 2014, ICWSM; vaderSentiment/vader_lexicon.txt), mean of 10 human "
                  "ratings on -4..+4; 'vigilance' is not in the lexicon and is read as 'vigilant'")
VALENCE = {"rage": -2.6, "grief": -2.2, "terror": -2.4, "ecstasy": 2.9, "loathing": -2.7, "amazement": 2.5,
           "admiration": 2.5, "vigilance": 0.7}
LEXICON_WORD = {"vigilance": "vigilant"}    # the VADER entry read for an emotion word the lexicon lacks


@dataclass(frozen=True)
class AffectSettings:
    """params.yaml `steering_affect:`. valence / arousal: rating of each of the eight emotion words, with its source
    (arousal null: not available, valence alone is tested)."""
    valence: dict[str, float] = field(default_factory=lambda: dict(VALENCE))
    valence_source: str = VALENCE_SOURCE
    arousal: dict[str, float] | None = None
    arousal_source: str | None = None

    def __post_init__(self):
        for key in ("valence", "arousal"):
            ratings = getattr(self, key)
            if ratings is not None and set(ratings) != set(EMOTIONS):
                missing = sorted(set(EMOTIONS) - set(ratings)) or sorted(set(ratings) - set(EMOTIONS))
                raise ConfigError(f"params.yaml: steering_affect.{key}: must rate exactly the eight emotions "
                                  f"({', '.join(EMOTIONS)}); wrong or missing: {', '.join(missing)}")
            if ratings is not None and np.ptp(list(ratings.values())) == 0:
                raise ConfigError(f"params.yaml: steering_affect.{key}: all ratings are equal (no correlation)")
        if self.arousal is not None and not self.arousal_source:
            raise ConfigError("params.yaml: steering_affect.arousal_source: required with arousal ratings")

    def ratings(self, emotions) -> np.ndarray:
        """`(8, 1)` valence or `(8, 2)` valence and arousal, rows in the order of `emotions`."""
        cols = [self.valence] + ([self.arousal] if self.arousal is not None else [])
        return np.array([[c[e] for c in cols] for e in emotions], np.float64)


def components(directions: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates `(k, n)` of the rows of `directions (k, d)` on the top n PCs, centred over the rows; explained
    variance share `(n,)`)."""
    x = np.asarray(directions, np.float64)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :n] * s[:n], s[:n] ** 2 / (s ** 2).sum()


def _z(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.mean(axis, keepdims=True)
    return x / np.sqrt((x ** 2).mean(axis, keepdims=True))


def statistic(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`corr (..., 2, m)` correlations of PC1/PC2 with m = 1 or 2 ratings -> (statistic `(...)`, choice `(...)`):
    m = 1: max |corr| (choice: the PC index); m = 2: max of |r(PC1,V)| + |r(PC2,A)| and |r(PC2,V)| + |r(PC1,A)|
    (choice 0: PC1 is valence, 1: PC2 is valence). The signs are chosen by the absolute values."""
    a = np.abs(corr)
    if a.shape[-1] == 1:
        return a[..., 0].max(-1), a[..., 0].argmax(-1)
    both = np.stack([a[..., 0, 0] + a[..., 1, 1], a[..., 1, 0] + a[..., 0, 1]], -1)
    return both.max(-1), both.argmax(-1)


@lru_cache(maxsize=4)
def all_orders(n: int) -> np.ndarray:
    """`(n!, n)` every permutation of range(n) (the identity first)."""
    return np.array(list(itertools.permutations(range(n))), np.int8)


def correlations(coords: np.ndarray, ratings: np.ndarray, orders: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlations `(2, m)` of `coords (k, 2)` with `ratings (k, m)`, or `(P, 2, m)` with the ratings'
    rows reordered by each row of `orders (P, k)`."""
    zc, zr = _z(coords, 0), _z(ratings, 0)
    if orders is None:
        return zc.T @ zr / len(zc)
    return np.einsum("kp,nkm->npm", zc, zr[orders]) / len(zc)


def exact_p(coords: np.ndarray, ratings: np.ndarray) -> float:
    """Exact permutation p of the chosen-PC statistic over all k! orders of the ratings' rows, the PC assignment
    and signs chosen inside each permutation (the observed order included, so p >= 1 / k!)."""
    observed, _ = statistic(correlations(coords, ratings))
    null, _ = statistic(correlations(coords, ratings, all_orders(len(coords))))
    return float((null >= observed - 1e-12).mean())


def single(coords: np.ndarray, ratings: np.ndarray, source: str) -> dict:
    """One rating `(k,)`: the PC (1 or 2) and |r| the statistic chooses, the signed r, and the exact p."""
    r = correlations(coords, ratings[:, None])[:, 0]
    pc = int(np.abs(r).argmax())
    return {"pc": pc + 1, "r": float(abs(r[pc])), "signed_r": float(r[pc]), "p": exact_p(coords, ratings[:, None]),
            "source": source}


def affect(directions: np.ndarray, emotions, cfg: AffectSettings) -> tuple[dict, list[dict]]:
    """`directions (8, d)` at one layer -> (metrics: explained variance, coordinates, per rating the chosen PC, r and
    exact p, and with both ratings the joint assignment and its p; rows of steering_affect.csv: emotion, pc1, pc2,
    valence, arousal)."""
    coords, explained = components(directions)
    ratings = cfg.ratings(emotions)
    out = {"explained": [float(v) for v in explained], "n_orders": math.factorial(len(emotions)),
           "coordinates": {e: [float(c) for c in coords[i]] for i, e in enumerate(emotions)},
           "valence": single(coords, ratings[:, 0], cfg.valence_source)}
    if cfg.arousal is None:
        out["arousal"] = {"available": False, "note": "no arousal ratings in params (steering_affect.arousal)"}
    else:
        out["arousal"] = {"available": True, **single(coords, ratings[:, 1], cfg.arousal_source)}
        stat, choice = statistic(correlations(coords, ratings))
        out["joint"] = {"valence_pc": int(choice) + 1, "arousal_pc": 2 - int(choice), "statistic": float(stat),
                        "p": exact_p(coords, ratings)}
    rows = [{"emotion": e, "pc1": coords[i, 0], "pc2": coords[i, 1], "valence": cfg.valence[e],
             "arousal": None if cfg.arousal is None else cfg.arousal[e]} for i, e in enumerate(emotions)]
    log.info("affect: PCs explain %.2f, %.2f; valence on PC%d, |r| %.2f, exact p %.4f", *explained,
             out["valence"]["pc"], out["valence"]["r"], out["valence"]["p"])
    return out, rows
