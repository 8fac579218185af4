"""Statistics of steering as pure functions of the per-item score arrays (`steering.SteeringResult`, `GrainResult`).

Per item i, layer, dose and emotion e (calibrated scores, clean = the unsteered run of the same item):
  delta_e  = score_e(steered with d_e) - score_e(clean)        random: the same with each random direction, averaged
  to_e     = [top-1 of the run steered with d_e is e]            random: the share of its random runs answering e
Per item, a cell's values are means over emotions (to_e over the emotions the clean item did not already answer),
so items are the resampled units: bootstrap intervals over items; the best (layer, dose) cell is the largest mean
of (delta minus random) with a max-statistic p over the grid from per-item sign flips, one flip vector in every cell.
"""
from __future__ import annotations

import numpy as np

from . import stats


def _ci(name: str, values: np.ndarray, counts: np.ndarray) -> dict:
    """Mean over items of `values (n,)` with its bootstrap interval (multiplicities `counts (n_boot, n)`)."""
    point, low, high = stats.interval(np.mean(values), stats.weighted_means(values, counts))
    return {name: point, f"{name}_low": low, f"{name}_high": high}


def _arms(name: str, steered: np.ndarray, random: np.ndarray, counts: np.ndarray) -> dict:
    """name, random_name and name_minus_random, each with its interval (paired: the same resamples)."""
    return {**_ci(name, steered, counts), **_ci(f"random_{name}", random, counts),
            **_ci(f"{name}_minus_random", steered - random, counts)}


def _subset_arms(name: str, steered: np.ndarray, random: np.ndarray, n_boot: int, seed: int) -> dict:
    """`_arms` over a subset of items (its own resamples; NaN when the subset is empty)."""
    if not len(steered):
        return {f"{key}{s}": np.nan for key in (name, f"random_{name}", f"{name}_minus_random")
                for s in ("", "_low", "_high")}
    counts = stats.index_counts(stats.bootstrap_index(len(steered), n_boot, seed), len(steered))
    return _arms(name, steered, random, counts)


def cell_values(r) -> dict:
    """Per item and cell `(n, n_layers, n_doses, k)`: delta / random_delta (change of e's score), to_e / random_to_e
    (answer is e), and eligible `(n, 1, 1, k)` (the clean answer is not e)."""
    n, k = r.clean.shape
    eye = np.arange(k)
    clean = r.clean[:, None, None, :]
    top = r.steer.argmax(-1)                                          # (n, L, D, k): answer when steering with d_e
    return {"delta": r.steer[..., eye, eye] - clean,
            "random_delta": r.random.mean(3) - clean,
            "to_e": (top == eye).astype(float),
            "random_to_e": (r.random.argmax(-1)[..., None] == eye).mean(3),
            "eligible": (r.clean.argmax(-1)[:, None] != eye)[:, None, None, :]}


def _over_emotions(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    if mask is None:
        return values.mean(-1)
    mask = np.broadcast_to(mask, values.shape)
    return (values * mask).sum(-1) / mask.sum(-1)


def best_cell(diff: np.ndarray, n_flip: int, seed: int) -> dict:
    """The (layer, dose) cell of `diff (n, n_layers, n_doses)` (per item, steered minus random) with the largest
    mean, its max-statistic p over every cell (one sign flip per item used in every cell, so the null of the maximum
    keeps the cells' correlation) and its uncorrected per-cell p. Indices, not layer numbers."""
    observed, p_cell, p_max = stats.sign_flip_test(diff.reshape(len(diff), -1), n_flip, seed)
    best = int(np.argmax(observed))
    j, a = np.unravel_index(best, diff.shape[1:])
    return {"layer_index": int(j), "dose_index": int(a), "delta_minus_random": float(observed[best]),
            "p_max": p_max, "p_cell": float(p_cell[best]), "n_cells": int(observed.size), "n_flip": n_flip,
            "p_cells": p_cell.reshape(diff.shape[1:])}


def steering_summary(r, emotions, n_boot: int, seed: int, n_flip: int) -> dict:
    """rows: one per (layer, dose) with share steered to e (over the 7 emotions each item did not answer),
    change of e's score, each beside the random control and their difference, with intervals and the per-cell p;
    best: the cell chosen by the max-statistic; per_emotion: at the best cell, each emotion's share and change
    against the random control; specificity: at the best cell, the 8 x 8 mean change of every emotion's score
    (row: the direction, column: the score read), its diagonal against the off-diagonal, and the random row."""
    v = cell_values(r)
    counts = stats.index_counts(stats.bootstrap_index(len(r.clean), n_boot, seed), len(r.clean))
    share = {arm: _over_emotions(v[arm], v["eligible"]) for arm in ("to_e", "random_to_e")}
    delta = {arm: _over_emotions(v[arm]) for arm in ("delta", "random_delta")}
    best = best_cell(delta["delta"] - delta["random_delta"], n_flip, seed)
    rows = []
    for j, layer in enumerate(r.layers):
        for a, dose in enumerate(r.doses):
            rows.append({"layer": layer, "dose": dose,
                         **_arms("share", share["to_e"][:, j, a], share["random_to_e"][:, j, a], counts),
                         **_arms("delta", delta["delta"][:, j, a], delta["random_delta"][:, j, a], counts),
                         "p_cell": float(best["p_cells"][j, a])})
    j, a = best["layer_index"], best["dose_index"]
    cell = rows[j * len(r.doses) + a]
    best = {"layer": r.layers[j], "dose": r.doses[a], **{k: best[k] for k in ("p_max", "p_cell", "n_cells", "n_flip")},
            **{k: cell[k] for k in cell if k.startswith(("share", "random_share", "delta", "random_delta"))}}
    per_emotion = {}
    for e, name in enumerate(emotions):
        ok = v["eligible"][:, 0, 0, e]
        per_emotion[name] = {**_subset_arms("share", v["to_e"][ok, j, a, e], v["random_to_e"][ok, j, a, e], n_boot,
                                            seed),
                             **_arms("delta", v["delta"][:, j, a, e], v["random_delta"][:, j, a, e], counts),
                             "n": int(ok.sum())}
    return {"rows": rows, "best": best, "earliest": earliest(rows), "per_emotion": per_emotion,
            "specificity": specificity(r, j, a, emotions, counts)}


def earliest(rows: list[dict], bar: float = 0.5) -> dict | None:
    """The shallowest steered layer (and its smallest dose) at which the share steered to e beats the random control
    by more than `bar` with the whole interval: the best cell by effect size is usually the last layer at the largest
    dose, where adding the emotion word's own readout direction is close to trivial, so depth is read here. None when
    no cell clears the bar."""
    for row in sorted(rows, key=lambda r: (r["layer"], r["dose"])):
        if row["share_minus_random_low"] > bar:
            return {"layer": row["layer"], "dose": row["dose"], "bar": bar,
                    **{k: row[k] for k in row if k.startswith(("share", "random_share"))}}
    return None


def specificity(r, j: int, a: int, emotions, counts: np.ndarray) -> dict:
    """At cell (j, a): matrix `(k, k)` mean over items of score_f(steered with d_e) - score_f(clean), random `(k,)`
    the same under the random directions, and diagonal minus off-diagonal mean with its interval over items."""
    change = r.steer[:, j, a] - r.clean[:, None, :]                  # (n, k, k)
    k = change.shape[-1]
    off = ~np.eye(k, dtype=bool)
    diag = np.einsum("nee->ne", change).mean(-1)
    offdiag = change[:, off].mean(-1)
    return {"matrix": change.mean(0), "random": (r.random[:, j, a].mean(1) - r.clean).mean(0),
            "emotions": list(emotions), **_ci("diagonal", diag, counts), **_ci("off_diagonal", offdiag, counts),
            **_ci("diagonal_minus_off", diag - offdiag, counts)}


def grain_summary(g, emotions, n_boot: int, seed: int, n_flip: int) -> dict:
    """Items of emotion o steered with every d_e, e != o: moved (answer becomes e) and the change of
    LD = score(e) - score(o) from the clean run, per item averaged over the seven e, each beside the same-norm random
    control (the random runs scored with the same e and o), with intervals over items and a one-sided sign-flip p of
    (steered minus random) on the LD change. per_emotion: the same per target emotion e (items of other emotions)."""
    n, k = g.clean.shape
    eye = np.arange(k)
    other = g.own[:, None] != eye                                     # (n, k): e != own
    ld_clean = g.clean - g.clean[np.arange(n), g.own][:, None]        # (n, k) LD_e on the clean run
    ld_steer = g.steer[:, eye, eye] - g.steer[np.arange(n), :, g.own] - ld_clean
    rand_own = g.random[np.arange(n), :, g.own]                       # (n, n_random)
    ld_random = (g.random - rand_own[..., None]).mean(1) - ld_clean
    moved = (g.steer.argmax(-1) == eye).astype(float)
    moved_random = (g.random.argmax(-1)[..., None] == eye).mean(1)
    mean = lambda x: (x * other).sum(-1) / other.sum(-1)  # noqa: E731
    counts = stats.index_counts(stats.bootstrap_index(n, n_boot, seed), n)
    diff = mean(ld_steer) - mean(ld_random)
    _, p, _ = stats.sign_flip_test(diff[:, None], n_flip, seed)
    out = {"layer": g.layer, "dose": g.dose, "n": n, "p": float(p[0]),
           **_arms("moved", mean(moved), mean(moved_random), counts),
           **_arms("ld_change", mean(ld_steer), mean(ld_random), counts)}
    per = {}
    for e, name in enumerate(emotions):
        ok = other[:, e]
        per[name] = {"n": int(ok.sum()), **_subset_arms("moved", moved[ok, e], moved_random[ok, e], n_boot, seed),
                     **_subset_arms("ld_change", ld_steer[ok, e], ld_random[ok, e], n_boot, seed)}
    out["per_emotion"] = per
    return out
