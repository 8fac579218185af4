"""Answer readout: which tokens count for each emotion, the answer distribution's known values, behavioural accuracy,
and one-line errors for bad `answers:` params."""
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
from emotion_circuits.readout import AnswerWords, Readout, behaviour

REPO = Path(__file__).resolve().parents[1]
# Distinct first letters, as the byte-level test tokenizer needs: r g t e l a p v (and 'x', a one-byte bare word).
WORDS = {"rage": ["rage", "x"], "grief": ["grief"], "terror": ["terror"], "ecstasy": ["ecstasy"],
         "loathing": ["loathing"], "amazement": ["amazement"], "admiration": ["pride"], "vigilance": ["vigilance"]}


def byte_id(ch: str) -> int:
    tok = byte_tokenizer(add_bos=False)
    (token,) = tok(ch, add_special_tokens=False)["input_ids"]
    return token


def test_tokens_are_first_of_spaced_word_and_single_token_bare_words():
    readout = Readout.build(byte_tokenizer(add_bos=False), WORDS)
    # ' rage' -> 'Ġ','r',...: the whitespace-only piece is skipped; bare 'rage' is four tokens and is not used;
    # bare 'x' is one token and ' x' starts with the same 'x': counted once.
    assert readout.tokens == ("r", "x", "g", "t", "e", "l", "a", "p", "v")
    assert readout.owner == (0, 0, 1, 2, 3, 4, 5, 6, 7)
    assert readout.token_ids[0] == byte_id("r")
    assert readout.by_emotion()["rage"] == "r|x"


@pytest.mark.slow
def test_whole_word_tokens_count_bare_and_spaced(embedded_model):
    """Real tokenizers: ' rage' and 'rage' are single tokens in both embedded models; both count for rage."""
    tok = embedded_model.tokenizer
    readout = Readout.build(tok, {**{e: [e] for e in EMOTIONS}, "rage": ["rage"]})
    rage = {readout.tokens[i] for i, o in enumerate(readout.owner) if o == 0}
    assert rage == {" rage", "rage"}
    assert " grief" in readout.tokens and " terror" in readout.tokens


def test_log_probs_known_values():
    readout = Readout(emotions=("p", "q", "r"), token_ids=(0, 1, 2, 3), owner=(0, 0, 1, 2), tokens=("", "", "", ""))
    # equal logits: each token 1/4, so p (two tokens) 1/2
    lp = readout.log_probs(torch.zeros(4))
    torch.testing.assert_close(lp.exp(), torch.tensor([0.5, 0.25, 0.25]))
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 9.0, 0.0]])
    expected = torch.tensor([[math.e + math.e ** 2, math.e ** 0.5, math.e ** -1.0], [2.0, math.e ** 9, 1.0]])
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(readout.log_probs(logits).exp(), expected)
    assert list(readout.top1(readout.log_probs(logits))) == ["p", "q"]
    # the output layer restricted to the answer rows gives the same distribution as the full vocabulary
    vocab = torch.randn(2, 10)
    restricted = Readout(("p", "q", "r"), (7, 2, 5, 0), (0, 0, 1, 2), ("",) * 4)
    torch.testing.assert_close(restricted.log_probs(restricted.from_vocab(vocab)),
                               restricted.log_probs(vocab[:, [7, 2, 5, 0]]))
    # answer mass: the share of the whole vocabulary's probability on the answer tokens
    mass = restricted.answer_mass(restricted.from_vocab(vocab), torch.logsumexp(vocab, -1))
    torch.testing.assert_close(mass, vocab.softmax(-1)[:, [7, 2, 5, 0]].sum(-1))


def test_behaviour_accuracy_known_answer():
    readout = Readout(emotions=EMOTIONS, token_ids=tuple(range(8)), owner=tuple(range(8)), tokens=("",) * 8)
    truth = np.array(EMOTIONS * 2)
    logits = torch.full((16, 8), -5.0)
    answers = list(range(8)) + [0] * 8  # right on the first eight, 'rage' for all of the second eight
    logits[torch.arange(16), torch.tensor(answers)] = 5.0
    out = behaviour(readout, readout.log_probs(logits), truth, mass=np.full(16, 0.3), n_boot=200)
    assert out["accuracy"] == pytest.approx(9 / 16)  # the second 'rage' is right too
    assert out["accuracy_low"] < 9 / 16 < out["accuracy_high"]
    assert out["chance"] == 1 / 8 and out["answer_mass"] == pytest.approx(0.3)
    assert out["answered"]["rage"] == 9 and out["answered"]["grief"] == 1


def test_token_claimed_by_two_emotions_is_an_error():
    words = {**WORDS, "terror": ["terror", "rattled"]}  # 'r' also starts 'rage'
    with pytest.raises(ConfigError, match=r"answers: token 'r' starts both rage: 'rage' and terror: 'rattled'; drop one"):
        Readout.build(byte_tokenizer(add_bos=False), words)


@pytest.mark.parametrize("raw, message", [
    ({**WORDS, "grief": []}, "params.yaml: answers.grief: no answer words"),
    ({k: v for k, v in WORDS.items() if k != "vigilance"}, "params.yaml: answers.vigilance: no answer words"),
    ({**WORDS, "joy": ["joy"]}, "params.yaml: answers.joy: unknown key"),
    ({**WORDS, "rage": "rage"}, "params.yaml: answers.rage: expected a list"),
    ({**WORDS, "rage": ["  "]}, "params.yaml: answers.rage: no answer words"),
])
def test_bad_answers_params(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_section(raw, AnswerWords, "answers")
    assert "\n" not in str(err.value)


def test_stage_with_an_emotion_without_answer_words_fails_in_one_line(tmp_path):
    """Checked before any model is loaded: one stderr line naming the key, exit 1."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(answers={**WORDS, "grief": []}, interventions={}, patching={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, str(REPO / "stages/patching.py"), "--model", "smollm2-135m-instruct",
                          "--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "m"),
                          "--plots", str(tmp_path / "p")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == "error: params.yaml: answers.grief: no answer words (give a list of at least one word)"
    assert not (tmp_path / "m").exists()
