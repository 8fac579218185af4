"""Directional ablation (amnesic probing, Elazar et al. 2021; issue 25 item 4): project the emotion subspace out of
h[l] at every position and measure what that removes downstream, against a random subspace that removes as much norm.

Subspace: an orthonormal basis of the eight difference-of-means directions at layer l (`steering.difference_of_means`
on the fitting set, so no folds on the ablated set); they span at most 7 dimensions (the deviations sum to zero), the
rank r is taken from an SVD with a relative tolerance and recorded.

Control: a uniformly random r-dimensional subspace of R^d removes ~sqrt(r / d) of each vector's norm, far less than
the emotion subspace (the residual stream is anisotropic), so it would be a lax control. Random subspaces are drawn
instead inside the span of the top q uncentred principal axes of the ablated items' clean h[l] at every prompt
position (where the projection acts; no labels are used), axes ordered by how much of ||x||^2 they carry, q chosen
by bisection so that the mean removed norm ||P x|| / ||x|| over those positions (averaged over fixed Monte Carlo
draws) matches the emotion subspace's there: q = r is the top axes themselves (the most any r-dimensional subspace
removes), q = d a uniform draw. Reported on the same positions: the emotion subspace's, the drawn subspaces' and a
uniform subspace's removed norm; and the emotion subspace's on the fitting set, for reference.

Run: per item, `Engine.prepare` (prefix forward and answer tree) inside `sites.hooked` with a `project` intervention
at layer l, so every position the model runs (the prompt and the teacher-forced answer tokens) loses the subspace;
it gives the calibrated eight scores (clean content-free offsets) and h at every layer at the extraction position.
Statistics: per later layer an 8-class ridge probe (`stats.ridge_hats`, standardized, the same stratified folds in
every condition) gives out-of-fold scores -> macro AUROC; intervals: percentile bootstrap over items, the same
resamples for every condition, so drop = clean - ablated and drop - random drop are paired.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .causal import calibration_offsets, resolve_layers
from .config import ConfigError, parse_section
from .extract import tokenize_prompt
from .io import DataError
from .readout import calibrate
from .seeds import derive
from .sites import Intervention, Site, hooked
from .stats import auroc, bootstrap_counts, interval, one_hot, ridge_hats, ridge_scores, splits, weighted_means
from .steering import balanced, difference_of_means

RANK_TOL = 1e-6   # singular values below RANK_TOL * the largest do not count towards the rank
N_CANDIDATES = 64          # random subspaces drawn at q, the closest in removed norm kept
N_MC = 16         # Monte Carlo draws per q in the norm matching (common to every q)


@dataclass(frozen=True)
class AblationSettings:
    """params.yaml `steering.ablation:`. set: the ablated set, a balanced subset of n_items (emotions in turn);
    layers: ablation layers (null: n_layers // 2, the middle, with half the layers left to read); n_random:
    matched random subspaces per ablation layer; n_folds: stratified folds of the refit probe;
    alpha: its ridge penalty (times trace(K) / n, as `stats.ridge_hats`)."""
    set: str = "B"
    n_items: int = 32
    layers: tuple[int, ...] | None = None
    n_random: int = 1
    n_folds: int = 4
    alpha: float = 1.0

    def __post_init__(self):
        if self.n_folds < 2:
            raise ConfigError("params.yaml: steering.ablation.n_folds: must be at least 2")
        if self.n_random < 1:
            raise ConfigError("params.yaml: steering.ablation.n_random: must be at least 1")
        if not self.alpha > 0:
            raise ConfigError("params.yaml: steering.ablation.alpha: must be positive")

    @staticmethod
    def parse(raw) -> "AblationSettings":
        return parse_section(raw, AblationSettings, "steering.ablation")

    def validate(self, stimuli, n_emotions: int, fit_set: str, n_layers: int | None = None) -> list[int] | None:
        """Checks against the project (run before any forward pass): the set exists and is not the fitting set,
        n_items gives every emotion a test item in each fold, the layers (with `n_layers`) leave a later layer to
        read. Returns the ablation layers (None without n_layers)."""
        if self.set not in stimuli:
            raise ConfigError(f"params.yaml: steering.ablation.set: unknown stimulus set {self.set!r} "
                              f"(stimuli: {', '.join(stimuli)})")
        if self.set == fit_set:
            raise ConfigError(f"params.yaml: steering.ablation.set: {self.set!r} is also steering.fit_set (the "
                              "subspace is fitted there; no folds are made)")
        if self.n_items < self.n_folds * n_emotions:
            raise ConfigError(f"params.yaml: steering.ablation.n_items: {self.n_items} is too small: the probe needs "
                              f"n_folds ({self.n_folds}) items of each of the {n_emotions} emotions")
        if n_layers is None:
            return None
        layers = [n_layers // 2] if self.layers is None else \
            resolve_layers(self.layers, n_layers, "steering.ablation.layers")
        if max(layers) >= n_layers - 1:
            raise ConfigError(f"params.yaml: steering.ablation.layers: layer {max(layers)} has no later layer to read "
                              f"(the model has layers 0..{n_layers - 1})")
        return sorted(set(layers))


# ------------------------------------------------------------------------------------------------ subspaces


def emotion_basis(h: np.ndarray, labels, emotions, tol: float = RANK_TOL) -> np.ndarray:
    """Orthonormal `(r, d)` basis of the span of the difference-of-means directions of `h (n, d)` (r <= k - 1)."""
    raw = difference_of_means(np.asarray(h)[:, None], np.asarray(labels), emotions)[0]    # (k, d)
    _, s, vt = np.linalg.svd(raw, full_matrices=False)
    return vt[s > tol * s[0]]


def project(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """`x (..., d)` minus its projection on the orthonormal rows of `basis (r, d)`."""
    return x - (x @ basis.T) @ basis


def removed_norm(x: np.ndarray, basis: np.ndarray) -> float:
    """Mean ||P x|| / ||x|| over the rows of `x (..., d)` (P the projection on the basis' span)."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return float((np.linalg.norm(x @ basis.T, axis=-1) / np.maximum(np.linalg.norm(x, axis=-1), 1e-30)).mean())


def _orthonormal(g: np.ndarray) -> np.ndarray:
    """Orthonormal columns of the span of `g (..., q, r)` (QR)."""
    return np.linalg.qr(g)[0]


@dataclass
class Matched:
    """Random subspaces matched in removed norm. bases `(n_random, r, d)`; q: the span they are drawn in (the top q
    uncentred principal axes of the rows matched on: the ablated items' clean h[l] at every position); target /
    achieved: mean removed norm over those rows of the emotion subspace and of the Monte Carlo draws at q."""
    bases: np.ndarray
    q: int
    target: float
    achieved: float


def matched_random(h: np.ndarray, target: float, r: int, n_random: int, rng) -> Matched:
    """`n_random` random r-dimensional subspaces inside the top-q principal axes of `h (n, d)` (uncentred), q by
    bisection on the mean removed norm over `h`'s rows so it matches `target` (the closest integer q; q = r if even
    the top axes remove less, q = d if even a uniform draw removes more); of N_CANDIDATES draws at q the `n_random`
    whose removed norm is closest to `target` are kept (the norm alone is used, no labels)."""
    h = np.asarray(h, np.float64)
    d = h.shape[1]
    axes = np.linalg.svd(h, full_matrices=h.shape[0] < d)[2]         # (d, d), by uncentred second moment (U is
                                                                      # never needed: n x n with full_matrices)
    coords = (h / np.linalg.norm(h, axis=1, keepdims=True)) @ axes.T  # unit rows in axis coordinates
    mc = rng.standard_normal((N_MC, d, r))

    def mean_removed(q: int) -> float:
        frames = _orthonormal(mc[:, :q])                              # (N_MC, q, r)
        return float(np.linalg.norm(np.einsum("nq,mqr->mnr", coords[:, :q], frames), axis=-1).mean())

    lo, hi = r, d
    if mean_removed(lo) <= target:
        q = lo
    elif mean_removed(hi) >= target:
        q = hi
    else:
        while hi - lo > 1:                                            # removed(lo) > target > removed(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if mean_removed(mid) > target else (lo, mid)
        q = lo if abs(mean_removed(lo) - target) <= abs(mean_removed(hi) - target) else hi
    frames = _orthonormal(rng.standard_normal((N_CANDIDATES, q, r)))    # one draw's removed norm varies: keep the
    removed = np.linalg.norm(np.einsum("nq,mqr->mnr", coords[:, :q], frames), axis=-1).mean(1)   # closest draws
    keep = np.argsort(np.abs(removed - target))[:n_random]
    bases = np.einsum("mqr,qd->mrd", frames[keep], axes[:q])
    return Matched(bases, q, float(target), float(removed[keep].mean()))


def uniform_random(d: int, r: int, rng) -> np.ndarray:
    """A uniformly random r-dimensional subspace of R^d, `(r, d)` orthonormal rows (the unmatched control)."""
    return _orthonormal(rng.standard_normal((d, r))).T


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Run:
    """One condition over the ablated items: h `(n, n_layers, d)` at the extraction position (after the
    projection at its layer), scores `(n, k)` calibrated."""
    h: np.ndarray
    scores: np.ndarray


def _record(engine, prep, offsets, runs: tuple[list, list]) -> None:
    runs[0].append(torch.stack([prep.sites[Site("h", j)] for j in range(engine.n_layers)]).float().cpu().numpy())
    runs[1].append(calibrate(prep.raw, offsets).float().cpu().numpy())


def clean_items(engine, prompts, offsets: torch.Tensor, layers, prepared: dict | None = None) -> tuple[Run, dict, list]:
    """The clean run of each prompt (token ids) and, per layer of `layers`, the clean h[layer] at every prompt
    position of every prompt stacked `(total positions, d)` float64: where the projection acts, so where the removed
    norms are measured and matched. `prepared`: clean runs already made (`Engine.prepare(ids, positions=True)`,
    keyed by the ids tuple), reused and added to. Returns (Run, states, the Prepared of each prompt)."""
    runs, states, preps = ([], []), {layer: [] for layer in layers}, []
    prepared = {} if prepared is None else prepared
    for ids in tqdm(prompts, desc="ablation clean", leave=False):
        key = tuple(ids)
        if key not in prepared:
            prepared[key] = engine.prepare(ids, positions=True)
        prep = prepared[key]
        preps.append(prep)
        _record(engine, prep, offsets, runs)
        for layer in layers:
            states[layer].append(torch.cat([prep.prompt_resid[layer + 1], prep.resid[layer + 1, :1]]).double().cpu())
    return Run(np.stack(runs[0]), np.stack(runs[1])), {l: torch.cat(v).numpy() for l, v in states.items()}, preps


def ablated_items_plain(engine, prompts, offsets: torch.Tensor, layer: int, bases) -> list[Run]:
    """The plain path of `ablated_items`: each prompt run from its first token once per basis `(r, d)` under a
    `project` hook at h[layer] (every position, the answer tokens included). Kept as the reference of the tests
    and the bench."""
    bases = [torch.as_tensor(np.asarray(b), dtype=engine.model.dtype) for b in bases]
    out = [([], []) for _ in bases]
    for ids in tqdm(prompts, desc=f"ablation h{layer} (plain)", leave=False):
        for runs, basis in zip(out, bases):
            with hooked(engine.model, interventions=[Intervention(Site("h", layer), "project", basis)]):
                _record(engine, engine.prepare(ids), offsets, runs)
    return [Run(np.stack(h), np.stack(s)) for h, s in out]


def ablated_items(engine, prepared: list, offsets: torch.Tensor, layer: int, bases) -> list[Run]:
    """Each clean run in `prepared` (made with positions=True) once per basis `(r, d)` in `bases`, with the basis
    projected out of h[layer] at every position: blocks 0..layer are the clean run's (the projection acts on their
    output), so each condition starts at block layer + 1 from the clean h[layer] (every prompt position and the
    answer tree's columns) projected; all bases of one prompt run side by side in one call. One Run per basis."""
    bases = [torch.as_tensor(np.asarray(b), dtype=engine.model.dtype) for b in bases]
    out = [([], []) for _ in bases]
    k = len(bases)
    with torch.inference_mode():
        for prep in tqdm(prepared, desc=f"ablation h{layer}", leave=False):
            n = len(prep.ids)
            tail = torch.cat([prep.prompt_resid[layer + 1], prep.resid[layer + 1]])      # (G, d): h[layer] clean
            h = torch.cat([tail - (tail @ b.to(tail.device).T) @ b.to(tail.device) for b in bases])[None]
            inputs = []
            final = engine._blocks(prep, h, layer + 1, 0, k, inputs=inputs)
            width = tail.shape[0]
            raw = engine._scores(final.view(k, width, -1)[:, n - 1:], relative=True).cpu()
            later = torch.stack([x.view(k, width, -1)[:, n - 1] for x in inputs])           # (L - layer, k, d)
            for j, (runs, basis) in enumerate(zip(out, bases)):
                sites = [prep.sites[Site("h", i)] for i in range(layer)] + list(later[:, j])
                runs[0].append(torch.stack(sites).float().cpu().numpy())
                runs[1].append(calibrate(raw[j], offsets).float().cpu().numpy())
    return [Run(np.stack(h), np.stack(s)) for h, s in out]


# ------------------------------------------------------------------------------------------------ statistics


def refit_scores(h: np.ndarray, codes: np.ndarray, folds, alpha: float, k: int) -> np.ndarray:
    """Out-of-fold 8-class ridge scores `(n, k)` of features `h (n, d)` on `folds`."""
    return ridge_scores(ridge_hats(h, folds, alpha), one_hot(codes, k)[None])[0]


def _triple(point, resampled) -> dict:
    value, low, high = interval(point, resampled)
    return {"value": value, "low": low, "high": high}


def ablation_rows(clean: Run, ablated: Run, randoms: list[Run], labels, emotions, layer: int, settings,
                  n_boot: int, seed: int) -> tuple[list[dict], dict]:
    """Per read layer j >= layer: refit-probe AUROC per condition (random: mean over draws) with intervals, the
    drop clean - ablated, the random drop, and drop minus random drop (paired: the same folds and bootstrap
    resamples in every condition); plus calibrated accuracy per condition. Returns (rows, accuracy summary)."""
    emotions = list(emotions)
    codes = np.array([emotions.index(e) for e in labels])
    k, n = len(emotions), len(codes)
    folds = splits(codes, settings.n_folds, derive(seed, "splits"))[0]
    counts = bootstrap_counts(None, n, n_boot, derive(seed, "bootstrap"))
    rows = []
    for j in range(layer, clean.h.shape[1]):
        def scored(run):
            s = refit_scores(run.h[:, j], codes, folds, settings.alpha, k)
            return auroc(codes, s), auroc(codes, s, counts=counts)
        c, a = scored(clean), scored(ablated)
        rs = [scored(r) for r in randoms]
        rnd = (float(np.mean([x[0] for x in rs])), np.mean([x[1] for x in rs], axis=0))
        row = {"ablation_layer": layer, "layer": j}
        for name, (point, values) in (("auroc_clean", c), ("auroc_ablated", a), ("auroc_random", rnd),
                                      ("drop", (c[0] - a[0], c[1] - a[1])),
                                      ("random_drop", (c[0] - rnd[0], c[1] - rnd[1])),
                                      ("drop_minus_random", (rnd[0] - a[0], rnd[1] - a[1]))):
            t = _triple(point, values)
            row.update({name: t["value"], f"{name}_low": t["low"], f"{name}_high": t["high"]})
        rows.append(row)
    top1 = lambda run: (run.scores.argmax(1) == codes).astype(float)  # noqa: E731
    acc = {"clean": top1(clean), "ablated": top1(ablated), "random": np.mean([top1(r) for r in randoms], axis=0)}
    acc["drop"] = acc["clean"] - acc["ablated"]
    acc["random_drop"] = acc["clean"] - acc["random"]
    acc["drop_minus_random"] = acc["random"] - acc["ablated"]
    accuracy = {name: _triple(v.mean(), weighted_means(v, counts)) for name, v in acc.items()}
    return rows, accuracy


# ------------------------------------------------------------------------------------------------ experiment


def run_ablation(s, h_fit: np.ndarray, fit_labels) -> tuple[dict, dict]:
    """The experiment for one model from a `steering_report.Setup` and the fitting set's h `(n, n_layers, d)`:
    returns (metrics, {"steering_ablation": rows})."""
    cfg, layers = s.ablation, list(s.ablation_layers)           # parsed and checked by `steering_report.setup`
    emotions, engine, tok = list(s.readout.emotions), s.engine, s.engine.loaded.tokenizer
    items = balanced(s.stimuli[cfg.set], emotions, cfg.n_items)
    labels = np.array([x.emotion for x in items])
    if len(items) < cfg.n_folds * len(emotions) or min((labels == e).sum() for e in emotions) < cfg.n_folds:
        raise DataError(f"set {cfg.set}: {len(items)} items ({dict(zip(*np.unique(labels, return_counts=True)))}); "
                        f"steering.ablation needs n_folds ({cfg.n_folds}) of each emotion")
    rng = np.random.default_rng(derive(s.seed, "ablation", "random"))
    offsets = s.offsets if s.offsets is not None else calibration_offsets(engine, tok, s.template, s.answers)
    prompts = [tokenize_prompt(tok, s.template, x.text).ids for x in items]
    clean, states, preps = clean_items(engine, prompts, offsets, layers, s.prepared)
    fitted = {}
    for layer in layers:
        basis = emotion_basis(h_fit[:, layer], fit_labels, emotions)
        x = states[layer]                               # the ablated items' clean h[l], every position: no labels
        matched = matched_random(x, removed_norm(x, basis), len(basis), cfg.n_random, rng)
        uniform = uniform_random(basis.shape[1], len(basis), rng)
        norms = np.array([removed_norm(x, b) for b in (basis, *matched.bases, uniform)])
        fitted[layer] = (basis, matched, norms, removed_norm(h_fit[:, layer], basis))
    metrics = {"set": cfg.set, "n": len(items), "layers": layers, "n_random": cfg.n_random, "n_folds": cfg.n_folds,
               "per_layer": {}}
    rows = []
    for layer, (basis, matched, n_norm, fit_norm) in fitted.items():
        runs = ablated_items(engine, preps, offsets, layer, [basis, *matched.bases])
        ablated, randoms = runs[0], runs[1:]
        b = torch.as_tensor(basis, dtype=torch.float64)
        h_l = torch.as_tensor(ablated.h[:, layer], dtype=torch.float64)
        residual = float(((h_l @ b.T).norm(dim=-1) / h_l.norm(dim=-1)).max())
        layer_rows, accuracy = ablation_rows(clean, ablated, randoms, labels, emotions, layer, cfg, s.shared.n_boot,
                                             derive(s.seed, "ablation", layer))
        for row in layer_rows:
            row["depth"] = (row["layer"] + 1) / engine.n_layers
        rows += layer_rows
        pick = lambda row: {k: row[k] for k in ("layer", "drop", "drop_low", "drop_high", "random_drop",  # noqa
                                                 "random_drop_low", "random_drop_high", "drop_minus_random",
                                                 "drop_minus_random_low", "drop_minus_random_high")}
        metrics["per_layer"][str(layer)] = {
            "rank": len(basis), "q": matched.q, "removed_norm": float(n_norm[0]),
            "random_removed_norm": float(n_norm[1:-1].mean()), "uniform_removed_norm": float(n_norm[-1]),
            "fit_removed_norm": fit_norm, "matched_monte_carlo": matched.achieved,
            "residual_in_subspace": residual, "next_layer": pick(layer_rows[1]), "last_layer": pick(layer_rows[-1]),
            "accuracy": accuracy}
    return metrics, {"steering_ablation": rows}
