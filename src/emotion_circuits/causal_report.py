"""The patching / knockout / heads stages: settings checked before any work, the experiment run, and its per-item
arrays summarised into metrics JSON (shallow, stable keys) and plot CSVs (one wide file per stage for `dvc plots`:
effect vs layer, one column per site, control and baseline as their own columns; one long file with intervals).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import stats
from .causal import (OPS, HeadSettings, InterventionSettings, KnockoutSettings, PatchingSettings,
                     calibration_offsets, clean_runs, heads, knockout, patching, resolve_layers)
from .config import ConfigError, Params
from .interventions import Engine
from .io import write_csv, write_json
from .models import load_model
from .positions import PositionSettings, choose_pairs, default_layers, patch_positions, recovery
from .readout import AnswerSettings, Readout, behaviour
from .stimuli import load_stimuli

log = logging.getLogger(__name__)

SECTIONS = {"patching": PatchingSettings, "knockout": KnockoutSettings, "heads": HeadSettings,
            "positions": PositionSettings}
SEED_OFFSET = {"patching": 10, "knockout": 20, "heads": 30, "positions": 40}


@dataclass
class Setup:
    name: str
    settings: object
    shared: InterventionSettings
    template: str
    stimuli: dict
    engine: Engine
    readout: Readout
    layers: list[int]
    seed: int
    answers: AnswerSettings = AnswerSettings()


def setup(params: Params, model: str, stage: str) -> Setup:
    """Every check that can fail (params, stimulus files, layers, answer tokens) before any forward pass."""
    params.model(model)
    shared = params.section("interventions", InterventionSettings)
    settings = params.section(stage, SECTIONS[stage])
    answers = params.section("answers", AnswerSettings)
    answers.words_for(params.emotions)
    if shared.prompt not in params.prompts:
        raise ConfigError(f"params.yaml: interventions.prompt: unknown prompt {shared.prompt!r} "
                          f"(prompts: {', '.join(params.prompts)})")
    template = params.prompt(shared.prompt).template
    keys = [("set", settings.set)] + [(f"behaviour_sets[{i}]", name)
                                      for i, name in enumerate(getattr(settings, "behaviour_sets", ()))]
    keys += [("twin_set", settings.twin_set)] if hasattr(settings, "twin_set") else []
    for key, name in keys:
        if name not in params.stimuli:
            raise ConfigError(f"params.yaml: {stage}.{key}: unknown stimulus set {name!r} "
                              f"(stimuli: {', '.join(params.stimuli)})")
    stimuli = {name: load_stimuli(params.stimulus_file(name), name) for _, name in keys}
    loaded = load_model(model, params)
    layers = (default_layers(loaded.n_layers) if stage == "positions" and settings.layers is None else
              resolve_layers(settings.layers, loaded.n_layers, f"{stage}.layers"))
    readout = Readout.build(loaded.tokenizer, answers, params.emotions)
    engine = Engine(loaded, readout, batch_size=shared.batch_size, skip_lower_layers=shared.skip_lower_layers)
    return Setup(model, settings, shared, template, stimuli, engine, readout, layers, params.seed + SEED_OFFSET[stage],
                 answers)


def _ci(name: str, values, n_boot: int, seed: int) -> dict:
    """{name: mean, name_low, name_high}: bootstrap 95% interval over items (NaN, written as empty, if none)."""
    values = np.asarray(values, np.float64).reshape(-1)
    mean, low, high = stats.bootstrap_mean(values, n_boot=n_boot, seed=seed) if len(values) else (np.nan,) * 3
    return {name: mean, f"{name}_low": low, f"{name}_high": high}


def run_patching(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    tok = s.engine.loaded.tokenizer
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "per_pair": cfg.per_pair,
               "n_layers": s.engine.n_layers, "behaviour": {}, "answer_tokens": s.readout.pieces(tok),
               "calibrated": s.answers.calibrate, "content_free": list(s.answers.content_free)}
    clean = None
    for name in dict.fromkeys([cfg.set, *cfg.behaviour_sets]):
        run = clean_runs(s.engine, tok, s.template, s.stimuli[name], s.answers, keep_cache=name == cfg.set,
                         desc=f"clean {name}")
        metrics["behaviour"][name] = behaviour(s.readout, run.raw, run.log_probs, run.labels, n_boot, s.seed)
        log.info("%s set %s: accuracy raw %.3f, calibrated %.3f (chance 0.125)", s.name, name,
                 metrics["behaviour"][name]["raw_accuracy"], metrics["behaviour"][name]["accuracy"])
        if name == cfg.set:
            clean = run
    result = patching(s.engine, s.readout, clean, cfg.sites, s.layers, cfg.per_pair, s.seed)
    answered = result.source_answered
    metrics.update(n_pairs=len(result.pairs), n_targets=len(set(result.pairs[:, 0].tolist())),
                   n_answered=int(answered.sum()),
                   baseline={**_ci("flip", result.baseline_flip, n_boot, s.seed),
                             **_ci("flip_answered", result.baseline_flip[answered], n_boot, s.seed)})
    fields = ("flip", "control_flip", "d_source", "control_d_source", "d_target", "control_d_target")
    detail, wide = [], {layer: {"layer": layer} for layer in result.layers}
    for i, site in enumerate(result.sites):
        rows = []
        for j, layer in enumerate(result.layers):
            row = {"site": site, "layer": layer, "depth": (layer + 1) / s.engine.n_layers}
            for field in fields:
                row.update(_ci(field, getattr(result, field)[:, i, j], n_boot, s.seed))
            for field in ("flip", "control_flip"):  # pairs whose source the model itself answers right
                row.update(_ci(f"{field}_answered", getattr(result, field)[answered, i, j], n_boot, s.seed))
            row.update({f"baseline_{k}": v for k, v in metrics["baseline"].items()})
            rows.append(row)
            wide[layer].update({site: row["flip"], f"{site}_control": row["control_flip"],
                                "baseline": metrics["baseline"]["flip"]})
        peak = max(rows, key=lambda r: r["flip"])
        metrics[site] = {"peak_layer": peak["layer"], **{k: v for k, v in peak.items() if k not in ("site", "layer",
                         "depth") and not k.startswith("baseline")},
                         "above_baseline": peak["flip_low"] > metrics["baseline"]["flip_high"],
                         "above_control": peak["flip_low"] > peak["control_flip_high"]}
        detail += rows
    best = max(result.sites, key=lambda site: metrics[site]["flip"])
    metrics["peak"] = {"site": best, "layer": metrics[best]["peak_layer"], "flip": metrics[best]["flip"],
                       "flip_low": metrics[best]["flip_low"], "flip_high": metrics[best]["flip_high"],
                       "control_flip": metrics[best]["control_flip"], "control_flip_low": metrics[best]["control_flip_low"],
                       "control_flip_high": metrics[best]["control_flip_high"], "baseline_flip": metrics["baseline"]["flip"],
                       "flip_answered": metrics[best]["flip_answered"]}
    columns = ["layer", *result.sites, *[f"{site}_control" for site in result.sites], "baseline"]
    return metrics, [wide[layer] for layer in result.layers], detail, columns


def run_knockout(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    clean = clean_runs(s.engine, s.engine.loaded.tokenizer, s.template, s.stimuli[cfg.set], s.answers,
                       desc=f"clean {cfg.set}")
    result = knockout(s.engine, s.readout, clean, cfg.sites, s.layers, cfg.n_random, s.seed)
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "n": len(clean.labels),
               "n_random": cfg.n_random, "n_layers": s.engine.n_layers, "critical_metric": "kl"}
    detail, wide = [], {layer: {"layer": layer} for layer in result.layers}
    for i, site in enumerate(result.sites):
        table = {}
        for o, op in enumerate(OPS):
            for j, layer in enumerate(result.layers):
                row = {"site": site, "op": op, "layer": layer, "depth": (layer + 1) / s.engine.n_layers}
                for field in ("changed", "kl", "drop"):
                    row.update(_ci(field, getattr(result, field)[:, i, j, o], n_boot, s.seed))
                table[op, layer] = row
                wide[layer][f"{site}_{op}"] = row["kl"]
                detail.append(row)
        metrics[site] = {}
        for op in OPS:
            rows = [table[op, layer] for layer in result.layers]
            peak = max(rows, key=lambda r: r["kl"])
            entry = {"peak_layer": peak["layer"], **{k: peak[k] for k in peak if k.split("_")[0] in ("changed", "kl", "drop")}}
            if op != "random":
                critical = [r["layer"] for r in rows if r["kl"] > table["random", r["layer"]]["kl_high"]]
                entry.update(critical=",".join(map(str, critical)), n_critical=len(critical))
            metrics[site][op] = entry
        log.info("%s knockout %s: critical layers (zero) %s, (mean) %s", s.name, site,
                 metrics[site]["zero"]["critical"] or "none", metrics[site]["mean"]["critical"] or "none")
    columns = ["layer", *[f"{site}_{op}" for site in result.sites for op in OPS]]
    return metrics, [wide[layer] for layer in result.layers], detail, columns


def run_heads(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    clean = clean_runs(s.engine, s.engine.loaded.tokenizer, s.template, s.stimuli[cfg.set], s.answers,
                       desc=f"clean {cfg.set}")
    result = heads(s.engine, s.readout, clean, s.layers)
    rows = []
    for j, layer in enumerate(result.layers):
        for head in range(result.drop.shape[2]):
            row = {"layer": layer, "head": head, "name": f"L{layer}H{head}",
                   **_ci("drop", result.drop[:, j, head], n_boot, s.seed),
                   "kl": float(result.kl[:, j, head].mean()), "changed": float(result.changed[:, j, head].mean())}
            rows.append(row)
    rows.sort(key=lambda r: (-r["drop"], r["layer"], r["head"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "n": len(clean.labels),
               "n_heads": len(rows), "n_layers": s.engine.n_layers,
               "n_positive": sum(r["drop_low"] > 0 for r in rows),
               "top": {f"{r['rank']:02d}": {k: r[k] for k in ("name", "layer", "head", "drop", "drop_low", "drop_high",
                                                              "kl", "changed")} for r in rows[:cfg.top]}}
    log.info("%s heads: top %s", s.name, ", ".join(f"{r['name']} ({r['drop']:.3f})" for r in rows[:5]))
    ordered = sorted(rows, key=lambda r: (r["layer"], r["head"]))
    columns = ["layer", "head", "name", "rank", "drop", "drop_low", "drop_high", "kl", "changed"]
    return metrics, ordered, None, columns


def run_positions(s: Setup):
    """B -> N patching of h at one token per relative-position bin of the stimulus text (`positions`)."""
    cfg, n_boot, tok = s.settings, s.shared.n_boot, s.engine.loaded.tokenizer
    pairs = choose_pairs(s.stimuli[cfg.set], s.stimuli[cfg.twin_set], s.readout.emotions, cfg.n_pairs)
    offsets = calibration_offsets(s.engine, tok, s.template, s.answers)
    result = patch_positions(s.engine, tok, s.template, pairs, offsets, s.layers, cfg.bins)
    rec = recovery(result.ld_patched, result.ld_b, result.ld_n, n_boot, s.seed)
    rows = [{"layer": layer, "depth": (layer + 1) / s.engine.n_layers, "bin": b, "position": (b + 0.5) / cfg.bins,
             "recovery": rec["recovery"][j, b], "recovery_low": rec["low"][j, b], "recovery_high": rec["high"][j, b],
             "ld_patched": float(result.ld_patched[:, j, b].mean())}
            for j, layer in enumerate(result.layers) for b in range(cfg.bins)]
    peak = max(rows, key=lambda r: r["recovery"])
    metrics = {"model": s.name, "set": cfg.set, "twin_set": cfg.twin_set, "prompt": s.shared.prompt,
               "n_pairs": len(pairs), "bins": cfg.bins, "layers": ",".join(map(str, result.layers)),
               "ld_b": float(result.ld_b.mean()), "ld_n": float(result.ld_n.mean()),
               **{k: rec[k] for k in ("denominator", "denominator_low", "denominator_high")},
               "denominator_covers_0": rec["denominator_low"] <= 0 <= rec["denominator_high"],
               "peak": {k: peak[k] for k in ("layer", "bin", "position", "recovery", "recovery_low", "recovery_high")}}
    log.info("%s positions: peak recovery %.2f [%.2f, %.2f] at layer %d, bin %d; denominator %.2f", s.name,
             peak["recovery"], peak["recovery_low"], peak["recovery_high"], peak["layer"], peak["bin"],
             rec["denominator"])
    return metrics, rows, None, list(rows[0])


RUNNERS = {"patching": run_patching, "knockout": run_knockout, "heads": run_heads, "positions": run_positions}


def run_stage(params: Params, model: str, stage: str, metrics_dir="metrics", plots_dir="plots") -> dict:
    """Run one stage for one model and write metrics/<model>/<stage>.json, plots/<model>/<stage>.csv (and, for
    patching and knockout, <stage>_detail.csv with every metric and its interval)."""
    start = time.perf_counter()
    s = setup(params, model, stage)
    metrics, wide, detail, columns = RUNNERS[stage](s)
    write_json(Path(metrics_dir) / model / f"{stage}.json", metrics)
    write_csv(Path(plots_dir) / model / f"{stage}.csv", wide, columns)
    if detail is not None:
        write_csv(Path(plots_dir) / model / f"{stage}_detail.csv", detail)
    log.info("%s %s: %.0f s", model, stage, time.perf_counter() - start)
    return metrics
