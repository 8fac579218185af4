"""dvc stage `cka`: linear CKA of site h between every pair of models in params `run.models`, at `cka.n_depths`
relative depths, per set of `cka.sets` (the same ids in the same order in every model, checked), on standardized
features; at matched depths beside a row-permutation null and a half-sample interval. Debiased CKA gets its own
half-sample interval and is compared with the pair of the two models' random-init controls at the same depths (the
reference that can fail: two models reading the same texts always beat the shuffled-rows null), paired by using the
same half-samples.

Writes metrics/cka.json (per pair and set: mean CKA over matched depths, its null, the depths above the null after
Benjamini-Hochberg, best aligned layers, mean debiased CKA and its difference from the random-init pair with
intervals; pair-level numbers are the mean over sets, intervals from the mean of the per-set half-samples) and
plots/cka.csv.
"""
from __future__ import annotations

import argparse
import itertools
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from emotion_circuits import cli, geometry as geo, stats
from emotion_circuits.config import ConfigError, load_params
from emotion_circuits.io import write_csv, write_json
from emotion_circuits.seeds import derive

log = logging.getLogger("cka")


def load_model(root: Path, model: str, settings: geo.CkaSettings, reference: dict | None) -> dict:
    """Per set, Gram matrices `(n, n)` at each relative depth of one model (standardized features); ids checked."""
    files, grams, n_layers = {}, {}, None
    for name in settings.sets:
        data = geo.read_h(root / model / settings.prompt / f"{name}.npz", emotions_required=False)
        if reference is not None:
            geo.check_same_ids(reference[name], data)
        files[name] = data
        n_layers = data["h"].shape[1]
        depths, layers = geo.depth_layers(n_layers, settings.n_depths)
        grams[name] = [geo.gram(data["h"][:, l], settings.standardize) for l in layers]
    return {"files": files, "n": {s: len(f["h"]) for s, f in files.items()}, "n_layers": n_layers,
            "depths": depths, "layers": layers, "grams": grams}


def compare(a: dict, b: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """`(n_depths, n_depths)` CKA and debiased CKA between the depths of models a (rows) and b (columns), set `name`."""
    cka = np.array([[geo.cka_from_grams(K, L) for L in b["grams"][name]] for K in a["grams"][name]])
    deb = np.array([[geo.cka_from_grams(K, L, debiased=True) for L in b["grams"][name]] for K in a["grams"][name]])
    return cka, deb


def pair_metrics(a: dict, b: dict, cka: np.ndarray, deb: np.ndarray) -> dict:
    i, j = np.unravel_index(np.nanargmax(cka), cka.shape)
    best_for_a = np.nanargmax(cka, axis=1)                          # depth index of b best aligned with each depth of a
    idx = np.arange(len(cka))
    return {"mean_matched_cka": float(np.nanmean(cka[idx, idx])),
            "mean_matched_cka_debiased": float(np.nanmean(deb[idx, idx])),
            "best_cka": cka[i, j], "best_layer_a": int(a["layers"][i]), "best_layer_b": int(b["layers"][j]),
            "best_depth_a": a["depths"][i], "best_depth_b": b["depths"][j],
            "matched_is_best_fraction": float(np.mean(best_for_a == idx)),
            "mean_abs_depth_offset": float(np.mean(np.abs(a["depths"][best_for_a] - a["depths"])))}


def matched(a: dict, b: dict, name: str, settings: geo.CkaSettings, seed: int) -> list[dict]:
    """At each matched depth: CKA with its bootstrap interval, row-permutation null and p (BH over depths)."""
    out = [geo.cka_null_and_interval(K, L, settings.n_perm, settings.n_boot, derive(seed, "depth", d))
           for d, (K, L) in enumerate(zip(a["grams"][name], b["grams"][name]))]
    q = stats.benjamini_hochberg(np.array([o["p"] for o in out]))
    return [{**o, "q_bh": float(v)} for o, v in zip(out, q)]


def debiased_matched(a: dict, b: dict, name: str, halves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Debiased CKA at each matched depth `(n_depths,)` and on each half-sample `(n_boot, n_depths)`."""
    points = np.array([geo.cka_from_grams(K, L, debiased=True) for K, L in zip(a["grams"][name], b["grams"][name])])
    draws = np.stack([geo.debiased_half_draws(K, L, halves) for K, L in zip(a["grams"][name], b["grams"][name])], 1)
    return points, draws


def random_init_pair(params, ma: str, mb: str, models) -> tuple[str, str] | None:
    """The pair of the registry's random-init controls of `ma` and `mb` (`source: random-init, base: ...`) when
    both are in `models`; None otherwise (e.g. for a pair that already includes a random-init model)."""
    control = {s.base: s.name for s in params.models.values() if s.source == "random-init"}
    pair = control.get(ma), control.get(mb)
    return pair if all(m in models for m in pair) else None


def debiased_summary(points: np.ndarray, draws: np.ndarray, prefix: str) -> dict:
    """Mean over matched depths of `points (n_depths,)` with its half-sample interval from `draws (n_boot, D)`."""
    mean = float(np.nanmean(points))
    low, high = geo.half_interval(mean, np.nanmean(draws, axis=1))
    return {prefix: mean, f"{prefix}_low": low, f"{prefix}_high": high}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--activations", default="data/activations")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    seed = derive(params.seed, "cka")
    settings = params.section("cka", geo.CkaSettings)
    models = params.run.models
    if len(models) < 2:
        raise ConfigError(f"params.yaml: run.models: CKA needs at least two models, got {list(models)}")
    root = Path(args.activations)
    loaded = {}
    for model in models:
        reference = loaded[models[0]]["files"] if loaded else None
        loaded[model] = load_model(root, model, settings, reference)
        log.info("%s: %s stimuli, %d layers", model, loaded[model]["n"], loaded[model]["n_layers"])
    # one set of half-samples per set, shared by every pair: differences between pairs are paired
    halves = {name: geo.half_samples(loaded[models[0]]["n"][name], settings.n_boot, derive(seed, "halves", name))
              for name in settings.sets}
    debiased = {}

    def deb_of(ma, mb, name):
        if (ma, mb, name) not in debiased:
            debiased[ma, mb, name] = debiased_matched(loaded[ma], loaded[mb], name, halves[name])
        return debiased[ma, mb, name]

    pairs, rows = {}, []
    for ma, mb in itertools.combinations(models, 2):
        a, b = loaded[ma], loaded[mb]
        reference = random_init_pair(params, ma, mb, models)
        per_set, pooled = {}, defaultdict(list)
        for name in settings.sets:
            cka, deb = compare(a, b, name)
            found = matched(a, b, name, settings, derive(seed, "null", name))
            points, draws = deb_of(ma, mb, name)
            per_set[name] = {**pair_metrics(a, b, cka, deb),
                             **debiased_summary(points, draws, "mean_matched_cka_debiased"),
                             "mean_matched_null_p95": float(np.mean([f["null_p95"] for f in found])),
                             "n_depths_above_null_bh": int(sum(f["q_bh"] < 0.05 for f in found))}
            pooled["deb"].append((points, draws))
            deb_rows = [geo.half_interval(points[d], draws[:, d]) for d in range(len(points))]
            ref_rows = [(None, None, None)] * len(points)
            if reference is not None:
                ref_points, ref_draws = deb_of(*reference, name)
                per_set[name] |= {"mean_matched_reference_debiased": float(np.nanmean(ref_points)),
                                  **debiased_summary(points - ref_points, draws - ref_draws,
                                                     "mean_matched_debiased_minus_reference")}
                pooled["diff"].append((points - ref_points, draws - ref_draws))
                pooled["ref"].append((ref_points, ref_draws))
                ref_rows = [(ref_points[d], *geo.half_interval(points[d] - ref_points[d], draws[:, d] - ref_draws[:, d]))
                            for d in range(len(points))]
            for i, j in itertools.product(range(len(cka)), repeat=2):
                on = found[i] if i == j else {}
                deb_ci, ref = (deb_rows[i], ref_rows[i]) if i == j else ((None, None), (None, None, None))
                rows.append({"set": name, "model_a": ma, "model_b": mb, "depth_a": a["depths"][i],
                             "depth_b": b["depths"][j], "layer_a": a["layers"][i], "layer_b": b["layers"][j],
                             "cka": cka[i, j], "cka_debiased": deb[i, j], "cka_low": on.get("low"),
                             "cka_high": on.get("high"), "null_p95": on.get("null_p95"), "p": on.get("p"),
                             "q_bh": on.get("q_bh"), "cka_debiased_low": deb_ci[0], "cka_debiased_high": deb_ci[1],
                             "reference_debiased": ref[0],
                             "debiased_minus_reference": None if ref[0] is None else deb[i, j] - ref[0],
                             "minus_reference_low": ref[1], "minus_reference_high": ref[2]})
        first = per_set[settings.sets[0]]
        mean = {k: float(np.mean([v[k] for v in per_set.values()])) for k in ("mean_matched_cka", "mean_matched_null_p95")}

        def over_sets(key, prefix):   # mean over sets; interval from the mean of the (independent) per-set draws
            return debiased_summary(np.mean([p for p, _ in pooled[key]], axis=0),
                                    np.mean([d for _, d in pooled[key]], axis=0), prefix)

        deb_pair = over_sets("deb", "mean_matched_cka_debiased")
        if reference is not None:
            deb_pair |= {"reference": f"{reference[0]}__{reference[1]}",
                         "mean_matched_reference_debiased": over_sets("ref", "r")["r"],
                         **over_sets("diff", "mean_matched_debiased_minus_reference")}
        pairs[f"{ma}__{mb}"] = {"model_a": ma, "model_b": mb, **mean, **deb_pair,
                                **{k: first[k] for k in ("best_cka", "best_layer_a", "best_layer_b", "best_depth_a",
                                                         "best_depth_b")}, "sets": per_set}
        log.info("%s vs %s: mean matched CKA %s; debiased %.3f [%.3f, %.3f]%s", ma, mb, ", ".join(
            f"{s} {v['mean_matched_cka']:.3f} (null p95 {v['mean_matched_null_p95']:.3f})" for s, v in per_set.items()),
            deb_pair["mean_matched_cka_debiased"], deb_pair["mean_matched_cka_debiased_low"],
            deb_pair["mean_matched_cka_debiased_high"], "" if reference is None else
            " minus random-init pair {:.3f} [{:.3f}, {:.3f}]".format(
                *(deb_pair[f"mean_matched_debiased_minus_reference{x}"] for x in ("", "_low", "_high"))))
    columns = ["set", "model_a", "model_b", "depth_a", "depth_b", "layer_a", "layer_b", "cka", "cka_debiased",
               "cka_low", "cka_high", "null_p95", "p", "q_bh", "cka_debiased_low", "cka_debiased_high",
               "reference_debiased", "debiased_minus_reference", "minus_reference_low", "minus_reference_high"]
    write_csv(Path(args.plots) / "cka.csv", rows, columns)
    write_json(Path(args.metrics) / "cka.json",
               {"prompt": settings.prompt, "sets": list(settings.sets), "site": "h", "n_depths": settings.n_depths,
                "standardize": settings.standardize, "n_perm": settings.n_perm, "n_boot": settings.n_boot,
                "interval": "half-samples (n/2 stimuli without replacement)",
                "n_stimuli": loaded[models[0]]["n"], "pairs": pairs})


if __name__ == "__main__":
    cli.run(main)
