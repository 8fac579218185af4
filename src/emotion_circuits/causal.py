"""Causal experiments on the intervention engine: activation patching, knockout of a / m, single-head ablation.

Every effect is measured on the model's calibrated answer distribution over the eight emotions (`readout`: whole-word
scores after the extraction position, calibrated with the clean content-free offsets by `Clean.calibrate`), against
the unpatched / unablated run of the same stimulus and beside a control (a same-emotion source for patching, a
random direction of the same norm for knockout), with bootstrap 95% intervals over stimuli or pairs.
This module computes per-item arrays and their summaries; `causal_report` turns them into metrics and plot tables.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .extract import build_prompt, tokenize_prompt
from .interventions import Engine, Prepared
from .readout import AnswerSettings, Readout, calibrate
from .sites import KINDS, Intervention, Site

log = logging.getLogger(__name__)


def _check_choices(values, allowed, where: str) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"params.yaml: {where}: {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class InterventionSettings:
    """params.yaml `interventions:` (shared by patching, knockout, heads). batch_size: interventions per batched
    last-token call; skip_lower_layers: start each batch at its lowest intervened layer from the cached h[l-1]."""
    prompt: str = "two-shot"
    batch_size: int = 64
    skip_lower_layers: bool = True
    n_boot: int = 1000

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("params.yaml: interventions.batch_size: must be at least 1")
        if self.n_boot < 100:
            raise ConfigError("params.yaml: interventions.n_boot: must be at least 100")


@dataclass(frozen=True)
class PatchingSettings:
    """params.yaml `patching:`. per_pair: (target, source) stimulus pairs per ordered pair of emotions; layers: null
    for every layer; behaviour_sets: sets on which the model's own accuracy is reported."""
    set: str = "B"
    sites: tuple[str, ...] = KINDS
    layers: tuple[int, ...] | None = None
    per_pair: int = 2
    behaviour_sets: tuple[str, ...] = ("A", "B")

    def __post_init__(self):
        _check_choices(self.sites, KINDS, "patching.sites")
        if self.per_pair < 1:
            raise ConfigError("params.yaml: patching.per_pair: must be at least 1")


@dataclass(frozen=True)
class KnockoutSettings:
    """params.yaml `knockout:`. n_random: random directions (the control) per stimulus, site and layer."""
    set: str = "B"
    sites: tuple[str, ...] = ("a", "m")
    layers: tuple[int, ...] | None = None
    n_random: int = 1

    def __post_init__(self):
        _check_choices(self.sites, ("a", "m"), "knockout.sites")
        if self.n_random < 1:
            raise ConfigError("params.yaml: knockout.n_random: must be at least 1")


@dataclass(frozen=True)
class HeadSettings:
    """params.yaml `heads:`. layers: null for every layer; top: how many ranked heads the metrics list."""
    set: str = "B"
    layers: tuple[int, ...] | None = None
    top: int = 10

    def __post_init__(self):
        if self.top < 1:
            raise ConfigError("params.yaml: heads.top: must be at least 1")


def resolve_layers(layers, n_layers: int, where: str) -> list[int]:
    """The configured layers (None: all), each checked against the model's depth."""
    if layers is None:
        return list(range(n_layers))
    if not layers:
        raise ConfigError(f"params.yaml: {where}: empty list (use null for every layer)")
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"params.yaml: {where}: layer {layer} out of range (the model has layers 0..{n_layers - 1})")
    return sorted(set(layers))


@dataclass
class Clean:
    """Unintervened runs of a set. raw `(n, n_emotions)` whole-word scores; offsets `(n_emotions,)` the mean raw
    scores of the content-free inputs (zeros without calibration); log_probs `(n, n_emotions)` calibrated; top1,
    labels `(n,)` emotion names (top1 of the calibrated scores); prepared: one `Prepared` per stimulus."""
    prepared: list[Prepared]
    raw: torch.Tensor
    offsets: torch.Tensor
    log_probs: torch.Tensor
    top1: np.ndarray
    labels: np.ndarray

    def calibrate(self, raw: torch.Tensor) -> torch.Tensor:
        """`(..., n_emotions)` raw scores (e.g. `Engine.run` under an intervention) -> calibrated log-probs, with
        the clean offsets (never recomputed under an intervention)."""
        return calibrate(raw, self.offsets)


def calibration_offsets(engine: Engine, tokenizer, template: str, answers: AnswerSettings) -> torch.Tensor:
    """`(n_emotions,)` mean raw score of each emotion over the content-free texts in the template (zeros if
    `answers.calibrate` is false)."""
    if not answers.calibrate:
        return torch.zeros(len(engine.readout.emotions))
    raw = [engine.prepare(tokenizer(build_prompt(template, text))["input_ids"]).raw for text in answers.content_free]
    return torch.stack(raw).mean(0)


def clean_runs(engine: Engine, tokenizer, template: str, stimuli, answers: AnswerSettings, keep_cache: bool = True,
               positions: bool = False, desc: str = "clean") -> Clean:
    """The clean run of every stimulus (caches kept unless keep_cache is false; positions: see `Engine.prepare`)
    and the calibrated answers."""
    prepared = []
    for stimulus in tqdm(stimuli, desc=desc, leave=False):
        prep = engine.prepare(tokenize_prompt(tokenizer, template, stimulus.text).ids, positions=positions)
        prepared.append(prep if keep_cache else prep.without_cache())
    raw = torch.stack([p.raw for p in prepared])
    offsets = calibration_offsets(engine, tokenizer, template, answers)
    log_probs = calibrate(raw, offsets)
    return Clean(prepared, raw, offsets, log_probs, engine.readout.top1(log_probs),
                 np.array([s.emotion for s in stimuli]))


def design_pairs(labels: Sequence[str], emotions: Sequence[str], per_pair: int, seed: int):
    """Ordered (target, source) index pairs of different emotions, `per_pair` for each ordered pair of emotions,
    cycling through each emotion's stimuli in a seeded order so that targets and sources spread over the set; and
    for each target its control source: the next stimulus of the same emotion. Returns (pairs `(n_pairs, 2)`,
    control `{target: source}`)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = {e: rng.permutation(np.flatnonzero(labels == e)) for e in emotions}
    thin = [e for e in emotions if len(order[e]) < 2]
    if thin:
        raise ConfigError(f"patching needs at least two stimuli of each emotion; {', '.join(thin)} has fewer")
    next_target = dict.fromkeys(emotions, 0)
    next_source = dict.fromkeys(emotions, 0)
    pairs = []
    for target_emotion in emotions:
        for source_emotion in emotions:
            if source_emotion == target_emotion:
                continue
            for _ in range(per_pair):
                t = order[target_emotion][next_target[target_emotion] % len(order[target_emotion])]
                s = order[source_emotion][next_source[source_emotion] % len(order[source_emotion])]
                next_target[target_emotion] += 1
                next_source[source_emotion] += 1
                pairs.append((int(t), int(s)))
    control = {}
    for t, _ in pairs:
        same = list(order[labels[t]])
        control[t] = int(same[(same.index(t) + 1) % len(same)])
    return np.array(pairs), control


@dataclass
class PatchingResult:
    """Per pair, site and layer `(n_pairs, n_sites, n_layers)`: flip (top-1 becomes the source emotion),
    d_source / d_target (change in log-probability of the source / target emotion), for the patch and the control
    patch; baseline_flip `(n_pairs,)`: the unpatched target already answers the source emotion; source_answered
    `(n_pairs,)`: the source's own clean answer is its emotion (only then can a patch carry that answer over)."""
    sites: list[str]
    layers: list[int]
    pairs: np.ndarray
    flip: np.ndarray
    d_source: np.ndarray
    d_target: np.ndarray
    control_flip: np.ndarray
    control_d_source: np.ndarray
    control_d_target: np.ndarray
    baseline_flip: np.ndarray
    source_answered: np.ndarray


def patching(engine: Engine, readout: Readout, clean: Clean, sites: Sequence[str], layers: Sequence[int],
             per_pair: int, seed: int) -> PatchingResult:
    """Overwrite the target's site at the extraction position with the source's clean value, for every site and
    layer; the source's value comes from its own clean run (read through the same hooks)."""
    emotions = list(readout.emotions)
    pairs, control = design_pairs(clean.labels, emotions, per_pair, seed)
    grid = [Site(kind, layer) for kind in sites for layer in layers]
    shape = (len(pairs), len(sites), len(layers))
    out = {k: np.zeros(shape, np.float32) for k in ("flip", "d_source", "d_target", "control_flip",
                                                     "control_d_source", "control_d_target")}
    emotion_index = {e: i for i, e in enumerate(emotions)}
    for t in tqdm(sorted(set(pairs[:, 0].tolist())), desc="patching", leave=False):
        rows = np.flatnonzero(pairs[:, 0] == t)
        sources = [int(pairs[r, 1]) for r in rows] + [control[t]]
        groups = [[Intervention(site, "set", clean.prepared[s].sites[site])] for s in sources for site in grid]
        lp = clean.calibrate(engine.run(clean.prepared[t], groups)).reshape(len(sources), *shape[1:], -1)
        top1 = lp.argmax(-1).numpy()
        base = clean.log_probs[t].numpy()
        tgt = emotion_index[clean.labels[t]]
        for j, r in enumerate(rows):
            src = emotion_index[clean.labels[pairs[r, 1]]]
            for prefix, k in (("", j), ("control_", len(sources) - 1)):
                out[prefix + "flip"][r] = top1[k] == src
                out[prefix + "d_source"][r] = lp[k, :, :, src].numpy() - base[src]
                out[prefix + "d_target"][r] = lp[k, :, :, tgt].numpy() - base[tgt]
    baseline = np.array([clean.top1[t] == clean.labels[s] for t, s in pairs], np.float32)
    answered = np.array([clean.top1[s] == clean.labels[s] for _, s in pairs])
    return PatchingResult(list(sites), list(layers), pairs, baseline_flip=baseline, source_answered=answered, **out)


OPS = ("zero", "mean", "random")


@dataclass
class KnockoutResult:
    """Per stimulus, site, layer and op (zero, mean, random) `(n, n_sites, n_layers, 3)`: changed (top-1 differs
    from the clean answer), kl (KL of the clean answer distribution from the ablated one), drop (clean minus
    ablated probability of the stimulus's own emotion); random is averaged over its n_random draws."""
    sites: list[str]
    layers: list[int]
    changed: np.ndarray
    kl: np.ndarray
    drop: np.ndarray


def _effects(readout: Readout, clean: Clean, i: int, log_probs: torch.Tensor):
    """(changed, kl, drop) of ablated `(..., n_emotions)` log-probs against stimulus i's clean run."""
    base = clean.log_probs[i]
    own = readout.emotions.index(clean.labels[i])
    changed = (log_probs.argmax(-1) != base.argmax()).float()
    kl = (base.exp() * (base - log_probs)).sum(-1)
    drop = base[own].exp() - log_probs[..., own].exp()
    return changed.numpy(), kl.clamp_min(0).numpy(), drop.numpy()


def knockout(engine: Engine, readout: Readout, clean: Clean, sites: Sequence[str], layers: Sequence[int],
             n_random: int, seed: int) -> KnockoutResult:
    """Ablate a or m of one layer at the extraction position: zero, the set's mean, or a random direction with the
    site's own norm (the control)."""
    grid = [Site(kind, layer) for kind in sites for layer in layers]
    means = {site: torch.stack([p.sites[site] for p in clean.prepared]).mean(0) for site in grid}
    d_model = means[grid[0]].shape[-1]
    rng = np.random.default_rng(seed)
    shape = (len(clean.prepared), len(sites), len(layers), len(OPS))
    out = {k: np.zeros(shape, np.float32) for k in ("changed", "kl", "drop")}
    for i, prep in enumerate(tqdm(clean.prepared, desc="knockout", leave=False)):
        directions = torch.from_numpy(rng.standard_normal((len(grid), n_random, d_model)).astype(np.float32))
        directions /= directions.norm(dim=-1, keepdim=True)
        groups = []
        for g, site in enumerate(grid):
            groups += [[Intervention(site, "zero")], [Intervention(site, "set", means[site])]]
            groups += [[Intervention(site, "random", directions[g, r])] for r in range(n_random)]
        lp = clean.calibrate(engine.run(prep, groups)).reshape(len(sites), len(layers), 2 + n_random, -1)
        for key, value in zip(("changed", "kl", "drop"), _effects(readout, clean, i, lp)):
            out[key][i] = np.concatenate([value[..., :2], value[..., 2:].mean(-1, keepdims=True)], axis=-1)
    return KnockoutResult(list(sites), list(layers), **out)


@dataclass
class HeadResult:
    """Per stimulus, layer and head `(n, n_layers, n_heads)`: changed, kl, drop (as for knockout), zeroing one head's
    slice of the attention output projection's input at the extraction position."""
    layers: list[int]
    changed: np.ndarray
    kl: np.ndarray
    drop: np.ndarray


def heads(engine: Engine, readout: Readout, clean: Clean, layers: Sequence[int]) -> HeadResult:
    n_heads = engine.cfg.num_attention_heads
    shape = (len(clean.prepared), len(layers), n_heads)
    out = {k: np.zeros(shape, np.float32) for k in ("changed", "kl", "drop")}
    groups = [[Intervention(Site("a", layer), "zero", head=h)] for layer in layers for h in range(n_heads)]
    for i, prep in enumerate(tqdm(clean.prepared, desc="heads", leave=False)):
        lp = clean.calibrate(engine.run(prep, groups)).reshape(len(layers), n_heads, -1)
        for key, value in zip(("changed", "kl", "drop"), _effects(readout, clean, i, lp)):
            out[key][i] = value
    return HeadResult(list(layers), **out)
