"""dvc stage `cka`: linear CKA of site h between every pair of models in params `run.models`, at `cka.n_depths`
relative depths, per set of `cka.sets` (the same ids in the same order in every model, checked), on standardized
features; at matched depths beside a row-permutation null and a stimulus-bootstrap interval.

Writes metrics/cka.json (per pair and set: mean CKA over matched depths, its null, the depths above the null after
Benjamini-Hochberg, best aligned layers; pair-level numbers are the mean over sets) and plots/cka.csv.
"""
from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np

from emotion_circuits import cli, geometry as geo, stats
from emotion_circuits.config import ConfigError, load_params
from emotion_circuits.io import write_csv, write_json

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
    out = [geo.cka_null_and_interval(K, L, settings.n_perm, settings.n_boot, seed + d)
           for d, (K, L) in enumerate(zip(a["grams"][name], b["grams"][name]))]
    q = stats.benjamini_hochberg(np.array([o["p"] for o in out]))
    return [{**o, "q_bh": float(v)} for o, v in zip(out, q)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--activations", default="data/activations")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    settings = params.section("cka", geo.CkaSettings)
    models = params.run.models
    if len(models) < 2:
        raise ConfigError(f"params.yaml: run.models: CKA needs at least two models, got {list(models)}")
    root = Path(args.activations)
    loaded = {}
    for model in models:
        reference = loaded[models[0]]["files"] if loaded else None
        loaded[model] = load_model(root, model, settings, reference)
        log.info("%s: %d stimuli, %d layers", model, loaded[model]["n"], loaded[model]["n_layers"])
    pairs, rows = {}, []
    for ma, mb in itertools.combinations(models, 2):
        a, b = loaded[ma], loaded[mb]
        per_set = {}
        for name in settings.sets:
            cka, deb = compare(a, b, name)
            found = matched(a, b, name, settings, params.seed)
            per_set[name] = {**pair_metrics(a, b, cka, deb),
                             "mean_matched_null_p95": float(np.mean([f["null_p95"] for f in found])),
                             "n_depths_above_null_bh": int(sum(f["q_bh"] < 0.05 for f in found))}
            for i, j in itertools.product(range(len(cka)), repeat=2):
                on = found[i] if i == j else {}
                rows.append({"set": name, "model_a": ma, "model_b": mb, "depth_a": a["depths"][i],
                             "depth_b": b["depths"][j], "layer_a": a["layers"][i], "layer_b": b["layers"][j],
                             "cka": cka[i, j], "cka_debiased": deb[i, j], "cka_low": on.get("low"),
                             "cka_high": on.get("high"), "null_p95": on.get("null_p95"), "p": on.get("p"),
                             "q_bh": on.get("q_bh")})
        first = per_set[settings.sets[0]]
        mean = {k: float(np.mean([v[k] for v in per_set.values()]))
                for k in ("mean_matched_cka", "mean_matched_cka_debiased", "mean_matched_null_p95")}
        pairs[f"{ma}__{mb}"] = {"model_a": ma, "model_b": mb, **mean,
                                **{k: first[k] for k in ("best_cka", "best_layer_a", "best_layer_b", "best_depth_a",
                                                         "best_depth_b")}, "sets": per_set}
        log.info("%s vs %s: mean matched CKA %s", ma, mb, ", ".join(
            f"{s} {v['mean_matched_cka']:.3f} (null p95 {v['mean_matched_null_p95']:.3f})" for s, v in per_set.items()))
    columns = ["set", "model_a", "model_b", "depth_a", "depth_b", "layer_a", "layer_b", "cka", "cka_debiased",
               "cka_low", "cka_high", "null_p95", "p", "q_bh"]
    write_csv(Path(args.plots) / "cka.csv", rows, columns)
    write_json(Path(args.metrics) / "cka.json",
               {"prompt": settings.prompt, "sets": list(settings.sets), "site": "h", "n_depths": settings.n_depths,
                "standardize": settings.standardize, "n_perm": settings.n_perm, "n_boot": settings.n_boot,
                "n_stimuli": loaded[models[0]]["n"], "pairs": pairs})


if __name__ == "__main__":
    cli.run(main)
