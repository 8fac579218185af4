"""Issue 23 screen checks: the style-only baseline (chance within its permutation band when style is shuffled across
labels, even when words carry the label; near 1 on a planted style cue), the style checks, display cues (matching
and warn/fail policy), word skew, writer/script counts."""
import json

import numpy as np
import pytest

from emotion_circuits import attention
from emotion_circuits.config import EMOTIONS, ConfigError
from emotion_circuits.screen import (DISPLAY_CUES, ScreenError, ScreenSettings, baseline, cue_hits, design_counts,
                                     explicit_hits, features, load_lexicon, screen, word_skew)
from emotion_circuits.stimuli import Stimulus
from emotion_circuits.style import (FEATURE_NAMES, is_present_tense, opening, quote_counts, sentences,
                                    style_checks, style_features)

LEXICON = load_lexicon("stimuli/lexicon.yaml")
CUES = load_lexicon("stimuli/lexicon.yaml", DISPLAY_CUES)
NOUNS = ["table", "river", "paper", "window", "stone", "market", "wheel", "cloud", "garden", "station"]


def styled_text(rng, sentences_n, colon, quote, opener, word=None):
    """A past-tense text of `sentences_n` random sentences; `word` (a label-carrying noun) in every sentence."""
    parts = []
    for j in range(sentences_n):
        ws = list(rng.choice(NOUNS, int(rng.integers(4, 12))))
        if word:
            ws.insert(int(rng.integers(len(ws) + 1)), word)
        parts.append(" ".join(ws) + " was moved")
    text = ". ".join(parts) + "."
    if colon:
        text = text.replace(" was moved", ": it was moved", 1)
    if quote:
        text += ' "It was late," he said.'
    return f"{opener} {text[0].lower()}{text[1:]}"


def make_items(rng, cue: bool, word_cue: bool = False, per: int = 16):
    items = []
    for i, emotion in enumerate(EMOTIONS):
        for j in range(per):
            if cue:   # style tracks emotion: sentence count, colon, quotes and the opener by class
                text = styled_text(rng, 1 + i % 4, i % 2 == 0, i >= 4, ("The", "After", "With", "She")[i % 4])
            else:
                text = styled_text(rng, int(rng.integers(1, 5)), rng.random() < 0.5, rng.random() < 0.5,
                                   str(rng.choice(["The", "After", "With", "She"])),
                                   word=f"thing{i}" if word_cue else None)
            items.append(Stimulus(f"b-{emotion}-{j:02d}", "B", emotion, text))
    return items


def test_style_features_have_no_words_and_read_the_style():
    text = 'After the storm, Ana said: "Go." They went. She is here'
    f = dict(zip(FEATURE_NAMES, style_features([text])[0]))
    assert f["sentences"] == 3 and f["punct_,"] == 1 and f["punct_:"] == 1 and f["quotes_double"] == 2
    assert f["opens_after"] == 1 and f["named_tokens"] == 1 and f["tense_past"] == 2 and f["tense_present"] == 1
    assert style_features(["The dog ran.", "A cat ran."]).shape == (2, len(FEATURE_NAMES))
    assert quote_counts("Tom's dog, the Joneses' cat, 'Come,' she said") == (0, 1)   # apostrophes are not quotes
    assert opening("“Since then,” she said") == "since" and sentences("One. Two! Three?") == ["One", "Two", "Three"]
    assert is_present_tense("She keeps the child in sight and counts them.") and \
        not is_present_tense("She kept the child in sight and counted them.")


def test_style_baseline_sits_in_its_permutation_band_when_style_is_shuffled_and_near_one_when_planted():
    """Words carry the label (a class noun in every sentence) but style does not: the bag of words finds the label,
    the style baseline must not (it would if it leaked word identity); with style planted by class it must."""
    rng = np.random.default_rng(0)
    settings = ScreenSettings(n_boot=100, folds=3)
    items = make_items(rng, cue=False, word_cue=True, per=12)
    y = np.array([s.emotion for s in items])
    feats = features(items, np.zeros((len(items), 4)))
    observed = baseline({"style": feats["style"], "bow": feats["bow"]}, y, settings, seed=0)
    null = [baseline({"style": feats["style"]}, rng.permutation(y), settings, seed=0)["style"]["auroc"]
            for _ in range(19)]
    assert observed["bow"]["auroc"] > 0.95
    assert min(null) <= observed["style"]["auroc"] <= max(null), (observed["style"], min(null), max(null))
    planted = make_items(rng, cue=True, per=12)
    cued = baseline({"style": features(planted, np.zeros((len(planted), 4)))["style"]},
                    np.array([s.emotion for s in planted]), settings, seed=0)
    assert cued["style"]["auroc"] > 0.95


def test_style_checks_count_and_flag_each_rule():
    ok = [(f"x{j}", f"{w} walked home.") for j, w in enumerate(["The", "A", "She", "He", "They", "When"] * 4)]
    report, breaches = style_checks({"grief": ok})
    assert breaches == [] and report["per_emotion"]["grief"]["top_opening_n"] == 4
    _, breaches = style_checks({"grief": ok[:4] * 6})
    assert breaches == ["grief: 6 items same opening ('the'), max 4"]
    colons = [(f"c{j}", f"Day {j}: it rained. He walked home.") for j in range(7)] + \
        [(f"d{j}", f"Then{j} it rained.") for j in range(17)]
    present = [(f"p{j}", "She keeps it and counts it.") for j in range(2)]
    report, breaches = style_checks({"rage": colons, "terror": present + colons[:3]})
    assert report["per_emotion"]["rage"]["colon"] == 7 and "rage: 7 items colon, max 6" in breaches
    assert "terror: 2 items present tense, max 1" in breaches
    assert report["per_emotion"]["terror"]["limits"] == {"colon": 1, "same_opening": 1, "present_tense": 1}
    _, mixed = style_checks({"rage": [("q1", 'He said "no".')], "grief": [("q2", "He said 'no'.")]})
    assert mixed[-1].startswith("quote styles double (1 items) and single (1 items)")


@pytest.mark.parametrize("text, found", [
    ("She was watching the door.", {"watching"}),
    ("She looked at it watchingly.", set()),
    ("The bins smelled of fish; the smell stayed.", {"smelled", "smell"}),
    ("He read it one more time.", {"one more time"}),
    ("He wanted one more.", set()),
    ("The coast was in sight, an insight.", {"in sight"}),
])
def test_display_cue_matching_whole_words_prefixes_and_sequences(text, found):
    assert {w for _, w in explicit_hits(text, CUES)} == found


def test_display_cues_are_not_emotion_words():
    assert DISPLAY_CUES not in LEXICON and set(CUES) == {DISPLAY_CUES}
    assert ("watching",) not in attention.load_lexicon("stimuli/lexicon.yaml")
    assert explicit_hits("She was watching.", LEXICON) == []


def small_sets(cue_text: str | None = None):
    rng = np.random.default_rng(1)
    b = [Stimulus(f"b-{e}-{j}", "B", e, styled_text(rng, 2, False, False, "The"), pair=f"n-{e}-{j}")
         for e in EMOTIONS for j in range(5)]
    n = [Stimulus(s.pair, "N", "neutral", s.text, pair=s.id) for s in b]
    if cue_text:
        n[7] = Stimulus(n[7].id, "N", "neutral", n[7].text + cue_text, pair=n[7].pair)
    return {"B": b, "N": n}


def write_jsonl(path, items):
    path.write_text("\n".join(json.dumps({k: v for k, v in vars(s).items() if v is not None}) for s in items) + "\n")
    return path


def test_display_cue_policy_warn_records_and_fail_names_file_line_and_cue(tmp_path):
    sets = small_sets(" Someone was listening.")
    paths = {"B": write_jsonl(tmp_path / "set_B.jsonl", sets["B"]), "N": write_jsonl(tmp_path / "set_N.jsonl", sets["N"])}
    hits = cue_hits(sets, CUES)
    assert hits == [{"set": "N", "id": sets["N"][7].id, "emotion": sets["B"][7].emotion, "cue": "listening"}]
    with pytest.raises(ScreenError) as err:
        screen(sets, LEXICON, ScreenSettings(n_boot=100, display_cues="fail", pair_length_tolerance=0.5), cues=CUES,
               paths=paths)
    message = str(err.value)
    assert f"set_N.jsonl:8: {sets['N'][7].id} display cue 'listening'" in message and "\n" not in message
    metrics = screen(sets, LEXICON, ScreenSettings(n_boot=100, folds=3, pair_length_tolerance=0.5), cues=CUES,
                     paths=paths)
    cues = metrics["display_cues"]
    assert cues["policy"] == "warn" and cues["n_hits"] == 1 and cues["hits"][0]["where"].endswith("set_N.jsonl:8")
    assert cues["hits_per_emotion"] == {"N": {sets["B"][7].emotion: 1}}
    assert set(metrics["baselines"]) == {"set_b_8class", "b_vs_n"}
    assert all("style" in v for v in metrics["baselines"].values())
    assert metrics["ratings"] == {"rated": False, "note": "not rated (no stimuli/ratings.jsonl)"}


def test_style_policy_fail_names_the_breach():
    sets = small_sets()
    with pytest.raises(ScreenError, match=r"set B rage: 5 items same opening \('the'\), max 1 \(screen.style_checks"):
        screen(sets, LEXICON, ScreenSettings(n_boot=100, style_checks="fail"), cues=CUES)


def test_screen_policies_and_dev_seed_are_validated():
    for key in ("display_cues", "style_checks"):
        with pytest.raises(ConfigError, match=f"screen.{key}"):
            ScreenSettings(**{key: "maybe"})
    with pytest.raises(ConfigError, match="screen.dev_seed"):
        ScreenSettings(seed=3, dev_seed=3)
    with pytest.raises(ConfigError, match="screen.dev_seed"):
        screen(small_sets(), LEXICON, ScreenSettings(dev_seed=0), seed=0)


def test_word_skew_finds_a_non_emotion_giveaway():
    items = [Stimulus(f"g{j}", "B", "grief", f"the chair by the {w}") for j, w in enumerate(NOUNS[:4])] + \
        [Stimulus(f"r{j}", "B", "rage", f"the desk by the {w}") for j, w in enumerate(NOUNS[:4])]
    skew = word_skew(items)
    assert skew["grief"] == {"chair": 4} and skew["rage"] == {"desk": 4}


def test_writer_and_script_counts_and_a_script_under_two_labels():
    b = [Stimulus("b1", "B", "grief", "x", pair="n1", writer="w1", script="a death"),
         Stimulus("b2", "B", "grief", "x", writer="w2", script="a loss of work"),
         Stimulus("b3", "B", "rage", "x", writer="w1", script="a loss of work")]
    n = [Stimulus("n1", "N", "neutral", "x", pair="b1", writer="w1", script="a death")]
    counts, shared = design_counts({"B": b, "N": n})
    assert counts["per_writer"]["B"] == {"grief": {"w1": 1, "w2": 1}, "rage": {"w1": 1}}
    assert counts["per_script"]["N"] == {"grief": {"a death": 1}}
    assert counts["scripts_under_two_labels"] == {"a loss of work": ["grief", "rage"]}
    assert shared == ["script 'a loss of work' under grief, rage"]
    assert design_counts({"B": [Stimulus("b9", "B", "grief", "x")]}) == ({}, [])
