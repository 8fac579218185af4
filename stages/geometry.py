"""dvc stage `geometry` (one model): silhouette with a permutation null, PCA, centroid cosines and agreement with
Plutchik's wheel at every layer of site h, for each set in params `geometry.sets`.

Writes metrics/<model>/geometry.json, plots/<model>/geometry.csv, plots/<model>/pca_<set>.csv and
plots/<model>/centroid_cosine_<set>.csv.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from emotion_circuits import cli, geometry as geo
from emotion_circuits.config import EMOTIONS, load_params
from emotion_circuits.io import DataError, write_csv, write_json
from emotion_circuits.seeds import derive

log = logging.getLogger("geometry")


def set_rows(name: str, g: geo.SetGeometry, n_layers: int) -> list[dict]:
    rows = []
    for layer in range(n_layers):
        row = {"set": name, "layer": layer, "depth": (layer + 1) / n_layers, "silhouette": g.silhouette[layer],
               "null_mean": g.null_mean[layer], "silhouette_p": g.p_layer[layer], "wheel_rho": g.wheel_rho[layer],
               "wheel_p": g.wheel_p[layer], "opposite_cosine": g.opposite[layer], "adjacent_cosine": g.adjacent[layer]}
        row.update({f"pc{c + 1}_var": v for c, v in enumerate(g.explained[layer])})
        rows.append(row)
    return rows


def set_metrics(g: geo.SetGeometry, n: int, n_layers: int) -> dict:
    p, w = g.peak, g.wheel_best
    return {"n_stimuli": n, "n_layers": n_layers, "best_layer": p, "best_depth": (p + 1) / n_layers,
            "best_layer_given": g.peak_given, "silhouette": g.silhouette[p], "silhouette_null_mean": g.null_mean[p],
            "silhouette_p": g.p_peak, "wheel_spearman": g.wheel_rho[p], "wheel_p": g.wheel_p[p],
            "opposite_cosine": g.opposite[p], "adjacent_cosine": g.adjacent[p],
            "adjacent_minus_opposite": g.adjacent[p] - g.opposite[p], "adjacent_minus_opposite_p": g.gap_p[p],
            "pc1_var": g.explained[p, 0], "pc2_var": g.explained[p, 1],
            "wheel_best_layer": w, "wheel_best_spearman": g.wheel_rho[w], "wheel_best_p": g.wheel_best_p}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--layer", type=int, default=None, help="peak layer to report (default: highest silhouette)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--activations", default="data/activations")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    params.model(args.model)
    settings = params.section("geometry", geo.GeometrySettings)
    wheel_null = geo.WheelNull.exact()
    metrics = {"prompt": settings.prompt, "metric": settings.metric, "standardize": settings.standardize,
               "n_perm": settings.n_perm, "site": "h"}
    rows = []
    plots = Path(args.plots) / args.model
    for name in settings.sets:
        path = Path(args.activations) / args.model / settings.prompt / f"{name}.npz"
        data = geo.read_h(path)
        n, n_layers, _ = data["h"].shape
        log.info("%s set %s: %d stimuli, %d layers", args.model, name, n, n_layers)
        try:
            g = geo.analyze_set(data["h"], data["emotions"], settings, derive(params.seed, "geometry", name), args.layer,
                                 wheel_null)
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None
        metrics[name] = set_metrics(g, n, n_layers)
        rows += set_rows(name, g, n_layers)
        write_csv(plots / f"pca_{name}.csv",
                  [{"id": i, "emotion": e, "pc1": x, "pc2": y}
                   for i, e, (x, y) in zip(data["ids"], data["emotions"], g.coords)])
        wheel = geo.wheel_distances()
        write_csv(plots / f"centroid_cosine_{name}.csv",
                  [{"emotion_a": a, "emotion_b": b, "cosine": g.cosine[i, j], "wheel_steps": wheel[i, j]}
                   for i, a in enumerate(EMOTIONS) for j, b in enumerate(EMOTIONS)])
        log.info("%s set %s: peak layer %d silhouette %.3f (p %.4f), wheel rho %.3f (p %.4f)", args.model, name,
                 g.peak, g.silhouette[g.peak], g.p_peak, g.wheel_rho[g.peak], g.wheel_p[g.peak])
    write_csv(plots / "geometry.csv", rows)
    write_json(Path(args.metrics) / args.model / "geometry.json", metrics)


if __name__ == "__main__":
    cli.run(main)
