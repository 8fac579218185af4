"""The patching / knockout / heads stages: settings checked before any work, the experiment run, and its per-item
arrays summarised into metrics JSON (shallow, stable keys) and plot CSVs (one wide file per stage for `dvc plots`:
effect vs layer, one column per site, control and baseline as their own columns; one long file with intervals).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path


from . import causal_summary
from .causal import (HeadSettings, InterventionSettings, KnockoutSettings, PatchingSettings,
                     calibration_offsets, clean_runs, heads, knockout, patching, resolve_layers)
from .config import ConfigError, Params
from .interventions import Engine
from .io import write_csv, write_json
from .models import load_model
from .positions import PositionSettings, choose_pairs, default_layers, patch_positions, recovery
from .readout import AnswerSettings, Readout, behaviour
from .seeds import derive
from .stimuli import load_stimuli

log = logging.getLogger(__name__)

SECTIONS = {"patching": PatchingSettings, "knockout": KnockoutSettings, "heads": HeadSettings,
            "positions": PositionSettings}


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
              resolve_layers(settings.layers, loaded.n_layers, f"{stage}.layers", getattr(settings, "layer_step", 1)))
    readout = Readout.build(loaded.tokenizer, answers, params.emotions)
    engine = Engine(loaded, readout, batch_size=shared.batch_size, skip_lower_layers=shared.skip_lower_layers)
    return Setup(model, settings, shared, template, stimuli, engine, readout, layers, derive(params.seed, stage),
                 answers)


def _clean(s: Setup, name: str, keep_cache: bool = True):
    return clean_runs(s.engine, s.engine.loaded.tokenizer, s.template, s.stimuli[name], s.answers,
                      keep_cache=keep_cache, desc=f"clean {name}")


def run_patching(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    tok = s.engine.loaded.tokenizer
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "per_source": cfg.per_source,
               "n_layers": s.engine.n_layers, "behaviour": {}, "answer_tokens": s.readout.pieces(tok),
               "calibrated": s.answers.calibrate, "content_free": list(s.answers.content_free)}
    clean, answers = None, []
    for name in dict.fromkeys([cfg.set, *cfg.behaviour_sets]):
        run = clean_runs(s.engine, tok, s.template, s.stimuli[name], s.answers, keep_cache=name == cfg.set,
                         desc=f"clean {name}")
        metrics["behaviour"][name] = behaviour(s.readout, run.raw, run.log_probs, run.labels, n_boot, s.seed)
        answers += [{"set": name, "id": stimulus.id, "emotion": stimulus.emotion, "answer": answer, "answer_raw": raw}
                    for stimulus, answer, raw in zip(s.stimuli[name], run.top1, s.readout.top1(run.raw))]
        log.info("%s set %s: accuracy raw %.3f, calibrated %.3f (chance 0.125)", s.name, name,
                 metrics["behaviour"][name]["raw_accuracy"], metrics["behaviour"][name]["accuracy"])
        if name == cfg.set:
            clean = run
    result = patching(s.engine, s.readout, clean, cfg.sites, s.layers, cfg.per_source, s.seed)
    summary = causal_summary.patching_summary(result, n_boot, s.seed, s.shared.n_flip)
    metrics.update(n_pairs=len(result.pairs), n_targets=len(set(result.pairs[:, 0].tolist())),
                   n_interventions=len(clean.labels) * (7 * cfg.per_source + 1) * len(cfg.sites) * len(s.layers),
                   denominator=summary["denominator"], baseline=summary["baseline"])
    detail, wide = [], {layer: {"layer": layer} for layer in result.layers}
    for row in summary["rows"]:
        row["depth"] = (row["layer"] + 1) / s.engine.n_layers
        site = row["site"]
        wide[row["layer"]].update({site: row["recovery"], f"{site}_control": row["control_recovery"],
                                   "baseline": row["baseline_recovery"]})
        detail.append(row)
    keys = ("recovery", "control_recovery", "recovery_minus_control", "transfer", "control_transfer", "flip",
            "control_flip")
    for site in result.sites:
        rows = [r for r in summary["rows"] if r["site"] == site]
        peak = max(rows, key=lambda r: r["recovery_minus_control"])
        metrics[site] = {"peak_layer": peak["layer"], "above_control": peak["above_control"],
                         **{k: peak[k] for k in peak if k.rsplit("_", 1)[0] in keys or k in keys}}
    if "h" in summary:
        metrics["h"].update(summary["h"])
    if "best" in summary:
        best = summary["best"]
        row = next(r for r in summary["rows"] if r["site"] == best["site"] and r["layer"] == best["layer"])
        metrics["best"] = {**best, **{k: row[k] for k in row if k.rsplit("_", 1)[0] in keys or k in keys}}
        log.info("%s patching: best a/m cell %s%d recovery %.3f (control %.3f), max-statistic p %.3f", s.name,
                 best["site"], best["layer"], row["recovery"], row["control_recovery"], best["p_max"])
    columns = ["layer", *result.sites, *[f"{site}_control" for site in result.sites], "baseline"]
    return metrics, [wide[layer] for layer in result.layers], columns, {"patching_detail": detail, "answers": answers}


def run_knockout(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    clean = _clean(s, cfg.set)
    result = knockout(s.engine, s.readout, clean, cfg.sites, s.layers, cfg.ablations, cfg.n_random, s.seed)
    summary = causal_summary.knockout_summary(result, n_boot, s.seed, s.shared.n_flip)
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "n": len(clean.labels),
               "n_random": cfg.n_random, "n_layers": s.engine.n_layers, "fdr": causal_summary.FDR,
               "n_interventions": len(clean.labels) * len(cfg.sites) * len(s.layers) * len(cfg.ablations)
               * (1 + cfg.n_random)}
    wide = {layer: {"layer": layer} for layer in result.layers}
    for row in summary["rows"]:
        row["depth"] = (row["layer"] + 1) / s.engine.n_layers
        name = f"{row['site']}_{row['ablation']}"
        wide[row["layer"]].update({name: row["kl"], f"{name}_control": row["control_kl"]})
    for site in result.sites:
        metrics[site] = {}
        for kind in result.ablations:
            rows = [r for r in summary["rows"] if r["site"] == site and r["ablation"] == kind]
            peak = max(rows, key=lambda r: r["kl_minus_control"])
            entry = {"peak_layer": peak["layer"], **{k: peak[k] for k in peak
                                                     if k.split("_")[0] in ("drop", "kl", "control", "norm")}}
            for metric in ("kl", "drop"):
                layers = summary["critical"][metric][site][kind]
                entry[f"critical_{metric}"] = ",".join(map(str, layers))
                entry[f"n_critical_{metric}"] = len(layers)
            metrics[site][kind] = entry
            log.info("%s knockout %s %s: critical layers (KL, BH %.2f, matched controls) %s", s.name, site, kind,
                     causal_summary.FDR, entry["critical_kl"] or "none")
    columns = ["layer", *[f"{site}_{kind}{c}" for site in result.sites for kind in result.ablations
                          for c in ("", "_control")]]
    return metrics, [wide[layer] for layer in result.layers], columns, {"knockout_detail": summary["rows"]}


def run_heads(s: Setup):
    cfg, n_boot = s.settings, s.shared.n_boot
    clean = _clean(s, cfg.set)
    result = heads(s.engine, s.readout, clean, s.layers, cfg.top, cfg.n_random, s.seed)
    summary = causal_summary.heads_summary(result, n_boot, s.seed, s.shared.n_flip)
    own = behaviour(s.readout, clean.raw, clean.log_probs, clean.labels, n_boot, s.seed)
    at_chance = bool(own["accuracy_low"] <= own["chance"])
    n_heads = result.rank_drop.shape[2]
    metrics = {"model": s.name, "set": cfg.set, "prompt": s.shared.prompt, "n_rank": len(result.rank_half),
               "n_test": len(result.test_half), "n_heads": len(result.layers) * n_heads, "n_tested": len(result.tested),
               "n_random": cfg.n_random, "fdr": causal_summary.FDR, "n_layers": s.engine.n_layers,
               "accuracy": own["accuracy"], "accuracy_low": own["accuracy_low"], "accuracy_high": own["accuracy_high"],
               "at_chance": at_chance, "survivors": ",".join(summary["survivors"]),
               "n_survivors": len(summary["survivors"]),
               "n_interventions": len(result.rank_half) * len(result.layers) * n_heads
               + len(result.test_half) * len(result.tested) * (1 + cfg.n_random),
               "top": {f"{r['rank']:02d}": r for r in summary["rows"]}}
    log.info("%s heads: tested %s; survive BH: %s%s", s.name, ", ".join(r["name"] for r in summary["rows"][:5]),
             metrics["survivors"] or "none", " (own-emotion accuracy at chance: no information)" if at_chance else "")
    rank_mean = result.rank_drop.mean(0)
    tested = {r["name"]: r for r in summary["rows"]}
    ordered = []
    for j, layer in enumerate(result.layers):
        for head in range(n_heads):
            name = f"L{layer}H{head}"
            t = tested.get(name, {})
            ordered.append({"layer": layer, "head": head, "name": name, "rank_drop": float(rank_mean[j, head]),
                            **{k: t.get(k) for k in ("rank", "drop", "drop_low", "drop_high", "control_drop",
                                                     "drop_minus_control", "q", "survives")}})
    columns = ["layer", "head", "name", "rank_drop", "rank", "drop", "drop_low", "drop_high", "control_drop",
               "drop_minus_control", "q", "survives"]
    return metrics, ordered, columns, {}


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
    return metrics, rows, list(rows[0]), {}


RUNNERS = {"patching": run_patching, "knockout": run_knockout, "heads": run_heads, "positions": run_positions}


def run_stage(params: Params, model: str, stage: str, metrics_dir="metrics", plots_dir="plots") -> dict:
    """Run one stage for one model and write metrics/<model>/<stage>.json, plots/<model>/<stage>.csv and the
    runner's further tables as plots/<model>/<name>.csv (patching and knockout: <stage>_detail.csv with every metric
    and its interval; patching: answers.csv, every behaviour-set item's calibrated and raw answer)."""
    start = time.perf_counter()
    s = setup(params, model, stage)
    metrics, wide, columns, tables = RUNNERS[stage](s)
    write_json(Path(metrics_dir) / model / f"{stage}.json", metrics)
    write_csv(Path(plots_dir) / model / f"{stage}.csv", wide, columns)
    for name, rows in tables.items():
        write_csv(Path(plots_dir) / model / f"{name}.csv", rows)
    log.info("%s %s: %.0f s", model, stage, time.perf_counter() - start)
    return metrics
