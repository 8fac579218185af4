"""The stimuli screen: explicit words in Sets B/N/C fail it by id, the shipped sets pass, and the text-only shortcut
baselines give ~0.5 on shuffled labels and ~1 on a planted length cue."""
import functools
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml

from emotion_circuits.config import EMOTIONS, ConfigError, load_params
from emotion_circuits.screen import (ScreenError, ScreenSettings, baseline, explicit_hits, features, load_lexicon,
                                     screen, violations)
from emotion_circuits.stimuli import Stimulus, load_params_sets

LEXICON = load_lexicon("stimuli/lexicon.yaml")


@pytest.fixture(scope="module")
def shipped():
    return load_params_sets(load_params("params.yaml"))


def test_shipped_sets_pass_the_screen(shipped):
    assert violations(shipped, LEXICON, 0.10) == []


def test_planted_emotion_word_in_set_b_is_flagged_by_id(shipped):
    b = list(shipped["B"])
    b[3] = replace(b[3], text=b[3].text + " She was furious.")
    found = violations({**shipped, "B": b}, LEXICON, 0.5)
    assert len(found) == 1 and found[0].startswith(b[3].id) and "'furious'" in found[0]


def test_lexicon_prefixes_do_not_catch_innocent_words():
    assert explicit_hits("He will grind the sober coffee in the yellow mill.", LEXICON) == []
    assert {w for _, w in explicit_hits("They were terrified and sobbing; she felt infuriated.", LEXICON)} == \
        {"terrified", "sobbing", "felt", "infuriated"}
    assert ("admiration", "looked up to") in explicit_hits("Everyone looked up to her.", LEXICON)


def test_pair_out_of_length_is_flagged(shipped):
    n = list(shipped["N"])
    n[0] = replace(n[0], text=n[0].text + " " + " ".join(["word"] * 30))
    found = violations({**shipped, "N": n}, LEXICON, 0.10)
    assert len(found) == 1 and n[0].id in found[0] and "ratio" in found[0]


def _items(k_per_class, length_cue):
    rng = np.random.default_rng(0)
    vocab = ["table", "river", "paper", "window", "stone", "green", "early", "market", "wheel", "cloud"]
    items = []
    for i, emotion in enumerate(EMOTIONS):
        for j in range(k_per_class):
            n = 5 + 4 * i if length_cue else int(rng.integers(5, 30))
            items.append(Stimulus(f"x{i}_{j}", "B", emotion, " ".join(rng.choice(vocab, n))))
    return items


def test_baselines_chance_on_shuffled_labels_and_one_on_a_length_cue():
    settings = ScreenSettings(n_boot=200)
    items = _items(12, length_cue=False)
    y = np.random.default_rng(1).permutation([s.emotion for s in items])
    runs = [baseline(features(items), y, settings, seed=seed) for seed in range(4)]
    for name in ("length", "polarity", "bow"):  # CV on pure noise sits below 0.5 (held-out folds shift the class
        aurocs = [run[name]["auroc"] for run in runs]   # balance: 0.38-0.47 here, bag of words lowest), never above
        assert 0.3 < min(aurocs) and max(aurocs) < 0.55, (name, aurocs)
    cued = _items(12, length_cue=True)
    planted = baseline({"length": features(cued)["length"]}, np.array([s.emotion for s in cued]), settings, seed=0)
    assert planted["length"]["auroc"] > 0.97


def test_stage_fails_in_one_line_naming_the_item_and_writes_nothing(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    lines = open("stimuli/sets/set_C.jsonl").read().splitlines()
    first = json.loads(lines[0])
    first["text"] += " Everyone was terrified."
    (tmp_path / "set_C.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    params["stimuli"]["C"] = str(tmp_path / "set_C.jsonl")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "stages/stimuli.py", "--params", str(tmp_path / "params.yaml"),
                           "--metrics", str(tmp_path / "m"), "--plots", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and first["id"] in err[0] and "'terrified'" in err[0], proc.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def test_bad_screen_setting_is_one_line():
    with pytest.raises(Exception, match="screen.folds"):
        ScreenSettings(folds=1)


def test_counts_per_domain_only_for_sets_with_domains():
    rng = np.random.default_rng(2)
    words = ["table", "river", "paper", "window", "stone", "green", "early", "market"]
    domains = ("work", "home")
    b = [Stimulus(f"b{i}_{j}", "B", e, " ".join(rng.choice(words, 8)), domain=domains[j % 2 if i else 0])
         for i, e in enumerate(EMOTIONS) for j in range(5)]
    c = [Stimulus(f"c{j}", "C", "neutral", " ".join(rng.choice(words, 8))) for j in range(5)]
    metrics = screen({"B": b, "C": c}, LEXICON, ScreenSettings(n_boot=100), seed=0)
    per_domain = metrics["counts"]["B"]["per_domain"]
    assert per_domain[EMOTIONS[0]] == {"work": 5}
    assert all(per_domain[e] == {"home": 2, "work": 3} for e in EMOTIONS[1:])
    assert "per_domain" not in metrics["counts"]["C"]


def _explicit(items, k, words=" Everyone was terrified."):
    items = list(items)
    items[k] = replace(items[k], text=items[k].text + words)
    return items


def test_on_violation_warn_records_and_goes_on_fail_stops_per_set(shipped):
    """The policy is per set: an explicit word in C under warn is recorded (and the screen goes on to its baselines),
    the same word in B under fail stops it; a B/N pair out of length fails if either set fails."""
    quick = functools.partial(ScreenSettings, n_boot=100, folds=2)   # 2 folds: the baselines run, faster
    sets = {**shipped, "C": _explicit(shipped["C"], 0)}
    with pytest.raises(ScreenError, match=shipped["C"][0].id + " 'terrified'"):
        screen(sets, LEXICON, quick(), seed=0)
    metrics = screen(sets, LEXICON, quick(on_violation={"C": "warn", "default": "fail"}), seed=0)
    found = metrics["violations"]
    assert found["on_violation"] == {"A": "fail", "B": "fail", "N": "fail", "C": "warn"}
    assert [(v["check"], v["id"], v["what"], v["policy"]) for v in found["items"]] == \
        [("explicit_words", shipped["C"][0].id, "'terrified'", "warn")]
    assert "set_a_8class" in metrics["baselines"]
    both = {**sets, "B": _explicit(shipped["B"], 2, " She was furious.")}
    with pytest.raises(ScreenError) as err:
        screen(both, LEXICON, quick(on_violation={"C": "warn", "default": "fail"}), seed=0)
    assert shipped["B"][2].id in str(err.value) and shipped["C"][0].id not in str(err.value)
    long_twin = {**shipped, "N": _explicit(shipped["N"], 0, " " + " ".join(["word"] * 30))}
    with pytest.raises(ScreenError, match="ratio"):
        screen(long_twin, LEXICON, quick(on_violation={"N": "warn"}), seed=0)
    pair = screen(long_twin, LEXICON, quick(on_violation="warn"), seed=0)["violations"]["items"]
    assert [(v["check"], v["sets"]) for v in pair] == [("pair_length", ["B", "N"])]


def test_on_violation_settings_are_checked_in_one_line(shipped):
    with pytest.raises(ConfigError, match=r"screen.on_violation: 'maybe' must be warn or fail"):
        ScreenSettings(on_violation="maybe")
    with pytest.raises(ConfigError, match=r"screen.on_violation.C: 'off' must be warn or fail"):
        ScreenSettings(on_violation={"C": "off"})
    with pytest.raises(ConfigError, match=r"screen.on_violation: 'X' is not a stimulus set \(sets: A, B, N, C"):
        screen(shipped, LEXICON, ScreenSettings(on_violation={"X": "warn"}), seed=0)


def test_stage_under_warn_writes_the_violation_with_its_file_and_line(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    lines = open("stimuli/sets/set_C.jsonl").read().splitlines()
    third = json.loads(lines[2])
    third["text"] += " Everyone was terrified."
    (tmp_path / "set_C.jsonl").write_text("\n".join([*lines[:2], json.dumps(third), *lines[3:]]) + "\n")
    params["stimuli"]["C"] = str(tmp_path / "set_C.jsonl")
    params["screen"]["on_violation"] = {"C": "warn", "default": "fail"}
    params["screen"].update(folds=2, n_boot=100)    # the baselines still run, at a test's size
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "stages/stimuli.py", "--params", str(tmp_path / "params.yaml"),
                           "--metrics", str(tmp_path / "m"), "--plots", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "recorded, not failing (screen.on_violation: warn for set C)" in proc.stderr
    found = json.loads((tmp_path / "m" / "stimuli.json").read_text())["violations"]["items"]
    assert [(v["id"], v["where"]) for v in found] == [(third["id"], f"{tmp_path / 'set_C.jsonl'}:3")]
