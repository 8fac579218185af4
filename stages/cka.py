"""dvc stage `cka`: linear CKA of site h between every pair of models in params `run.models`, at `cka.n_depths`
relative depths, on the stimuli of `cka.sets` (the same ids in the same order in every model, checked).

Writes metrics/cka.json (per pair: mean CKA over matched depths, best aligned layers) and plots/cka.csv.
"""
from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np

from emotion_circuits import cli, geometry as geo
from emotion_circuits.config import ConfigError, load_params
from emotion_circuits.io import write_csv, write_json

log = logging.getLogger("cka")


def load_model(root: Path, model: str, settings: geo.CkaSettings, reference: dict | None) -> dict:
    """Gram matrices `(n, n)` at each relative depth of one model, over the sets concatenated; ids checked."""
    hs, ids = [], []
    for name in settings.sets:
        data = geo.read_h(root / model / settings.prompt / f"{name}.npz", emotions_required=False)
        if reference is not None:
            geo.check_same_ids(reference[name], data)
        hs.append(data["h"])
        ids.append(data)
    h = np.concatenate(hs)
    n_layers = h.shape[1]
    depths, layers = geo.depth_layers(n_layers, settings.n_depths)
    return {"files": dict(zip(settings.sets, ids)), "n": len(h), "n_layers": n_layers, "depths": depths,
            "layers": layers, "grams": [geo.gram(h[:, l]) for l in layers]}


def compare(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(n_depths, n_depths)` CKA and debiased CKA between the depths of models a (rows) and b (columns)."""
    cka = np.array([[geo.cka_from_grams(K, L) for L in b["grams"]] for K in a["grams"]])
    deb = np.array([[geo.cka_from_grams(K, L, debiased=True) for L in b["grams"]] for K in a["grams"]])
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
        cka, deb = compare(a, b)
        pairs[f"{ma}__{mb}"] = {"model_a": ma, "model_b": mb, **pair_metrics(a, b, cka, deb)}
        for i, j in itertools.product(range(len(cka)), repeat=2):
            rows.append({"model_a": ma, "model_b": mb, "depth_a": a["depths"][i], "depth_b": b["depths"][j],
                         "layer_a": a["layers"][i], "layer_b": b["layers"][j], "cka": cka[i, j],
                         "cka_debiased": deb[i, j]})
        log.info("%s vs %s: mean matched CKA %.3f (debiased %.3f)", ma, mb,
                 pairs[f"{ma}__{mb}"]["mean_matched_cka"], pairs[f"{ma}__{mb}"]["mean_matched_cka_debiased"])
    write_csv(Path(args.plots) / "cka.csv", rows)
    write_json(Path(args.metrics) / "cka.json",
               {"prompt": settings.prompt, "sets": list(settings.sets), "site": "h", "n_depths": settings.n_depths,
                "n_stimuli": loaded[models[0]]["n"], "pairs": pairs})


if __name__ == "__main__":
    cli.run(main)
