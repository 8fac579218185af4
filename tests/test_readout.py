"""Answer readout: whole-word token sequences, synonyms by logsumexp, contextual calibration (known answers and a
simulation where the raw readout fails), behavioural accuracy, and one-line errors for bad `answers:` params."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import byte_tokenizer
from emotion_circuits.config import EMOTIONS, ConfigError, parse_section
from emotion_circuits.readout import AnswerSettings, Readout, behaviour, calibrate

REPO = Path(__file__).resolve().parents[1]


def test_words_are_whole_spaced_sequences_by_default_the_names():
    tok = byte_tokenizer(add_bos=False)
    readout = Readout.build(tok, AnswerSettings())
    assert readout.words == EMOTIONS and readout.owner == tuple(range(8))
    for word, seq in zip(readout.words, readout.sequences):
        assert seq == tuple(tok(" " + word, add_special_tokens=False)["input_ids"]) and len(seq) == len(word) + 1
    assert readout.pieces(tok)["rage"] == " +r+a+g+e"


def test_default_params_parse():
    """The shipped params: the empty text is a content-free input (the config's strings are otherwise non-empty)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["answers"]
    answers = parse_section(raw, AnswerSettings, "answers")
    assert answers.content_free == ("N/A", "", "[MASK]") and answers.calibrate and answers.words is None


def test_synonyms_belong_to_their_emotion():
    readout = Readout.build(byte_tokenizer(add_bos=False), AnswerSettings(words={"rage": ("rage", " anger ")}))
    assert readout.words[:2] == ("rage", "anger") and readout.owner[:3] == (0, 0, 1)


def test_combine_is_logsumexp_of_synonyms():
    """Known answer: rage has two words of probability 0.1 and 0.3, so 0.4; grief one word of 0.2."""
    readout = Readout(("rage", "grief"), ("rage", "anger", "grief"), ((1,), (2,), (3,)), (0, 0, 1))
    scores = torch.log(torch.tensor([[0.1, 0.3, 0.2]]))
    torch.testing.assert_close(readout.combine(scores), torch.log(torch.tensor([[0.4, 0.2]])))
    assert list(readout.top1(readout.combine(scores))) == ["rage"]


def test_calibration_with_the_items_own_scores_is_uniform():
    raw = torch.randn(5, 8) * 3 - 10
    for i in range(5):
        torch.testing.assert_close(calibrate(raw[i], raw[i]), torch.full((8,), math.log(1 / 8)))


def test_calibration_removes_a_label_prior_the_raw_readout_cannot():
    """Simulation: every item's raw score is a label prior (one frequent word 4 nats above the rest) plus 1 nat on
    the item's own emotion and noise. The raw argmax answers the frequent word (accuracy ~1/8); calibrated with the
    content-free scores (the prior plus noise) it finds the item's emotion."""
    rng = np.random.default_rng(0)
    prior = np.full(8, -12.0)
    prior[EMOTIONS.index("admiration")] += 4
    truth = rng.integers(0, 8, 400)
    raw = prior + np.eye(8)[truth] * 1.0 + rng.normal(0, 0.2, (400, 8))
    content_free = prior + rng.normal(0, 0.2, (3, 8))
    raw_t, offsets = torch.tensor(raw), torch.tensor(content_free).mean(0)
    raw_acc = (raw_t.argmax(-1).numpy() == truth).mean()
    cal_acc = (calibrate(raw_t, offsets).argmax(-1).numpy() == truth).mean()
    assert raw_acc < 0.2 and cal_acc > 0.95


def test_behaviour_known_answer():
    readout = Readout(EMOTIONS, EMOTIONS, tuple((i,) for i in range(8)), tuple(range(8)))
    truth = np.array(EMOTIONS * 2)
    raw = torch.full((16, 8), -9.0)
    raw[:, 0] = -1.0  # raw: 'rage' everywhere (right on the two rage items)
    offsets = torch.full((8,), -9.0)
    offsets[0] = -1.0
    cal = calibrate(raw, offsets).clone()
    cal[torch.arange(8), torch.arange(8)] += 5.0  # calibrated: right on the first eight, tied (argmax 0) after
    out = behaviour(readout, raw, cal, truth, n_boot=200)
    assert out["raw_accuracy"] == pytest.approx(2 / 16) and out["accuracy"] == pytest.approx(9 / 16)
    assert out["accuracy_low"] < 9 / 16 < out["accuracy_high"] and out["chance"] == 1 / 8
    assert out["answered_raw"]["rage"] == 16 and out["answered_calibrated"]["rage"] == 9
    assert out["answered_calibrated"]["grief"] == 1
    assert out["label_mass"] == pytest.approx(math.exp(-1) + 7 * math.exp(-9), rel=1e-5)


def test_same_tokens_for_two_emotions_is_an_error():
    with pytest.raises(ConfigError, match=r"answers.words: terror: 'rage' has the same tokens as rage: 'rage'"):
        Readout.build(byte_tokenizer(add_bos=False), AnswerSettings(words={"terror": ("rage",)}))


def test_word_that_tokenizes_to_nothing_is_an_error():
    def empty_tokenizer(text, add_special_tokens=True):
        return {"input_ids": [] if "grief" in text else [1, 2]}
    with pytest.raises(ConfigError, match=r"^params.yaml: answers.words.grief: 'grief' gives no token$"):
        Readout.build(empty_tokenizer, AnswerSettings(words={e: (e, e + "2") for e in EMOTIONS}))


@pytest.mark.parametrize("raw, message", [
    ({"content_free": []}, "params.yaml: answers.content_free: empty"),
    ({"content_free": ["N/A", 3]}, r"params.yaml: answers.content_free\[1\]: expected a string"),
    ({"words": {"joy": ["joy"]}}, "params.yaml: answers.words.joy: unknown emotion"),
    ({"words": {"grief": []}}, "params.yaml: answers.words.grief: no words"),
    ({"words": {"rage": ["rage", "  "]}}, r"params.yaml: answers.words.rage\[1\]: empty word"),
    ({"words": {"rage": "rage"}}, "params.yaml: answers.words.rage: expected a list"),
    ({"rage": ["rage"]}, "params.yaml: answers.rage: unknown key"),
])
def test_bad_answers_params(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_section(raw, AnswerSettings, "answers").words_for(EMOTIONS)
    assert "\n" not in str(err.value)


def test_stage_without_content_free_inputs_fails_in_one_line(tmp_path):
    """Checked before any model is loaded: one stderr line naming the key, exit 1."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(answers={"content_free": []}, interventions={}, patching={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, str(REPO / "stages/patching.py"), "--model", "smollm2-135m-instruct",
                          "--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "m"),
                          "--plots", str(tmp_path / "p")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error: params.yaml: answers.content_free: empty")
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_real_tokenizers_split_loathing(embedded_model):
    """' loathing' is [' lo', 'athing'] in both embedded tokenizers: the readout scores both tokens."""
    tok = embedded_model.tokenizer
    readout = Readout.build(tok, AnswerSettings())
    seq = readout.sequences[EMOTIONS.index("loathing")]
    assert [tok.decode([t]) for t in seq] == [" lo", "athing"]
