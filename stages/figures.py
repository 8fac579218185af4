"""dvc stage `figures`: every publication figure, as .png and .svg in figures/, from the stage outputs of the models
in params `run.analyze` (metrics/ and plots/ only; no value is typed in).

probes outputs are required; a figure whose optional input (geometry, CKA, attention, interventions, text-only
baselines) is absent is skipped, or drawn without that part, with a warning.
"""
from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

import matplotlib.pyplot as plt

from emotion_circuits import cli, figures as F, report
from emotion_circuits.config import EMOTIONS, load_params
from emotion_circuits.geometry import WHEEL
from emotion_circuits.probes import CSV_COLUMNS, ProbeSettings, random_init_of

log = logging.getLogger("figures")
# figure, plots/<model>/ file, columns it needs, plot function (one panel per model that has the file)
INTERVENTIONS = (
    ("patching", "patching_detail.csv", ("site", "depth", "recovery", "recovery_low", "recovery_high",
                                         "control_recovery", "control_recovery_low", "control_recovery_high"),
     F.patching_layers),
    ("knockout", "knockout_detail.csv", ("site", "ablation", "layer", "depth", "kl", "kl_low", "kl_high",
                                         "control_kl", "control_kl_low", "control_kl_high", "kl_critical"),
     F.knockout_layers),
    ("heads", "heads.csv", ("layer", "head", "rank_drop", "survives"), F.heads_heatmap),
    ("positions", "positions.csv", ("layer", "bin", "recovery", "recovery_low"), F.positions_heatmap),
    ("steering_dose", "steering.csv", ("layer", "dose", "depth", "share", "share_low", "share_high", "random_share"),
     F.steering_dose),
    ("steering_specificity", "steering_specificity.csv", ("direction",) + EMOTIONS, F.steering_specificity),
    ("steering_affect", "steering_affect.csv", ("emotion", "pc1", "pc2", "valence"), F.affect_plane),
    ("steering_ablation", "steering_ablation.csv", ("ablation_layer", "layer", "depth", "drop", "drop_low", "drop_high",
                                                    "random_drop", "random_drop_low", "random_drop_high"),
     F.ablation_drop))


def text_only(stimuli: dict | None, task: str) -> dict[str, float] | None:
    """{method: AUROC} of the stimuli stage's text-only baselines of `task`, or None."""
    found = ((stimuli or {}).get("baselines") or {}).get(task) or {}
    return {k: v["auroc"] for k, v in found.items() if isinstance(v, dict) and "auroc" in v} or None


def geometry_figures(outputs: report.Outputs, model: str):
    """(name, thunk) of the PCA scatter and the centroid cosine heatmaps of one model, if its geometry ran."""
    metrics = outputs.json(f"{model}/geometry.json", why=f"the PCA and cosine figures of {model}")
    if not metrics:
        return []
    sets = [s for s, v in sorted(metrics.items()) if isinstance(v, dict) and "best_layer" in v]
    titles, axis, chosen = {}, {}, set()
    with report.reading(outputs.metrics / model / "geometry.json"):
        for s in sets:
            layer, n_layers = metrics[s]["best_layer"], metrics[s]["n_layers"]
            chosen.add("the chosen layer" if metrics[s].get("best_layer_given") else "the highest-silhouette layer")
            titles[s] = f"Set {s}: layer {layer}, depth {100 * (layer + 1) / n_layers:.0f} %"
            axis[s] = tuple(f"PC{c} ({100 * metrics[s][f'pc{c}_var']:.0f} % of variance)" for c in (1, 2))
    pca = {s: outputs.csv(f"{model}/pca_{s}.csv", ("emotion", "pc1", "pc2"), required=True) for s in sets}
    cos = {s: outputs.csv(f"{model}/centroid_cosine_{s}.csv", ("emotion_a", "emotion_b", "cosine"), required=True)
           for s in sets}
    scaled = ", features z-scored" if metrics.get("standardize") else ""
    where_text = f"residual stream h{scaled}, at {' / '.join(sorted(chosen))}"
    return [(f"pca_{model}", lambda: F.pca_scatter(pca, titles, axis, f"{model}: PCA of the {where_text}")),
            (f"centroid_cosine_{model}", lambda: F.cosine_heatmaps(
                cos, titles, order=WHEEL, suptitle=f"{model}: emotion centroids, {where_text}\n(rows and columns "
                "in Plutchik wheel order: neighbours adjacent, opposites 4 apart)"))]


def figure_jobs(outputs: report.Outputs, params) -> list:
    """(name, thunk returning a Figure) of every figure whose inputs exist."""
    models = list(params.run.analyze)
    probes = {m: outputs.csv(f"{m}/probes.csv", CSV_COLUMNS, required=True) for m in models}
    stimuli = outputs.json("stimuli.json", why="the text-only baseline lines")
    threshold = params.section("probes", ProbeSettings).saturation
    jobs = [("auroc_depth", lambda: F.auroc_depth(probes, text_only(stimuli, "set_b_8class"))),
            ("transfer_binary", lambda: F.transfer_binary(probes, text_only(stimuli, "b_vs_n"), threshold))]
    for model in models:
        jobs += geometry_figures(outputs, model)
    cka = outputs.csv("cka.csv", ("model_a", "model_b", "depth_a", "depth_b", "cka", "cka_debiased"),
                      why="the CKA figures")
    if cka is not None:
        present = [m for m in params.run.models if m in set(cka["model_a"]) | set(cka["model_b"])]
        pairs = [(a, b) for a, b in cka[["model_a", "model_b"]].drop_duplicates().itertuples(index=False)
                 if (a in models and b in models) or random_init_of(params, a) == b]
        jobs += [("cka_models", lambda: F.cka_models(cka, present)), ("cka_depths", lambda: F.cka_depths(cka, pairs))]
        if "reference_debiased" in cka.columns and cka["reference_debiased"].notna().any():
            jobs.append(("cka_matched", lambda: F.cka_matched(cka)))
    layers = {m: f for m in models if (f := outputs.csv(f"{m}/attention_sets.csv",
                                                        ("depth", "text_ratio_a", "text_ratio_b", "ratio_diff",
                                                         "ratio_low", "ratio_high", "q_bh"), why=f"{m} in the attention figure")) is not None}
    if layers:
        jobs.append(("attention_text_share", lambda: F.attention_sets(layers)))
    for name, rel, columns, plot in INTERVENTIONS:
        found = {m: f for m in models if (f := outputs.csv(f"{m}/{rel}", columns, why=f"{m} in the {name} figure"))
                 is not None}
        if found:
            jobs.append((name, functools.partial(plot, found)))
    return jobs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--figures", default="figures", help="output folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    outputs = report.Outputs(Path(args.metrics), Path(args.plots))
    jobs = figure_jobs(outputs, params)
    for name, build in jobs:
        fig = build()
        F.save(fig, Path(args.figures) / name)
        plt.close(fig)
        log.info("wrote %s.png and .svg", Path(args.figures) / name)


if __name__ == "__main__":
    cli.run(main)
