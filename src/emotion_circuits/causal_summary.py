"""Statistics of the causal experiments as pure functions on their per-item arrays (no model): patching recovery with
a two-way cluster bootstrap and a max-statistic p, knockout against matched random controls with sign-flip tests and
Benjamini-Hochberg, and split-half head selection. `causal_report` writes what these return.
"""
from __future__ import annotations

import numpy as np

from . import stats

HALF = 0.5  # the h curve's headline: first layer where recovery exceeds this


def _ci(name: str, point, resampled) -> dict:
    value, low, high = stats.interval(point, resampled)
    return {name: value, f"{name}_low": low, f"{name}_high": high}


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else np.nan


def first_above(curve: np.ndarray, layers, threshold: float = HALF) -> float:
    """First layer of `curve (..., n_layers)` above `threshold`, `(...)` (inf where none is)."""
    above = np.asarray(curve) > threshold
    first = np.where(above.any(-1), np.asarray(layers)[above.argmax(-1)], np.inf)
    return first


def patching_summary(r, n_boot: int, seed: int, n_flip: int) -> dict:
    """Per cell (site, layer): recovery = (mean LD_patched - mean LD_target) / (mean LD_source - mean LD_target) over
    pairs (a ratio of means), for the patch and the same-emotion control (scored with the pair's emotions and the
    pair's denominator), their difference; answer transfer (patched top-1 == the source's clean top-1) and flip rate
    (patched top-1 == source emotion, among pairs whose clean target does not already answer it), each with the
    unpatched baseline and the control. Every interval is a two-way cluster bootstrap over target and source items;
    numerator and denominator are recomputed per resample; patch and control share resamples (paired).
    `r`: a `causal.PatchingResult`. Returns {"denominator", "rows" (one dict per cell), "h" (first layer above 0.5),
    "best" (the a / m cell with the largest recovery above control and its max-statistic p)}."""
    counts = stats.two_way_counts(r.pairs[:, 0], r.pairs[:, 1], n_boot, seed)
    den = (r.ld_source - r.ld_target).astype(np.float64)
    den_boot = stats.weighted_means(den, counts)
    den_ci = _ci("denominator", den.mean(), den_boot)
    covers = not (den_ci["denominator_low"] > 0 or den_ci["denominator_high"] < 0)
    rec, boot = {}, {}
    for arm in ("patch", "control"):
        num = getattr(r, f"ld_{arm}") - r.ld_target[:, None, None]
        rec[arm] = num.mean(0) / den.mean()
        boot[arm] = stats.weighted_means(num, counts) / den_boot[:, None, None]
    transfer = {"patch": r.top1_patch == r.top1_source[:, None, None],
                "control": r.top1_control == r.top1_source[:, None, None]}
    base_transfer = (r.top1_target == r.top1_source).astype(float)
    eligible = r.top1_target != r.src
    flip = {arm: getattr(r, f"top1_{arm}")[eligible] == r.src[eligible, None, None] for arm in ("patch", "control")}
    ce = counts[:, eligible]
    base = {**_ci("baseline_transfer", base_transfer.mean(), stats.weighted_means(base_transfer, counts)),
            "baseline_flip": 0.0, "n_pairs": len(r.pairs), "n_flip_pairs": int(eligible.sum()),
            "baseline_recovery": 0.0}
    t_boot = {arm: stats.weighted_means(v.astype(float), counts) for arm, v in transfer.items()}
    f_boot = {arm: stats.weighted_means(v.astype(float), ce) for arm, v in flip.items()}
    rows = []
    for i, site in enumerate(r.sites):
        for j, layer in enumerate(r.layers):
            row = {"site": site, "layer": layer}
            row.update(_ci("recovery", rec["patch"][i, j], boot["patch"][:, i, j]))
            row.update(_ci("control_recovery", rec["control"][i, j], boot["control"][:, i, j]))
            row.update(_ci("recovery_minus_control", rec["patch"][i, j] - rec["control"][i, j],
                           boot["patch"][:, i, j] - boot["control"][:, i, j]))
            for name, values, rs in (("transfer", transfer, t_boot), ("flip", flip, f_boot)):
                row.update(_ci(name, _mean(values["patch"][:, i, j]), rs["patch"][:, i, j]))
                row.update(_ci(f"control_{name}", _mean(values["control"][:, i, j]), rs["control"][:, i, j]))
                paired = values["patch"][:, i, j] * 1.0 - values["control"][:, i, j]
                row.update(_ci(f"{name}_minus_control", _mean(paired), rs["patch"][:, i, j] - rs["control"][:, i, j]))
            row["above_control"] = bool(row["recovery_minus_control_low"] > 0)
            row["denominator_covers_zero"] = covers
            row.update(base)
            rows.append(row)
    out = {"denominator": {**den_ci, "covers_zero": covers}, "baseline": base, "rows": rows}
    if "h" in r.sites:
        i = r.sites.index("h")
        firsts = first_above(boot["patch"][:, i], r.layers)
        point = first_above(rec["patch"][i], r.layers)
        beyond = max(r.layers) + 1                      # a resample where no layer exceeds 0.5
        low, high = np.percentile(np.where(np.isinf(firsts), beyond, firsts), [2.5, 97.5])
        out["h"] = {"first_layer": None if np.isinf(point) else int(point),
                    "first_layer_low": None if low >= beyond else float(low),
                    "first_layer_high": None if high >= beyond else float(high), "threshold": HALF}
    inner = [i for i, site in enumerate(r.sites) if site != "h"]
    if inner:
        out["best"] = best_cell(r, inner, den, n_flip, seed)
    return out


def best_cell(r, inner: list[int], den: np.ndarray, n_flip: int, seed: int) -> dict:
    """The a / m cell with the largest recovery_patch - recovery_control, and its max-statistic p: per target item
    swap patch and control (one sign flip per target, used in every cell), recompute every cell's difference and
    take the max over cells; p = share of flips whose max >= the observed max (observed counted). The difference of
    a cell is sum over pairs (LD_patch - LD_control) / sum over pairs of the denominator, so a target's flip negates
    its summed difference."""
    targets, code = np.unique(r.pairs[:, 0], return_inverse=True)
    diff = (r.ld_patch - r.ld_control)[:, inner].reshape(len(r.pairs), -1).astype(np.float64)
    per_target = np.zeros((len(targets), diff.shape[1]))
    np.add.at(per_target, code, diff)
    scale = den.sum()
    observed, p_cell, p_max = stats.sign_flip_test(per_target, n_flip, seed, scale=scale if scale > 0 else np.nan)
    k = int(np.argmax(observed))
    i, j = inner[k // len(r.layers)], k % len(r.layers)
    return {"site": r.sites[i], "layer": r.layers[j], "recovery_minus_control": float(observed[k]),
            "p_max": p_max if scale > 0 else np.nan, "p_cell": float(p_cell[k]) if scale > 0 else np.nan,
            "n_cells": diff.shape[1], "n_flip": n_flip}


FDR = 0.05  # Benjamini-Hochberg level of the knockout cells and the tested heads


def _boot_mean(values: np.ndarray, counts: np.ndarray, name: str) -> dict:
    return _ci(name, _mean(values), stats.weighted_means(values, counts))


def knockout_summary(r, n_boot: int, seed: int, n_flip: int) -> dict:
    """Per cell (site, layer, ablation): mean drop and KL of the ablation and of its matched controls, the per-stimulus
    difference (ablation minus the mean of its controls) with a bootstrap interval over stimuli, a one-sided
    sign-flip p over stimuli (H0: the ablation moves the answer no more than a random displacement of the same norm)
    and BH q over every cell (layers x sites x ablations), per metric. Critical: q < FDR (so effect > control).
    `r`: a `causal.KnockoutResult`. Returns {"rows": one dict per cell,
    "critical": {metric: {site: {ablation: [layers]}}}}."""
    counts = stats.index_counts(stats.bootstrap_index(len(r.drop), n_boot, seed), len(r.drop))
    rows = [{"site": site, "layer": layer, "ablation": kind}
            for site in r.sites for layer in r.layers for kind in r.ablations]
    critical = {}
    for metric in ("drop", "kl"):
        effect, control = getattr(r, metric), getattr(r, f"control_{metric}")
        diff = (effect - control).astype(np.float64)
        _, p, _ = stats.sign_flip_test(diff.reshape(len(diff), -1), n_flip, seed)
        q = stats.benjamini_hochberg(p)
        flat = [a.reshape(len(a), -1) for a in (effect, control, diff)]
        critical[metric] = {site: {kind: [] for kind in r.ablations} for site in r.sites}
        for c, row in enumerate(rows):
            row.update(_boot_mean(flat[0][:, c], counts, metric))
            row.update(_boot_mean(flat[1][:, c], counts, f"control_{metric}"))
            row.update(_boot_mean(flat[2][:, c], counts, f"{metric}_minus_control"))
            row[f"{metric}_p"], row[f"{metric}_q"] = float(p[c]), float(q[c])
            row[f"{metric}_critical"] = bool(q[c] < FDR)
            if q[c] < FDR:
                critical[metric][row["site"]][row["ablation"]].append(row["layer"])
    norm = r.norm.reshape(len(r.norm), -1).mean(0)
    for c, row in enumerate(rows):
        row["norm"] = float(norm[c])
    return {"rows": rows, "critical": critical}


def heads_summary(r, n_boot: int, seed: int, n_flip: int) -> dict:
    """The heads chosen on the rank half, tested on the test half only: per tested head the mean drop of zeroing it
    and of its matched controls, their difference with a bootstrap interval over test stimuli, a one-sided
    sign-flip p and BH q over the tested heads. `r`: a `causal.HeadResult`. Returns {"rows": one per tested head in
    rank order, "survivors": names with q < FDR}."""
    counts = stats.index_counts(stats.bootstrap_index(len(r.drop), n_boot, seed), len(r.drop))
    diff = (r.drop - r.control_drop).astype(np.float64)
    _, p, _ = stats.sign_flip_test(diff, n_flip, seed)
    q = stats.benjamini_hochberg(p)
    rank_mean = r.rank_drop.mean(0)
    rows = []
    for t, (layer, head) in enumerate(r.tested):
        j = r.layers.index(int(layer))
        row = {"rank": t + 1, "layer": int(layer), "head": int(head), "name": f"L{layer}H{head}",
               "rank_drop": float(rank_mean[j, head])}
        row.update(_boot_mean(r.drop[:, t], counts, "drop"))
        row.update(_boot_mean(r.control_drop[:, t], counts, "control_drop"))
        row.update(_boot_mean(diff[:, t], counts, "drop_minus_control"))
        row.update(kl=_mean(r.kl[:, t]), control_kl=_mean(r.control_kl[:, t]), p=float(p[t]), q=float(q[t]),
                   survives=bool(q[t] < FDR))
        rows.append(row)
    return {"rows": rows, "survivors": [row["name"] for row in rows if row["survives"]]}
