"""Valence and arousal (issue 25 item 6): the valence ratings in params equal the installed VADER lexicon; planted
structure gives a small exact p; on null data the p with the PC and signs chosen inside each permutation is
calibrated, while choosing them once on the observed data rejects too often (the test that can fail); the exact p
equals a brute-force count on a small case; PCA coordinates; one-line errors for bad params."""
import itertools
import os

import numpy as np
import pytest
import yaml
from scipy.stats import binom

from emotion_circuits.affect import (LEXICON_WORD, VALENCE, AffectSettings, affect, all_orders, components,
                                     correlations, exact_p)
from emotion_circuits.config import EMOTIONS, ConfigError, parse_section


def fixed_choice_p(coords: np.ndarray, ratings: np.ndarray) -> float:
    """The WRONG p: PC and sign chosen once on the observed data (valence only), then the permutations score
    corr(sign * PC, permuted valence) with that choice fixed."""
    r = correlations(coords, ratings[:, :1])[:, 0]
    pc = int(np.abs(r).argmax())
    sign = np.sign(r[pc])
    null = sign * correlations(coords, ratings[:, :1], all_orders(len(coords)))[:, pc, 0]
    return float((null >= abs(r[pc]) - 1e-12).mean())


def vader_lexicon() -> dict[str, float]:
    import vaderSentiment
    path = os.path.join(os.path.dirname(vaderSentiment.__file__), "vader_lexicon.txt")
    with open(path, encoding="utf-8") as f:
        return {line.split("\t")[0]: float(line.split("\t")[1]) for line in f if "\t" in line}


def test_valence_ratings_equal_the_installed_vader_lexicon():
    lexicon = vader_lexicon()
    assert "vigilance" not in lexicon                      # hence the substitution
    for e in EMOTIONS:
        assert VALENCE[e] == lexicon[LEXICON_WORD.get(e, e)], e
    params = yaml.safe_load(open("params.yaml"))["steering_affect"]
    assert parse_section(params, AffectSettings, "steering_affect").valence == VALENCE


def null_case(rng, k: int = 8):
    coords, _ = components(rng.standard_normal((k, 16)))
    return coords, rng.standard_normal((k, 2))


def test_planted_structure_gives_a_small_p():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((8, 32)) * 0.05
    valence, arousal = np.array(list(VALENCE.values())), rng.standard_normal(8)
    d[:, 0] += valence                                      # PC1 carries valence
    d[:, 1] += arousal * 0.8                                # PC2 arousal
    coords, explained = components(d)
    assert explained[0] > explained[1] > 0 and explained.sum() <= 1 + 1e-12
    assert exact_p(coords, valence[:, None]) < 0.001
    assert exact_p(coords, np.c_[valence, arousal]) < 0.001
    out, rows = affect(d, EMOTIONS, AffectSettings(arousal=dict(zip(EMOTIONS, arousal)), arousal_source="synthetic"))
    assert out["valence"]["pc"] == 1 and out["valence"]["r"] > 0.95 and out["arousal"]["pc"] == 2
    assert out["joint"]["valence_pc"] == 1 and out["joint"]["p"] < 0.001
    assert [r["emotion"] for r in rows] == list(EMOTIONS) and rows[0]["valence"] == VALENCE[EMOTIONS[0]]


def test_null_p_is_calibrated_and_the_fixed_choice_p_rejects_too_often():
    rng = np.random.default_rng(1)
    n_sim = 400
    right, joint, wrong = [], [], []
    for _ in range(n_sim):
        coords, ratings = null_case(rng)
        right.append(exact_p(coords, ratings[:, :1]) <= 0.05)
        joint.append(exact_p(coords, ratings) <= 0.05)
        wrong.append(fixed_choice_p(coords, ratings) <= 0.05)
    low, high = binom.ppf([0.005, 0.995], n_sim, 0.05) / n_sim          # 99% binomial interval around 5%
    assert low <= np.mean(right) <= high, np.mean(right)
    assert low <= np.mean(joint) <= high, np.mean(joint)
    assert np.mean(wrong) > high, np.mean(wrong)                        # about 4 x 5%: 2 PCs x 2 signs


def brute_force_p(coords: np.ndarray, ratings: np.ndarray) -> float:
    """Loops: every order, every PC assignment and sign, np.corrcoef."""
    def stat(r):
        best = -np.inf
        for assign in itertools.permutations(range(2), r.shape[1]):
            for signs in itertools.product([-1, 1], repeat=r.shape[1]):
                best = max(best, sum(s * np.corrcoef(coords[:, pc], r[:, j])[0, 1]
                                     for j, (pc, s) in enumerate(zip(assign, signs))))
        return best
    observed = stat(ratings)
    orders = list(itertools.permutations(range(len(coords))))
    return sum(stat(ratings[list(o)]) >= observed - 1e-12 for o in orders) / len(orders)


@pytest.mark.parametrize("m", [1, 2])
def test_exact_p_equals_a_brute_force_count(m):
    rng = np.random.default_rng(2)
    for _ in range(3):
        coords, ratings = null_case(rng, k=5)
        ratings = ratings[:, :m]
        ratings[:, 0] += coords[:, 1]                     # some structure, so p is not near 1 every time
        assert exact_p(coords, ratings) == pytest.approx(brute_force_p(coords, ratings), abs=1e-12)


@pytest.mark.parametrize("raw, key", [({"valence": {"rage": 1.0}}, "valence"),
                                      ({"arousal": {e: float(i) for i, e in enumerate(EMOTIONS)}}, "arousal_source"),
                                      ({"valence": {e: 1.0 for e in EMOTIONS}}, "valence"),
                                      ({"valence": {**VALENCE, "rage": "high"}}, "valence.rage"),
                                      ({"bogus": 1}, "bogus")])
def test_bad_params_give_one_line_errors(raw, key):
    with pytest.raises(ConfigError, match=f"steering_affect.{key}") as err:
        parse_section(raw, AffectSettings, "steering_affect")
    assert "\n" not in str(err.value)
