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
from .seeds import derive, rng as rng_of
from .sites import KINDS, Intervention, Site

log = logging.getLogger(__name__)


ABLATIONS = ("zero", "mean", "resample")


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
    n_flip: int = 1000

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("params.yaml: interventions.batch_size: must be at least 1")
        if self.n_boot < 100:
            raise ConfigError("params.yaml: interventions.n_boot: must be at least 100")
        if self.n_flip < 99:
            raise ConfigError("params.yaml: interventions.n_flip: must be at least 99")


@dataclass(frozen=True)
class PatchingSettings:
    """params.yaml `patching:`. per_source: source stimuli from each other emotion per target (every stimulus is a
    target once); layers: null for every `layer_step`-th layer counted back from the last; behaviour_sets: sets on
    which the model's own accuracy is reported."""
    set: str = "B"
    sites: tuple[str, ...] = KINDS
    layers: tuple[int, ...] | None = None
    layer_step: int = 1
    per_source: int = 1
    behaviour_sets: tuple[str, ...] = ("A", "B")

    def __post_init__(self):
        _check_choices(self.sites, KINDS, "patching.sites")
        if self.layer_step < 1:
            raise ConfigError("params.yaml: patching.layer_step: must be at least 1")
        if self.per_source < 1:
            raise ConfigError("params.yaml: patching.per_source: must be at least 1")


@dataclass(frozen=True)
class KnockoutSettings:
    """params.yaml `knockout:`. layers, layer_step: as for patching. ablations: zero, mean, resample; n_random:
    matched random controls per ablation, stimulus, site and layer."""
    set: str = "B"
    sites: tuple[str, ...] = ("a", "m")
    layers: tuple[int, ...] | None = None
    layer_step: int = 1
    ablations: tuple[str, ...] = ("zero", "mean")
    n_random: int = 2

    def __post_init__(self):
        if self.layer_step < 1:
            raise ConfigError("params.yaml: knockout.layer_step: must be at least 1")
        _check_choices(self.sites, ("a", "m"), "knockout.sites")
        _check_choices(self.ablations, ABLATIONS, "knockout.ablations")
        if not self.ablations:
            raise ConfigError("params.yaml: knockout.ablations: give at least one of " + ", ".join(ABLATIONS))
        if self.n_random < 1:
            raise ConfigError("params.yaml: knockout.n_random: must be at least 1")


@dataclass(frozen=True)
class HeadSettings:
    """params.yaml `heads:`. layers: null for every layer; top: heads ranked on one half and tested on the other;
    n_random: matched random controls per tested head and stimulus."""
    set: str = "B"
    layers: tuple[int, ...] | None = None
    top: int = 10
    n_random: int = 2

    def __post_init__(self):
        if self.top < 1:
            raise ConfigError("params.yaml: heads.top: must be at least 1")
        if self.n_random < 1:
            raise ConfigError("params.yaml: heads.n_random: must be at least 1")


def resolve_layers(layers, n_layers: int, where: str, step: int = 1) -> list[int]:
    """The configured layers, each checked against the model's depth; None: every `step`-th layer counted back from
    the last (which is always included)."""
    if layers is None:
        return sorted(range(n_layers - 1, -1, -step))
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


CLEAN_BATCH = 32  # clean runs scored together (their prefix caches are held until then)


def common_prefix(all_ids) -> int:
    """The number of leading token ids every prompt of `all_ids` shares (the template's fixed part), or 0 for
    fewer than two prompts."""
    if len(all_ids) < 2:
        return 0
    n = min(map(len, all_ids))
    first = all_ids[0]
    for other in all_ids[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


def clean_runs(engine: Engine, tokenizer, template: str, stimuli, answers: AnswerSettings, keep_cache: bool = True,
               positions: bool = False, desc: str = "clean", offsets: torch.Tensor | None = None,
               cache: dict | None = None) -> Clean:
    """The clean run of every stimulus (caches kept unless keep_cache is false; positions: see `Engine.prepare`)
    and the calibrated answers. offsets: the calibration offsets if already computed; cache: clean runs by token
    ids, reused and added to (an entry made with positions=True serves either kind)."""
    prepared = []
    all_ids = [tuple(tokenize_prompt(tokenizer, template, stimulus.text).ids) for stimulus in stimuli]
    shared = common_prefix(all_ids)
    made = []      # clean runs still to score: the output layer runs on CLEAN_BATCH of them at once

    def flush():
        engine.score_clean(made)
        made.clear()
        if not keep_cache:
            prepared[:] = [p.without_cache() for p in prepared]

    for ids in tqdm(all_ids, desc=desc, leave=False):
        prep = cache.get(ids) if cache is not None else None
        if prep is None or (positions and prep.prompt_resid is None):
            prep = engine.prepare(ids, positions=positions, shared=shared, score=False)
            made.append(prep)
            if cache is not None:
                cache[ids] = prep
        prepared.append(prep)
        if len(made) == CLEAN_BATCH:
            flush()
    flush()
    raw = torch.stack([p.raw for p in prepared])
    if offsets is None:
        offsets = calibration_offsets(engine, tokenizer, template, answers)
    log_probs = calibrate(raw, offsets)
    return Clean(prepared, raw, offsets, log_probs, engine.readout.top1(log_probs),
                 np.array([s.emotion for s in stimuli]))


def scores(engine: Engine, readout: Readout, clean: Clean, prepared: Prepared, groups) -> torch.Tensor:
    """The one readout of every experiment: `(len(groups), n_emotions)` calibrated answer log-probs of `prepared`
    under each group of interventions (whole-word raw scores minus the clean content-free offsets; the scores
    relative to the last token's log-normalizer, which calibration drops anyway)."""
    return clean.calibrate(engine.run(prepared, groups, relative=True))


def design_pairs(labels: Sequence[str], emotions: Sequence[str], per_source: int, seed: int):
    """Every stimulus is a target once, with `per_source` sources from each other emotion (cycling through each
    emotion's stimuli in a seeded order, so sources spread over the set and every ordered emotion pair is covered),
    and one same-emotion control source: the next stimulus of its own emotion in that order.
    Returns (pairs `(n_pairs, 2)` (target, source), control `(n,)` the control source of each target)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(derive(seed, "pairs"))
    order = {e: rng.permutation(np.flatnonzero(labels == e)) for e in emotions}
    thin = [e for e in emotions if len(order[e]) < 2]
    if thin:
        raise ConfigError(f"patching needs at least two stimuli of each emotion; {', '.join(thin)} has fewer")
    next_source = dict.fromkeys(emotions, 0)
    pairs, control = [], np.full(len(labels), -1)
    for target_emotion in emotions:
        same = list(order[target_emotion])
        for k, t in enumerate(same):
            control[t] = same[(k + 1) % len(same)]
            for source_emotion in emotions:
                if source_emotion == target_emotion:
                    continue
                for _ in range(per_source):
                    src = order[source_emotion]
                    pairs.append((int(t), int(src[next_source[source_emotion] % len(src)])))
                    next_source[source_emotion] += 1
    return np.array(pairs), control


@dataclass
class PatchingResult:
    """Per pair (target, source): emotion indices tgt, src `(n_pairs,)`; clean logit differences
    LD = score(source emotion) - score(target emotion) on the source's run (ld_source) and the target's (ld_target);
    clean top-1 (emotion index) of the source and of the target. Per pair, site and layer `(n_pairs, n_sites,
    n_layers)`: ld_patch / ld_control (LD of the patched target / of the target patched from its same-emotion
    control source, both scored with the pair's emotions) and top1_patch / top1_control."""
    sites: list[str]
    layers: list[int]
    pairs: np.ndarray
    tgt: np.ndarray
    src: np.ndarray
    ld_source: np.ndarray
    ld_target: np.ndarray
    top1_source: np.ndarray
    top1_target: np.ndarray
    ld_patch: np.ndarray
    ld_control: np.ndarray
    top1_patch: np.ndarray
    top1_control: np.ndarray


def patching(engine: Engine, readout: Readout, clean: Clean, sites: Sequence[str], layers: Sequence[int],
             per_source: int, seed: int) -> PatchingResult:
    """Overwrite the target's site at the extraction position with the source's clean value, for every site and
    layer; per target, its sources and its same-emotion control run in one batch (7 * per_source + 1 groups per
    cell)."""
    emotions = list(readout.emotions)
    pairs, control = design_pairs(clean.labels, emotions, per_source, seed)
    grid = [Site(kind, layer) for kind in sites for layer in layers]
    cells = (len(sites), len(layers))
    index = np.array([emotions.index(e) for e in clean.labels])
    clean_lp = clean.log_probs.numpy()
    tgt, src = index[pairs[:, 0]], index[pairs[:, 1]]
    out = {k: np.zeros((len(pairs), *cells), np.float32) for k in ("ld_patch", "ld_control")}
    out.update({k: np.zeros((len(pairs), *cells), np.int64) for k in ("top1_patch", "top1_control")})
    for t in tqdm(sorted(set(pairs[:, 0].tolist())), desc="patching", leave=False):
        mine = np.flatnonzero(pairs[:, 0] == t)
        sources = [int(pairs[r, 1]) for r in mine] + [int(control[t])]
        groups = [[Intervention(site, "set", clean.prepared[s].sites[site])] for s in sources for site in grid]
        lp = scores(engine, readout, clean, clean.prepared[t], groups).reshape(len(sources), *cells, -1).numpy()
        for j, r in enumerate(mine):
            for key, k in (("patch", j), ("control", len(sources) - 1)):
                out[f"ld_{key}"][r] = lp[k, ..., src[r]] - lp[k, ..., tgt[r]]
                out[f"top1_{key}"][r] = lp[k].argmax(-1)
    top1 = clean_lp.argmax(-1)
    return PatchingResult(list(sites), list(layers), pairs, tgt, src,
                          ld_source=clean_lp[pairs[:, 1], src] - clean_lp[pairs[:, 1], tgt],
                          ld_target=clean_lp[pairs[:, 0], src] - clean_lp[pairs[:, 0], tgt],
                          top1_source=top1[pairs[:, 1]], top1_target=top1[pairs[:, 0]], **out)


def unit_directions(rng: np.random.Generator, shape: tuple, dim: int) -> torch.Tensor:
    """`(*shape, dim)` random unit vectors (isotropic)."""
    u = torch.from_numpy(rng.standard_normal((*shape, dim)).astype(np.float32))
    return u / u.norm(dim=-1, keepdim=True)


def matched_controls(delta: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Displacements `(n_random, d)` of the same norm as the ablation's displacement `delta (d,)`, along the unit
    `directions (n_random, d)`: the random control of an ablation v -> v + delta is v -> v + ||delta|| u."""
    return directions * delta.norm()


@dataclass
class KnockoutResult:
    """Per stimulus, site, layer and ablation `(n, n_sites, n_layers, n_ablations)`: drop (clean minus ablated
    score of the stimulus's own emotion) and kl (KL(clean || ablated) over the eight), for the ablation and for the
    mean over its n_random matched controls (control_drop, control_kl); norm: the ablation's displacement norm."""
    sites: list[str]
    layers: list[int]
    ablations: list[str]
    drop: np.ndarray
    kl: np.ndarray
    control_drop: np.ndarray
    control_kl: np.ndarray
    norm: np.ndarray


def _effects(clean: Clean, i: int, own: int, log_probs: torch.Tensor):
    """(drop, kl) of `(..., n_emotions)` log-probs against stimulus i's clean run."""
    base = clean.log_probs[i]
    kl = (base.exp() * (base - log_probs)).sum(-1).clamp_min(0)
    return (base[own] - log_probs[..., own]).numpy(), kl.numpy()


def knockout(engine: Engine, readout: Readout, clean: Clean, sites: Sequence[str], layers: Sequence[int],
             ablations: Sequence[str], n_random: int, seed: int) -> KnockoutResult:
    """Ablate a or m of one layer at the extraction position (zero; the set's mean; resample: the value of another
    stimulus drawn at random), each beside `n_random` matched controls that displace the site by the same norm in a
    random direction (`add` of ||delta|| u, delta the ablation's displacement). (1 + n_random) * len(ablations)
    groups per cell and stimulus."""
    grid = [Site(kind, layer) for kind in sites for layer in layers]
    n = len(clean.prepared)
    means = {site: torch.stack([p.sites[site] for p in clean.prepared]).mean(0) for site in grid}
    d_model = means[grid[0]].shape[-1]
    rng = np.random.default_rng(derive(seed, "random displacements"))
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # resample donor, never the stimulus itself
    shape = (n, len(sites), len(layers), len(ablations))
    out = {k: np.zeros(shape, np.float32) for k in ("drop", "kl", "control_drop", "control_kl", "norm")}
    emotions = list(readout.emotions)
    per = 1 + n_random
    for i, prep in enumerate(tqdm(clean.prepared, desc="knockout", leave=False)):
        directions = unit_directions(rng, (len(grid), len(ablations), n_random), d_model)
        groups, norms = [], []
        for g, site in enumerate(grid):
            v = prep.sites[site]
            for a, kind in enumerate(ablations):
                value = {"zero": torch.zeros_like(v), "mean": means[site],
                         "resample": clean.prepared[other[i]].sites.get(site)}[kind]
                delta = value - v
                groups.append([Intervention(site, "set", value)])
                groups += [[Intervention(site, "add", c)] for c in matched_controls(delta, directions[g, a])]
                norms.append(float(delta.norm()))
        lp = scores(engine, readout, clean, prep, groups).reshape(len(sites), len(layers), len(ablations), per, -1)
        drop, kl = _effects(clean, i, emotions.index(clean.labels[i]), lp)
        out["drop"][i], out["kl"][i] = drop[..., 0], kl[..., 0]
        out["control_drop"][i], out["control_kl"][i] = drop[..., 1:].mean(-1), kl[..., 1:].mean(-1)
        out["norm"][i] = np.reshape(norms, shape[1:])
    return KnockoutResult(list(sites), list(layers), list(ablations), **out)


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of n stimuli into (rank half, test half), sorted indices."""
    order = np.random.default_rng(derive(seed, "halves")).permutation(n)
    return np.sort(order[:n // 2]), np.sort(order[n // 2:])


def top_heads(rank_drop: np.ndarray, layers: Sequence[int], top: int) -> np.ndarray:
    """`(min(top, n), 2)` (layer, head) of the largest mean drops of `rank_drop (n_stimuli, n_layers, n_heads)`."""
    mean = rank_drop.mean(0).ravel()
    n_heads = rank_drop.shape[2]
    best = np.argsort(-mean, kind="stable")[:min(top, len(mean))]
    return np.array([(layers[b // n_heads], b % n_heads) for b in best])


@dataclass
class HeadResult:
    """Split-half head ablation. rank_half, test_half: stimulus indices; rank_drop `(n_rank, n_layers, n_heads)`:
    drop of the own-emotion score when one head's slice of the o_proj input is zeroed, on the rank half; tested
    `(top, 2)` (layer, head) of the top-ranked heads; on the test half `(n_test, top)`: drop / kl of zeroing each
    tested head and control_drop / control_kl the mean over n_random matched controls (the slice moved by its own
    norm along a random direction in that slice)."""
    layers: list[int]
    rank_half: np.ndarray
    test_half: np.ndarray
    rank_drop: np.ndarray
    tested: np.ndarray
    drop: np.ndarray
    kl: np.ndarray
    control_drop: np.ndarray
    control_kl: np.ndarray


def heads(engine: Engine, readout: Readout, clean: Clean, layers: Sequence[int], top: int, n_random: int,
          seed: int) -> HeadResult:
    """Rank every head (of `layers`) by its mean drop on a random half of the stimuli; zero only the `top` heads
    on the other half, each beside `n_random` same-norm random shifts in its own slice."""
    n_heads = engine.cfg.num_attention_heads
    head_dim = getattr(engine.cfg, "head_dim", None) or engine.cfg.hidden_size // n_heads
    emotions = list(readout.emotions)
    rank_half, test_half = split_halves(len(clean.prepared), seed)
    groups = [[Intervention(Site("a", layer), "zero", head=h)] for layer in layers for h in range(n_heads)]
    rank_drop = np.zeros((len(rank_half), len(layers), n_heads), np.float32)
    for k, i in enumerate(tqdm(rank_half, desc="heads (rank)", leave=False)):
        lp = scores(engine, readout, clean, clean.prepared[i], groups).reshape(len(layers), n_heads, -1)
        rank_drop[k] = _effects(clean, i, emotions.index(clean.labels[i]), lp)[0]
    tested = top_heads(rank_drop, layers, top)
    rng = rng_of(seed, "controls")
    shape = (len(test_half), len(tested))
    out = {k: np.zeros(shape, np.float32) for k in ("drop", "kl", "control_drop", "control_kl")}
    for k, i in enumerate(tqdm(test_half, desc="heads (test)", leave=False)):
        directions = unit_directions(rng, (len(tested), n_random), head_dim)
        groups = []
        for t, (layer, h) in enumerate(tested):
            site = Site("a", int(layer))
            groups.append([Intervention(site, "zero", head=int(h))])
            groups += [[Intervention(site, "shift", directions[t, r], head=int(h))] for r in range(n_random)]
        lp = scores(engine, readout, clean, clean.prepared[i], groups).reshape(len(tested), 1 + n_random, -1)
        drop, kl = _effects(clean, i, emotions.index(clean.labels[i]), lp)
        out["drop"][k], out["kl"][k] = drop[:, 0], kl[:, 0]
        out["control_drop"][k], out["control_kl"][k] = drop[:, 1:].mean(-1), kl[:, 1:].mean(-1)
    return HeadResult(list(layers), rank_half, test_half, rank_drop, tested, **out)
