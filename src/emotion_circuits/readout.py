"""The model's answer: a distribution over the eight emotions from the next-token logits at the extraction position.

Each emotion owns the first token of each of its answer words (params.yaml `answers:`) written with a leading space
(after "Answer:" the answer starts with one), and the bare word where it is one whole token (a bare fragment such as
'g' of 'grief' says nothing about the word). Its probability is the mass on its tokens, renormalised over all answer tokens; the full-vocabulary
partition function cancels in that ratio, so the output layer can be restricted to the answer tokens' rows
(`Readout.token_ids`) wherever only the distribution is needed. `answer_mass` (which does need the full vocabulary)
says how much of the model's next-token probability falls on answer tokens at all.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import stats
from .config import EMOTIONS, ConfigError


@dataclass(frozen=True)
class AnswerWords:
    """params.yaml `answers:`: the words that count as answering each emotion (at least one per emotion)."""
    rage: tuple[str, ...] = ()
    grief: tuple[str, ...] = ()
    terror: tuple[str, ...] = ()
    ecstasy: tuple[str, ...] = ()
    loathing: tuple[str, ...] = ()
    amazement: tuple[str, ...] = ()
    admiration: tuple[str, ...] = ()
    vigilance: tuple[str, ...] = ()

    def __post_init__(self):
        for emotion in EMOTIONS:
            words = getattr(self, emotion)
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ConfigError(f"params.yaml: answers.{emotion}: no answer words (give a list of at least one word)")

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Readout:
    """Answer tokens grouped by emotion. token_ids `(n_tokens,)` vocabulary rows; owner `(n_tokens,)` emotion index."""
    emotions: tuple[str, ...]
    token_ids: tuple[int, ...]
    owner: tuple[int, ...]
    tokens: tuple[str, ...]

    @staticmethod
    def build(tokenizer, answers, emotions: tuple[str, ...] = EMOTIONS) -> "Readout":
        """First token of each word with a leading space (a whitespace-only token is skipped), and the bare word if
        it is a single token; deduplicated. A token claimed by two emotions is a ConfigError naming both."""
        answers = answers.as_dict() if isinstance(answers, AnswerWords) else dict(answers)
        claimed: dict[int, tuple[str, str]] = {}
        ids, owner = [], []
        for index, emotion in enumerate(emotions):
            words = answers.get(emotion) or ()
            if not words:
                raise ConfigError(f"params.yaml: answers.{emotion}: no answer words (give a list of at least one word)")
            found = 0
            for word in words:
                word = word.strip()
                spaced = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                bare = tokenizer(word, add_special_tokens=False)["input_ids"]
                tokens = [next((t for t in spaced if tokenizer.decode([t]).strip()), None)]
                tokens += bare if len(bare) == 1 else []
                for token, variant in zip(tokens, (" " + word, word)):
                    if token is None:
                        continue
                    if token in claimed and claimed[token][0] != emotion:
                        other, other_word = claimed[token]
                        raise ConfigError(
                            f"params.yaml: answers: token {tokenizer.decode([token])!r} starts both {other}: "
                            f"{other_word!r} and {emotion}: {variant.strip()!r}; drop one of the words")
                    if token not in claimed:
                        claimed[token] = (emotion, variant.strip())
                        ids.append(token)
                        owner.append(index)
                        found += 1
            if not found:
                raise ConfigError(f"params.yaml: answers.{emotion}: no word gives a token")
        return Readout(emotions=tuple(emotions), token_ids=tuple(ids), owner=tuple(owner),
                       tokens=tuple(tokenizer.decode([t]) for t in ids))

    def by_emotion(self) -> dict[str, str]:
        """{emotion: its answer tokens joined by '|'}, to print beside the results."""
        return {e: "|".join(t for t, o in zip(self.tokens, self.owner) if o == i) for i, e in enumerate(self.emotions)}

    def _member(self, device) -> torch.Tensor:
        """`(n_emotions, n_tokens)` True where the token belongs to the emotion."""
        owner = torch.tensor(self.owner, device=device)
        return owner[None, :] == torch.arange(len(self.emotions), device=device)[:, None]

    def log_probs(self, answer_logits: torch.Tensor) -> torch.Tensor:
        """`(..., n_tokens)` logits of the answer tokens -> `(..., n_emotions)` log answer distribution (sums to 1)."""
        z = answer_logits.double()
        member = self._member(z.device)
        per = torch.where(member, z[..., None, :], torch.tensor(-torch.inf, dtype=z.dtype, device=z.device))
        per = torch.logsumexp(per, dim=-1)
        return (per - torch.logsumexp(z, dim=-1, keepdim=True)).float()

    def from_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """`(..., vocab)` -> `(..., n_tokens)` the answer tokens' logits."""
        return logits[..., list(self.token_ids)]

    def answer_mass(self, answer_logits: torch.Tensor, log_norm: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary probability on all answer tokens, given the logsumexp over the vocabulary `log_norm`."""
        return torch.exp(torch.logsumexp(answer_logits.double(), dim=-1) - log_norm.double()).float()

    def top1(self, log_probs: torch.Tensor) -> np.ndarray:
        """`(..., n_emotions)` -> emotion names of the argmax."""
        return np.asarray(self.emotions)[log_probs.argmax(dim=-1).cpu().numpy()]


def behaviour(readout: Readout, log_probs: torch.Tensor, emotions, mass=None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Behavioural accuracy of `(n, n_emotions)` answers against the stimuli's emotions, with a bootstrap interval;
    chance is 1/8. Also the mean probability of the correct emotion and (if given) of the answer tokens at all."""
    emotions = np.asarray(emotions)
    correct = readout.top1(log_probs) == emotions
    index = np.array([readout.emotions.index(e) for e in emotions])
    p_correct = log_probs.exp().cpu().numpy()[np.arange(len(emotions)), index]
    acc, low, high = stats.bootstrap_mean(correct.astype(float), n_boot=n_boot, seed=seed)
    out = {"n": len(emotions), "accuracy": acc, "accuracy_low": low, "accuracy_high": high,
           "chance": 1 / len(readout.emotions), "p_correct": float(p_correct.mean())}
    if mass is not None:
        out["answer_mass"] = float(np.mean(np.asarray(mass)))
    counts = dict(zip(*np.unique(readout.top1(log_probs), return_counts=True)))
    out["answered"] = {e: int(counts.get(e, 0)) for e in readout.emotions}
    return out
