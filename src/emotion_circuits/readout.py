"""The model's answer: whole-word scores of the eight emotion labels after the prompt, and contextual calibration.

An emotion's raw score is log P(all tokens of its label word | prompt), teacher-forced, the word written with a
leading space (after "Answer:" the answer starts with one): ' loathing' is [' lo', 'athing'] in both embedded
tokenizers, so a first fragment alone would score ' lo', one of the commonest tokens. By default each emotion has
one word, its own name as the prompt lists it; params `answers.words` may give synonyms, whose whole-word
probabilities add up (logsumexp of their log-probabilities). The engine (`interventions.Engine`) computes the
per-word log-probabilities; `Readout.combine` turns them into per-emotion raw scores.

Contextual calibration (Zhao et al. 2021): the raw scores carry each label's prior in this template (a frequent
word scores high whatever the text). The offsets are the mean raw scores over content-free inputs ("N/A", "",
"[MASK]") put in the template in place of the stimulus; calibrated = log_softmax(raw - offsets) over the eight.
With `calibrate: false` the offsets are 0 (the raw scores renormalised over the eight).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import stats
from .config import EMOTIONS, ConfigError


@dataclass(frozen=True)
class AnswerSettings:
    """params.yaml `answers:`. words: {emotion: [word, ...]} (null, or an emotion left out: its own name);
    content_free: texts that replace the stimulus to measure the calibration offsets; calibrate: false to skip it."""
    words: dict[str, tuple[str, ...]] | None = None
    content_free: tuple[object, ...] = ("N/A", "", "[MASK]")  # strings; the empty text is one of them
    calibrate: bool = True

    def __post_init__(self):
        if not self.content_free:
            raise ConfigError("params.yaml: answers.content_free: empty (give at least one content-free text, "
                              "e.g. \"N/A\")")
        for i, text in enumerate(self.content_free):
            if not isinstance(text, str):
                raise ConfigError(f"params.yaml: answers.content_free[{i}]: expected a string, got {text!r}")

    def words_for(self, emotions=EMOTIONS) -> dict[str, tuple[str, ...]]:
        """{emotion: its stripped words}; unknown emotions, empty lists and empty words are ConfigErrors."""
        given = self.words or {}
        unknown = sorted(set(given) - set(emotions))
        if unknown:
            raise ConfigError(f"params.yaml: answers.words.{unknown[0]}: unknown emotion (emotions: {', '.join(emotions)})")
        out = {}
        for emotion in emotions:
            words = given.get(emotion, (emotion,))
            if not words:
                raise ConfigError(f"params.yaml: answers.words.{emotion}: no words (give at least one, or leave the "
                                  "emotion out to use its name)")
            for i, word in enumerate(words):
                if not word.strip():
                    raise ConfigError(f"params.yaml: answers.words.{emotion}[{i}]: empty word")
            out[emotion] = tuple(dict.fromkeys(w.strip() for w in words))
        return out


@dataclass(frozen=True)
class Readout:
    """The scored words. words, sequences (each word's token ids, with its leading space), owner (emotion index of
    each word): `(n_words,)` tuples."""
    emotions: tuple[str, ...]
    words: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    owner: tuple[int, ...]

    @staticmethod
    def build(tokenizer, answers: AnswerSettings | dict, emotions: tuple[str, ...] = EMOTIONS) -> "Readout":
        """Tokenize ' ' + word for every word (no special tokens). A word that gives no token, or the same tokens
        as another emotion's word, is a ConfigError naming the key."""
        words = answers.words_for(emotions) if isinstance(answers, AnswerSettings) else dict(answers)
        seen: dict[tuple[int, ...], tuple[str, str]] = {}
        out_words, sequences, owner = [], [], []
        for index, emotion in enumerate(emotions):
            for word in words[emotion]:
                ids = tuple(tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"])
                if not ids:
                    raise ConfigError(f"params.yaml: answers.words.{emotion}: {word!r} gives no token")
                if ids in seen and seen[ids][0] != emotion:
                    raise ConfigError(f"params.yaml: answers.words: {emotion}: {word!r} has the same tokens as "
                                      f"{seen[ids][0]}: {seen[ids][1]!r}; drop one")
                if ids not in seen:
                    seen[ids] = (emotion, word)
                    out_words.append(word)
                    sequences.append(ids)
                    owner.append(index)
        return Readout(tuple(emotions), tuple(out_words), tuple(sequences), tuple(owner))

    def pieces(self, tokenizer) -> dict[str, str]:
        """{emotion: its words as token pieces, e.g. ' lo+athing'}, to print beside the results."""
        out = {e: [] for e in self.emotions}
        for seq, o in zip(self.sequences, self.owner):
            out[self.emotions[o]].append("+".join(tokenizer.decode([t]) for t in seq))
        return {e: "|".join(v) for e, v in out.items()}

    def combine(self, word_scores: torch.Tensor) -> torch.Tensor:
        """`(..., n_words)` whole-word log-probabilities -> `(..., n_emotions)` raw scores (logsumexp of synonyms)."""
        z = word_scores.double()
        owner = torch.tensor(self.owner, device=z.device)
        member = owner[None, :] == torch.arange(len(self.emotions), device=z.device)[:, None]
        per = torch.where(member, z[..., None, :], torch.tensor(-torch.inf, dtype=z.dtype, device=z.device))
        return torch.logsumexp(per, dim=-1).float()

    def top1(self, scores: torch.Tensor) -> np.ndarray:
        """`(..., n_emotions)` -> emotion names of the argmax."""
        return np.asarray(self.emotions)[scores.argmax(dim=-1).cpu().numpy()]


def calibrate(raw: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`(..., n_emotions)` raw scores minus `(n_emotions,)` offsets, log-softmaxed over the emotions."""
    return torch.log_softmax(raw.double() - offsets.double(), dim=-1).float()


def behaviour(readout: Readout, raw: torch.Tensor, calibrated: torch.Tensor, emotions, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Accuracy (top-1 equals the stimulus's emotion) of the raw and the calibrated `(n, n_emotions)` scores, each
    with a bootstrap 95% interval over stimuli (chance 1/8); answer histograms; the mean calibrated probability of
    the correct emotion; label_mass: the mean full-vocabulary probability that the answer is one of the words."""
    emotions = np.asarray(emotions)
    index = np.array([readout.emotions.index(e) for e in emotions])
    out = {"n": len(emotions), "chance": 1 / len(readout.emotions)}
    for name, scores in (("raw", raw), ("calibrated", calibrated)):
        top1 = readout.top1(scores)
        acc, low, high = stats.bootstrap_mean((top1 == emotions).astype(float), n_boot=n_boot, seed=seed)
        prefix = "" if name == "calibrated" else "raw_"
        out.update({f"{prefix}accuracy": acc, f"{prefix}accuracy_low": low, f"{prefix}accuracy_high": high})
        counts = dict(zip(*np.unique(top1, return_counts=True)))
        out[f"answered_{name}"] = {e: int(counts.get(e, 0)) for e in readout.emotions}
    out["p_correct"] = float(calibrated.double().exp().cpu().numpy()[np.arange(len(emotions)), index].mean())
    out["label_mass"] = float(torch.logsumexp(raw.double(), dim=-1).exp().mean())
    return out
