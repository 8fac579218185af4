"""The stimulus loader: the shipped sets load; each kind of bad line gives one line naming file and line."""
import json
from collections import Counter

import pytest

from emotion_circuits.config import EMOTIONS, load_params
from emotion_circuits.stimuli import StimulusError, load_params_sets, load_sets, load_stimuli

B = {"id": "b-grief-01", "set": "B", "emotion": "grief", "text": "The hospital called at 4 a.m.", "pair": "n-grief-01"}
N = {"id": "n-grief-01", "set": "N", "emotion": "neutral", "text": "The clinic called at 9 a.m.", "pair": "b-grief-01"}


def write(tmp_path, name, *lines):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_shipped_sets_load_with_mutual_pairs_balance_and_domains():
    """DESIGN §2 sizes (at least 16 per emotion in A, 24 in B, one N twin each, 24 in C), balanced emotions, and
    every A/B/N item with a domain, at least three per emotion in B, each N twin in its vignette's domain."""
    sets = load_params_sets(load_params("params.yaml"))
    for name, least in (("A", 16), ("B", 24)):
        counts = Counter(s.emotion for s in sets[name])
        assert set(counts) == set(EMOTIONS) and len(set(counts.values())) == 1 and min(counts.values()) >= least, \
            (name, counts)
    assert len(sets["N"]) == len(sets["B"]) and len(sets["C"]) >= 24
    by_id = {s.id: s for items in sets.values() for s in items}
    assert all(by_id[s.pair].pair == s.id for s in sets["B"])
    assert all(s.domain for name in "ABN" for s in sets[name])
    assert all(by_id[s.pair].domain == s.domain for s in sets["B"])
    for emotion in EMOTIONS:
        assert len({s.domain for s in sets["B"] if s.emotion == emotion}) >= 3, emotion


def test_shipped_b_and_n_follow_the_writing_plan():
    """Issue 23: every writer contributes equally to every emotion, every emotion has at least 4 scripts and no
    script belongs to two emotions, at least 8 of 24 vignettes per emotion are scenes (8-12 sentences), and each twin
    carries its vignette's writer and script. A set written by one writer per half (v2) fails the first check."""
    from emotion_circuits.style import sentences
    sets = load_params_sets(load_params("params.yaml"))
    by_id = {s.id: s for s in sets["N"]}
    writers = {s.writer for s in sets["B"]}
    assert len(writers) >= 2
    for emotion in EMOTIONS:
        items = [s for s in sets["B"] if s.emotion == emotion]
        per_writer = Counter(s.writer for s in items)
        assert set(per_writer) == writers and len(set(per_writer.values())) == 1, (emotion, per_writer)
        assert len({s.script for s in items}) >= 4, emotion
        assert sum(8 <= len(sentences(s.text)) <= 12 for s in items) >= 8, emotion
    owner = {}
    for s in sets["B"]:
        assert owner.setdefault(s.script, s.emotion) == s.emotion, s.script
        twin = by_id[s.pair]
        assert (twin.writer, twin.script) == (s.writer, s.script), s.id


@pytest.mark.parametrize("line, message", [
    ('{"id": "b-1", "set": "B",', ":2: not valid JSON"),
    ('["a list"]', ":2: expected a JSON object"),
    ({"id": "b-2", "set": "B", "emotion": "grief"}, ":2: missing key 'text'"),
    ({**B, "id": "b-3", "mood": "x"}, ":2: unknown key 'mood'"),
    ({**B, "id": "b-4", "set": "Q"}, ":2: unknown set 'Q'"),
    ({**B, "id": "b-5", "emotion": "joy"}, ":2: unknown emotion 'joy'"),
    ({**B, "id": "b-6", "text": "   "}, ":2: empty text"),
    ({**B, "pair": "n-grief-02"}, ":2: duplicate id 'b-grief-01' (first on line 1)"),
    ({**B, "id": "b-7", "domain": ""}, ":2: empty domain"),
    ({**B, "id": "b-8", "domain": "  "}, ":2: empty domain"),
    ({**B, "id": "b-9", "domain": 3}, ":2: every value must be a string"),
    ({**B, "id": "b-10", "domain": None}, ":2: every value must be a string"),
])
def test_bad_lines(tmp_path, line, message):
    path = write(tmp_path, "set_B.jsonl", B, line)
    with pytest.raises(StimulusError) as err:
        load_stimuli(path, "B")
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)


def test_domain_is_optional_and_carried(tmp_path):
    path = write(tmp_path, "set_B.jsonl", {**B, "domain": "health"}, {**B, "id": "b-grief-02", "pair": "n-grief-02"})
    with_domain, without = load_stimuli(path, "B")
    assert (with_domain.domain, without.domain) == ("health", None)
    assert with_domain.text == B["text"] and with_domain.pair == B["pair"]


def test_empty_file_and_wrong_set(tmp_path):
    with pytest.raises(StimulusError, match="set_B.jsonl: no stimuli"):
        load_stimuli(write(tmp_path, "set_B.jsonl", ""), "B")
    with pytest.raises(StimulusError, match=r"set_N.jsonl:1: set 'B' in the file of set 'N'"):
        load_stimuli(write(tmp_path, "set_N.jsonl", B), "N")


def test_pairs_must_exist_and_be_mutual(tmp_path):
    b = write(tmp_path, "set_B.jsonl", B)
    with pytest.raises(StimulusError, match="set_B.jsonl:1: pair 'n-grief-01' of 'b-grief-01' not found"):
        load_sets({"B": b, "N": write(tmp_path, "set_N.jsonl", {k: v for k, v in N.items() if k != "pair"} | {"id": "n-other"})})
    with pytest.raises(StimulusError, match="does not pair back"):
        load_sets({"B": b, "N": write(tmp_path, "set_N.jsonl", {**N, "pair": "b-grief-09"},
                                      {"id": "b-grief-09", "set": "N", "emotion": "neutral", "text": "x"})})
    assert len(load_sets({"B": b, "N": write(tmp_path, "set_N.jsonl", N)})["N"]) == 1


def test_writer_and_script_are_optional_non_empty_strings(tmp_path):
    path = write(tmp_path, "set_B.jsonl", {**B, "writer": "pass-2", "script": "a death in the family"},
                 {**B, "id": "b-grief-02", "pair": "n-grief-02"})
    first, second = load_stimuli(path, "B")
    assert (first.writer, first.script, second.writer, second.script) == ("pass-2", "a death in the family", None, None)
    for key, value, message in (("writer", " ", "empty writer"), ("script", "", "empty script"),
                                ("script", 4, "every value must be a string")):
        bad = write(tmp_path, "set_B.jsonl", {**B, key: value})
        with pytest.raises(StimulusError, match=f":1: {message}"):
            load_stimuli(bad, "B")
