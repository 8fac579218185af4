"""Where the extraction position looks: per layer and head, the share of its attention on the stimulus text, on
the template, on the first token (an attention sink, reported apart), and on emotion words the stimuli lexicon finds.
Each share is also reported as a ratio to its uniform expectation, share / (span tokens / attended tokens): 1 when
attention is spread evenly over the prompt whatever the span's length, so texts of different lengths compare fairly
(a raw share grows with the span's length, a share per span token shrinks with it).

The stored attention is `(n_stimuli, n_layers, n_heads, max_tokens)`, prompt order, left padding removed, zero
beyond `n_tokens`; `text_start`/`text_end` give the stimulus span. Token 0, the sink, is counted in neither the
text nor the template, so text + template + sink is the whole row (1 for a softmax over the prompt).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .config import ConfigError
from .io import DataError, load_npz
from .seeds import derive
from .stats import benjamini_hochberg, bootstrap_index, bootstrap_mean

REQUIRED = ("attention", "tokens", "n_tokens", "text_start", "text_end", "ids", "emotions")
SPACE_MARKERS = ("Ġ", "▁", "Ċ", "ĉ")       # byte-level BPE space / newline / tab, SentencePiece space
# An entry also matches its inflections: "furious" finds "furiously", "rage" finds "raged", "rages".
SUFFIXES = ("", "s", "es", "d", "ed", "ing", "ly", "er", "ers", "est", "ful", "fully", "ness")
_SPECIAL = re.compile(r"^<[^<>]*>$")       # <bos>, <0xE2> byte fallback: not part of any word
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class AttentionSettings:
    """params.yaml `attention:`; `compare` names the two sets whose text share is compared (Set A vs Set B)."""
    prompt: str = "two-shot"
    sets: tuple[str, ...] = ("A", "B")
    compare: tuple[str, ...] = ("A", "B")
    lexicon: str = "stimuli/lexicon.yaml"
    n_boot: int = 1000
    n_perm: int = 1000
    top_heads: int = 5

    def __post_init__(self):
        if len(self.compare) != 2 or not set(self.compare) <= set(self.sets):
            raise ConfigError(f"params.yaml: attention.compare: {list(self.compare)} must be two of attention.sets "
                              f"{list(self.sets)}")
        if self.n_boot < 100:
            raise ConfigError(f"params.yaml: attention.n_boot: {self.n_boot} is too few (at least 100)")
        if self.n_perm < 99:
            raise ConfigError(f"params.yaml: attention.n_perm: {self.n_perm} is too few (at least 99)")
        if self.top_heads < 1:
            raise ConfigError(f"params.yaml: attention.top_heads: {self.top_heads} < 1")


def read_attention(path) -> dict[str, np.ndarray]:
    """One activation file's attention arrays, checked against the contract; a DataError names the file."""
    arrays = load_npz(path, required=REQUIRED)
    att = arrays["attention"].astype(np.float64)
    n_tok, start, end = (arrays[k].astype(int) for k in ("n_tokens", "text_start", "text_end"))
    tokens = arrays["tokens"].astype(str)
    if att.ndim != 4:
        raise DataError(f"{path}: attention has shape {att.shape}, expected (n_stimuli, n_layers, n_heads, max_tokens)")
    n, T = len(att), att.shape[3]
    for name, arr in (("tokens", tokens), ("n_tokens", n_tok), ("text_start", start), ("text_end", end),
                      ("ids", arrays["ids"]), ("emotions", arrays["emotions"])):
        if len(arr) != n:
            raise DataError(f"{path}: {name} has {len(arr)} entries but attention has {n} stimuli")
    if tokens.shape != (n, T):
        raise DataError(f"{path}: tokens has shape {tokens.shape}, expected {(n, T)} like attention")
    if not ((0 < n_tok) & (n_tok <= T)).all() or not ((0 <= start) & (start < end) & (end <= n_tok)).all():
        raise DataError(f"{path}: need 0 <= text_start < text_end <= n_tokens <= max_tokens for every stimulus")
    if not np.isfinite(att).all():
        raise DataError(f"{path}: attention has non-finite values")
    beyond = np.arange(T)[None, :] >= n_tok[:, None]                            # (n, T)
    if np.abs(att * beyond[:, None, None, :]).max(initial=0) > 1e-6:
        raise DataError(f"{path}: attention is not zero beyond n_tokens (is left padding removed?)")
    totals = att.sum(axis=3)
    if np.abs(totals - 1).max() > 0.02:
        raise DataError(f"{path}: attention rows sum to {totals.min():.3f}..{totals.max():.3f}, not 1")
    return {"attention": att, "tokens": tokens, "n_tokens": n_tok, "text_start": start, "text_end": end,
            "ids": arrays["ids"].astype(str), "emotions": arrays["emotions"].astype(str), "path": Path(path)}


# ---------------------------------------------------------------- lexicon


def _strings(node):
    """Every string listed under any key of a nested YAML mapping (scalar values such as descriptions are skipped)."""
    if isinstance(node, dict):
        for value in node.values():
            if isinstance(value, (list, tuple, dict)):
                yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            if isinstance(item, str):
                yield item
            elif isinstance(item, (list, tuple, dict)):
                yield from _strings(item)


def load_lexicon(path) -> tuple[tuple[str, ...], ...]:
    """Emotion-word entries from the stimuli lexicon (emotion -> words, plus `general` and `expressive` lists, any
    nesting), each split into lowercase ASCII words; a trailing `*` is kept as a prefix marker."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: lexicon not found (the stimuli lexicon, params.yaml attention.lexicon)") from None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(raw, dict):   # display cues are behaviour, not emotion words (the screen reads them apart)
        raw = {k: v for k, v in raw.items() if k != "display_cues"}
    entries = set()
    for text in _strings(raw):
        words = _WORD.findall(text.lower())
        if words:
            if text.strip().endswith("*"):
                words[-1] += "*"
            entries.add(tuple(words))
    if not entries:
        raise DataError(f"{path}: no words found (expected lists of words under emotion names, general, expressive)")
    return tuple(sorted(entries))


def _word_matches(word: str, entry: str) -> bool:
    if entry.endswith("*"):
        return word.startswith(entry[:-1])
    return word.startswith(entry) and word[len(entry):] in SUFFIXES


def words_of(tokens, start: int, end: int) -> list[tuple[str, list[int]]]:
    """The words of tokens[start:end] with the token indices each spans. Space markers and any non-letter split
    words; pieces without a marker join the word before them, so a word is matched from its start."""
    text, owner = [], []
    for t in range(start, end):
        tok = tokens[t]
        if _SPECIAL.match(tok):
            tok = " "
        for marker in SPACE_MARKERS:
            tok = tok.replace(marker, " ")
        tok = tok.lower()
        text.append(tok)
        owner.extend([t] * len(tok))
    joined = "".join(text)
    return [(m.group(), sorted(set(owner[m.start():m.end()]))) for m in _WORD.finditer(joined)]


def emotion_word_mask(tokens: np.ndarray, text_start: np.ndarray, text_end: np.ndarray, lexicon) -> np.ndarray:
    """`(n, max_tokens)` bool: tokens of stimulus-text words (or word sequences) that match a lexicon entry."""
    mask = np.zeros(tokens.shape, dtype=bool)
    for i in range(len(tokens)):
        words = words_of(tokens[i], int(text_start[i]), int(text_end[i]))
        for entry in lexicon:
            k = len(entry)
            for j in range(len(words) - k + 1):
                window = words[j:j + k]
                if all(w == e for (w, _), e in zip(window[:-1], entry[:-1])) and _word_matches(window[-1][0], entry[-1]):
                    for _, toks in window:
                        mask[i, toks] = True
    return mask


# ---------------------------------------------------------------- shares


def shares(attention: np.ndarray, n_tokens: np.ndarray, text_start: np.ndarray, text_end: np.ndarray,
           word_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Attention shares `(n, L, H)` of `attention (n, L, H, T)`: `text` (stimulus span, token 0 excluded), `sink`
    (token 0), `template` (every other prompt token), and `emotion_word` (tokens of `word_mask (n, T)`).

    `<span>_ratio` is the share over its uniform expectation, n_span / n_tokens (the extraction position attends to
    the whole prompt), so 1 means no preference; NaN for a stimulus without tokens in the span (no emotion word).
    `emotion_word_uniform` is what the emotion words would get if the text's attention were spread evenly over it."""
    T = attention.shape[3]
    t = np.arange(T)[None, :]
    prompt = t < n_tokens[:, None]
    sink = (t == 0) & prompt
    text = (t >= text_start[:, None]) & (t < text_end[:, None]) & ~sink
    template = prompt & ~text & ~sink
    masks = {"text": text, "sink": sink, "template": template}
    if word_mask is not None:
        masks["emotion_word"] = word_mask & text
    out = {}
    for name, m in masks.items():
        out[name] = np.einsum("ilht,it->ilh", attention, m.astype(np.float64))
        expected = m.sum(axis=1) / n_tokens                                      # (n,) uniform share of the span
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_ratio"] = np.where(expected[:, None, None] > 0, out[name] / expected[:, None, None], np.nan)
    if word_mask is not None:
        frac = masks["emotion_word"].sum(axis=1) / np.maximum(text.sum(axis=1), 1)
        out["emotion_word_uniform"] = out["text"] * frac[:, None, None]
    return out


def compare_sets(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, level: float = 0.95,
                 n_perm: int = 0) -> dict[str, np.ndarray]:
    """Mean of per-stimulus values `a (n_a, L)` minus `b (n_b, L)` per column, with a percentile interval from
    resampling the stimuli of each set independently (the same resamples for every column). With `n_perm`, also a
    two-sided permutation p per column (set labels shuffled over the pooled stimuli, the same shuffles for every
    column), its Benjamini-Hochberg q over the columns, and `p_max`: the p of the largest |difference| against the
    max over columns of the shuffled |differences| (the family-wise p of the column one would report as the best)."""
    ia = bootstrap_index(len(a), n_boot, derive(seed, "first"))
    ib = bootstrap_index(len(b), n_boot, derive(seed, "second"))
    diffs = a[ia].mean(axis=1) - b[ib].mean(axis=1)                               # (n_boot, L)
    tail = (1 - level) / 2 * 100
    diff = a.mean(axis=0) - b.mean(axis=0)
    out = {"diff": diff, "low": np.percentile(diffs, tail, axis=0), "high": np.percentile(diffs, 100 - tail, axis=0)}
    if n_perm:
        pooled, na = np.vstack([a, b]), len(a)
        rng = np.random.default_rng(derive(seed, "permutation"))
        null = np.empty((n_perm, a.shape[1]))
        for r in range(n_perm):
            order = rng.permutation(len(pooled))
            null[r] = pooled[order[:na]].mean(axis=0) - pooled[order[na:]].mean(axis=0)
        observed, null = np.abs(diff), np.abs(null)
        out["p"] = (1 + (null >= observed).sum(axis=0)) / (1 + n_perm)
        out["q_bh"] = benjamini_hochberg(out["p"])
        out["p_max"] = float((1 + (null.max(axis=1) >= observed.max()).sum()) / (1 + n_perm))
    return out


def _ci(values: np.ndarray, n_boot: int, seed: int) -> dict:
    mean, low, high = bootstrap_mean(values, n_boot, seed)
    return {"mean": mean, "low": low, "high": high}


def summarize_set(sh: dict[str, np.ndarray], n_text: np.ndarray, n_boot: int, seed: int) -> dict:
    """Headline numbers of one set: shares and their ratios to the uniform expectation (`<span>_ratio`, 1 = no
    preference), averaged over stimuli, layers and heads, each with a bootstrap interval over stimuli; the text ratio
    at its peak layer (mean over heads); and the emotion-word share against the text's even spread (`enrichment`) and
    against the whole prompt's (`ratio`) over the stimuli that contain an emotion word."""
    out = {"n_stimuli": len(n_text), "text_tokens_mean": float(n_text.mean())}
    for name in ("text", "sink", "template"):
        out[f"{name}_share"] = _ci(sh[name].mean(axis=(1, 2)), n_boot, seed)
        out[f"{name}_ratio"] = _ci(sh[f"{name}_ratio"].mean(axis=(1, 2)), n_boot, seed)
    by_layer = sh["text_ratio"].mean(axis=2)                                      # (n, L)
    peak = int(np.argmax(by_layer.mean(axis=0)))
    out["text_ratio_peak"] = {"layer": peak, **_ci(by_layer[:, peak], n_boot, seed)}
    if "emotion_word" in sh:
        has = sh["emotion_word_uniform"].sum(axis=(1, 2)) > 0
        out["stimuli_with_emotion_words"] = int(has.sum())
        if has.any():
            ew, uni = sh["emotion_word"][has].mean(axis=(1, 2)), sh["emotion_word_uniform"][has].mean(axis=(1, 2))
            out["emotion_word_share"] = {**_ci(ew, n_boot, seed), "uniform": float(uni.mean()),
                                         "enrichment": float(ew.mean() / uni.mean()) if uni.mean() > 0 else None}
            out["emotion_word_ratio"] = _ci(sh["emotion_word_ratio"][has].mean(axis=(1, 2)), n_boot, seed)
    return out


def top_heads(sh: dict[str, np.ndarray], n: int) -> dict[str, dict]:
    """The `n` heads `(layer, head)` with the highest mean emotion-word share over stimuli that contain one."""
    has = sh["emotion_word_uniform"].sum(axis=(1, 2)) > 0
    if not has.any():
        return {}
    ew, uni = sh["emotion_word"][has].mean(axis=0), sh["emotion_word_uniform"][has].mean(axis=0)   # (L, H)
    order = np.argsort(ew, axis=None)[::-1][:n]
    result = {}
    for rank, flat in enumerate(order, start=1):
        layer, head = np.unravel_index(flat, ew.shape)
        result[f"top{rank}"] = {"layer": int(layer), "head": int(head), "emotion_word_share": float(ew[layer, head]),
                                "uniform_share": float(uni[layer, head])}
    return result
