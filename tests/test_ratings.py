"""Blind ratings: Fleiss' kappa against hand-computed values, the file's one-line errors, and the check that fails a
set with a twin rated emotional (or a vignette read as another emotion) and passes a clean one."""
import json

import numpy as np
import pytest

from emotion_circuits.ratings import RatingsError, fleiss_kappa, load_ratings, summarise
from emotion_circuits.screen import ScreenError, ScreenSettings, load_lexicon, screen
from emotion_circuits.stimuli import Stimulus


def test_fleiss_kappa_matches_hand_computed_examples():
    # 3 items x 3 readers, 2 categories: P_i = 1, 1, 1/3 -> P = 7/9; p = (5/9, 4/9) -> Pe = 41/81;
    # kappa = (7/9 - 41/81) / (1 - 41/81) = 22/40
    assert fleiss_kappa([[3, 0], [0, 3], [2, 1]]) == pytest.approx(0.55)
    # Fleiss (1971) as worked in the Wikipedia article: 10 items, 14 readers, 5 categories, kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
             [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=5e-4)
    assert fleiss_kappa([[3, 0, 0], [0, 3, 0], [0, 0, 3]]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0]])


def test_kappa_is_near_zero_for_random_readings_where_raw_agreement_is_not():
    """Readers who answer at random with skewed shares agree often by chance (the wrong measure: raw agreement);
    kappa corrects for it."""
    rng = np.random.default_rng(0)
    answers = rng.choice(3, size=(400, 3), p=[0.8, 0.1, 0.1])
    counts = np.stack([(answers == c).sum(axis=1) for c in range(3)], axis=1)
    raw = np.mean(((counts ** 2).sum(axis=1) - 3) / 6)
    assert raw > 0.6 and abs(fleiss_kappa(counts)) < 0.05


B = [Stimulus(f"b-grief-{j}", "B", "grief", "x", pair=f"n-grief-{j}") for j in range(3)]
N = [Stimulus(f"n-grief-{j}", "N", "neutral", "x", pair=f"b-grief-{j}") for j in range(3)]


def readings(overrides=None):
    out = {s.id: [(f"r{k}", "grief") for k in range(3)] for s in B}
    out.update({s.id: [(f"r{k}", "none") for k in range(3)] for s in N})
    out.update(overrides or {})
    return out


def test_a_clean_set_passes_and_a_twin_rated_emotional_fails():
    report, failures = summarise(readings(), {"B": B, "N": N})
    assert failures == [] and report["B"]["agreement_with_label"] == 1 and report["N"]["share_none"] == 1
    assert report["B"]["items_passing"] == 3 and report["fleiss_kappa_b_and_n"] == pytest.approx(1.0)
    twin = readings({"n-grief-1": [("r0", "grief"), ("r1", "grief"), ("r2", "none")]})
    _, failures = summarise(twin, {"B": B, "N": N})
    assert failures == ["n-grief-1: 1 of 3 readings 'none', others {'grief': 2}"]
    vignette = readings({"b-grief-2": [("r0", "grief"), ("r1", "rage"), ("r2", "none")]})
    _, failures = summarise(vignette, {"B": B, "N": N})
    assert failures == ["b-grief-2: 1 of 3 readings 'grief', others {'rage': 1, 'none': 1}"]
    partial = {k: v for k, v in readings().items() if k != "b-grief-0"}
    assert summarise(partial, {"B": B, "N": N})[1] == ["b-grief-0: no readings"]
    assert summarise(None, {"B": B})[0]["rated"] is False


def test_screen_fails_in_one_line_naming_the_twin(tmp_path):
    twin = readings({"n-grief-1": [("r0", "grief"), ("r1", "rage"), ("r2", "none")]})
    with pytest.raises(ScreenError, match=r"blind readings: n-grief-1: 1 of 3 readings 'none'"):
        screen({"B": B, "N": N}, load_lexicon("stimuli/lexicon.yaml"), ScreenSettings(n_boot=100), ratings=twin)


@pytest.mark.parametrize("line, message", [
    ("{", ":1: not valid JSON"),
    (json.dumps({"id": "b-grief-0", "rater": "r0"}), ":1: expected an object with exactly the keys"),
    (json.dumps({"id": "b-grief-0", "rater": "", "answer": "grief"}), ":1: every value must be a non-empty string"),
    (json.dumps({"id": "b-x", "rater": "r0", "answer": "grief"}), ":1: id 'b-x' is not a stimulus"),
    (json.dumps({"id": "b-grief-0", "rater": "r0", "answer": "joy"}), ":1: answer 'joy' is not one of"),
    (json.dumps({"id": "b-grief-0", "rater": "r0", "answer": "grief"}) * 0 + "\n".join(
        [json.dumps({"id": "b-grief-0", "rater": "r0", "answer": "grief"})] * 2), ":2: rater 'r0' already read"),
])
def test_bad_ratings_lines_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "ratings.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(RatingsError) as err:
        load_ratings(path, [s.id for s in B + N])
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)


def test_ratings_file_loads_and_absent_means_not_rated(tmp_path):
    assert load_ratings(tmp_path / "none.jsonl", []) is None
    path = tmp_path / "ratings.jsonl"
    path.write_text("\n".join(json.dumps({"id": s.id, "rater": "model-x run 1", "answer": "none"}) for s in N) + "\n")
    assert load_ratings(path, [s.id for s in N]) == {s.id: [("model-x run 1", "none")] for s in N}
