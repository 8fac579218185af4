"""Where in the text: patch a Set B item's residual h[l] into its neutral twin at one stimulus token position and
see how much of the B item's emotion the twin's answer takes on (issue 22 item 7).

Twins (the `pair` field) share their structure, so positions are mapped by relative position within the stimulus
text span: the span is cut into `bins` equal parts; for bin b the twin's token at relative position (b + 0.5)/bins
of its span receives the B item's h[l] at the same relative position of the B span. Only the chosen positions are
intervened on; the engine recomputes the twin's prompt from that position on (and the label tokens).

Recovery per (layer, bin), with the calibrated scores and e the B item's emotion:
LD = score(e) - mean of the other seven scores; recovery = (mean LD_patched - mean LD_N) / (mean LD_B - mean LD_N)
over pairs (a ratio of means; LD_B from the B item's clean run, LD_N from the twin's), with a cluster bootstrap
over pairs (each pair is one B item and its twin) for the interval; the denominator is reported with its interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import stats
from .config import ConfigError
from .extract import tokenize_prompt
from .readout import calibrate
from .sites import Intervention, Site


@dataclass(frozen=True)
class PositionSettings:
    """params.yaml `positions:`. set / twin_set: the emotion set and its neutral twins (linked by `pair`); layers:
    h layers patched (null: three evenly spaced depths, see default_layers); n_pairs: B items (the first of each emotion in turn);
    bins: relative positions in the stimulus text (one patched token each)."""
    set: str = "B"
    twin_set: str = "N"
    layers: tuple[int, ...] | None = None
    n_pairs: int = 8
    bins: int = 5

    def __post_init__(self):
        if self.n_pairs < 2:
            raise ConfigError("params.yaml: positions.n_pairs: must be at least 2")
        if self.bins < 1:
            raise ConfigError("params.yaml: positions.bins: must be at least 1")


def default_layers(n_layers: int) -> list[int]:
    """Three evenly spaced layers from the first to the last but one (h[L-1] at an earlier token feeds nothing that
    is read: no later layer attends to it)."""
    return sorted({round(x) for x in np.linspace(0, n_layers - 2, 3)})


def choose_pairs(items, twins, emotions, n_pairs: int) -> list[tuple]:
    """(B item, twin) pairs, emotions in turn so that every emotion is represented; a missing twin is an error."""
    by_id = {t.id: t for t in twins}
    queues = {e: [s for s in items if s.emotion == e] for e in emotions}
    out = []
    while len(out) < n_pairs and any(queues.values()):
        for e in emotions:
            if queues[e] and len(out) < n_pairs:
                item = queues[e].pop(0)
                if item.pair not in by_id:
                    raise ConfigError(f"positions: {item.id} has no twin {item.pair!r} in the twin set")
                out.append((item, by_id[item.pair]))
    return out


def _ld(log_probs: torch.Tensor, emotion: int) -> torch.Tensor:
    """`(..., n_emotions)` -> LD `(...)`: the emotion's score minus the mean of the others'."""
    others = torch.cat([log_probs[..., :emotion], log_probs[..., emotion + 1:]], dim=-1)
    return log_probs[..., emotion] - others.mean(-1)


@dataclass
class PositionResult:
    """ld_patched `(n_pairs, n_layers, bins)`; ld_b, ld_n `(n_pairs,)` clean LDs of the B item's emotion."""
    layers: list[int]
    ld_patched: np.ndarray
    ld_b: np.ndarray
    ld_n: np.ndarray


def patch_positions(engine, tokenizer, template: str, pairs, offsets: torch.Tensor, layers, bins: int) -> PositionResult:
    """Run every (pair, layer, bin) patch; offsets `(n_emotions,)` the clean calibration offsets."""
    emotions = list(engine.readout.emotions)
    shape = (len(pairs), len(layers), bins)
    ld_patched = np.zeros(shape)
    ld_b, ld_n = np.zeros(len(pairs)), np.zeros(len(pairs))
    centres = (np.arange(bins) + 0.5) / bins
    for i, (item, twin) in enumerate(tqdm(pairs, desc="positions", leave=False)):
        e = emotions.index(item.emotion)
        pb, pn = (tokenize_prompt(tokenizer, template, s.text) for s in (item, twin))
        b, n = engine.prepare(pb.ids, positions=True), engine.prepare(pn.ids, positions=True)
        ld_b[i], ld_n[i] = (float(_ld(calibrate(x.raw, offsets), e)) for x in (b, n))
        for j, r in enumerate(centres):
            src = pb.text_start + int(r * (pb.text_end - pb.text_start))
            dst = pn.text_start + int(r * (pn.text_end - pn.text_start))
            groups = [[Intervention(Site("h", layer), "set", b.prompt_resid[layer + 1, src], position=dst)]
                      for layer in layers]
            ld_patched[i, :, j] = _ld(calibrate(engine.run(n, groups), offsets), e).numpy()
    return PositionResult(list(layers), ld_patched, ld_b, ld_n)


def recovery(ld_patched, ld_b, ld_n, n_boot: int, seed: int) -> dict:
    """Ratio of means per cell and its cluster-bootstrap interval over pairs: {recovery, low, high `(cells...)`,
    denominator, denominator_low, denominator_high}."""
    ld_patched, ld_b, ld_n = (np.asarray(x, np.float64) for x in (ld_patched, ld_b, ld_n))

    def ratio(index):
        denominator = ld_b[index].mean() - ld_n[index].mean()
        return (ld_patched[index].mean(0) - ld_n[index].mean()) / denominator, denominator

    point, denominator = ratio(np.arange(len(ld_b)))
    boots = [ratio(idx) for idx in stats.bootstrap_index(len(ld_b), n_boot, seed)]
    cells = np.stack([r for r, _ in boots])
    dens = np.array([d for _, d in boots])
    low, high = np.nanpercentile(cells, 2.5, axis=0), np.nanpercentile(cells, 97.5, axis=0)
    return {"recovery": point, "low": low, "high": high, "denominator": float(denominator),
            "denominator_low": float(np.percentile(dens, 2.5)), "denominator_high": float(np.percentile(dens, 97.5))}
