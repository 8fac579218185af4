"""The `steering` stage: every check before any forward pass, the experiment (`steering`), its statistics
(`steering_summary`) and the outputs: metrics/<model>/steering.json, plots/<model>/steering.csv (one row per layer
and dose), steering_specificity.csv (the 8 x 8 matrix at the best cell and the random row), steering_emotions.csv
(per emotion: steered share and change on the neutral set, and against the grain), and the directions (npz).

Its own module beside `causal_report` (same pattern: settings, Setup, runner) so the other causal stages do not
depend on it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import affect, generation
from .ablation import AblationSettings, run_ablation
from .causal import InterventionSettings, calibration_offsets, clean_runs, resolve_layers
from .config import ConfigError, Params
from .interventions import Engine
from .io import DataError, save_npz, write_csv, write_json
from .models import load_model
from .readout import AnswerSettings, Readout
from .seeds import derive
from .steering import (SteeringSettings, against_grain, balanced, fit_directions, read_activations, steer,
                       text_positions)
from .steering_summary import grain_summary, steering_summary
from .stimuli import load_stimuli

log = logging.getLogger(__name__)

@dataclass
class Setup:
    name: str
    settings: SteeringSettings
    shared: InterventionSettings
    template: str
    stimuli: dict
    engine: Engine
    readout: Readout
    layers: list[int]
    seed: int
    answers: AnswerSettings
    activations: Path       # <root>/<model>/<prompt>: the extraction files of the prompt the engine uses
    directions: Path        # where the directions are saved
    generation: generation.GenerationSettings = generation.GenerationSettings()
    affect: affect.AffectSettings = affect.AffectSettings()
    ablation: AblationSettings = AblationSettings()
    ablation_layers: tuple[int, ...] = ()   # checked against the model in `setup`
    offsets: torch.Tensor | None = None     # the calibration offsets, computed once in `run_steering`
    prepared: dict = field(default_factory=dict)   # clean runs by token ids, shared by grain and ablation


def setup(params: Params, model: str, activations="data/activations", directions=None) -> Setup:
    """Every check that can fail (params, stimulus and activation files, layers, answer tokens) before any
    forward pass."""
    params.model(model)
    shared = params.section("interventions", InterventionSettings)
    cfg = params.section("steering", SteeringSettings)
    answers = params.section("answers", AnswerSettings)
    answers.words_for(params.emotions)
    if shared.prompt not in params.prompts:
        raise ConfigError(f"params.yaml: interventions.prompt: unknown prompt {shared.prompt!r} "
                          f"(prompts: {', '.join(params.prompts)})")
    for key in ("set", "grain_set", "fit_set", "denoise_set"):
        if getattr(cfg, key) not in params.stimuli:
            raise ConfigError(f"params.yaml: steering.{key}: unknown stimulus set {getattr(cfg, key)!r} "
                              f"(stimuli: {', '.join(params.stimuli)})")
    root = Path(activations) / model / shared.prompt
    needed = [cfg.fit_set] + ([cfg.denoise_set] if cfg.denoise_k else [])
    for name in needed:
        if not (root / f"{name}.npz").exists():
            raise DataError(f"{root / f'{name}.npz'}: not found (the steering directions need the extract stage's "
                              f"activations of set {name} with prompt {shared.prompt})")
    ablation = AblationSettings.parse(cfg.ablation)
    ablation.validate(params.stimuli, len(params.emotions), cfg.fit_set)
    stimuli = {name: load_stimuli(params.stimulus_file(name), name) for name in (cfg.set, cfg.grain_set, ablation.set)}
    loaded = load_model(model, params)
    layers = resolve_layers(cfg.layers, loaded.n_layers, "steering.layers", cfg.layer_step)
    ablation_layers = ablation.validate(params.stimuli, len(params.emotions), cfg.fit_set, loaded.n_layers)
    readout = Readout.build(loaded.tokenizer, answers, params.emotions)
    engine = Engine(loaded, readout, batch_size=shared.batch_size, skip_lower_layers=shared.skip_lower_layers)
    gen = params.section("steering_generation", generation.GenerationSettings).check(loaded.n_layers,
                                                                                      len(stimuli[cfg.set]))
    affect_cfg = params.section("steering_affect", affect.AffectSettings)
    return Setup(model, cfg, shared, params.prompt(shared.prompt).template, stimuli, engine, readout, layers,
                 derive(params.seed, "steering"), answers, root,
                 Path(directions) if directions else Path("data/steering") / model / "directions.npz", gen, affect_cfg,
                 ablation, tuple(ablation_layers))


def run_steering(s: Setup):
    """Directions from the fitting set's activations; steering of the neutral set over layers and doses beside
    same-norm random directions; the specificity matrix and steering against the grain at the best cell; steered
    generation and the valence plane at the best cell; directional ablation (`ablation.run_ablation`)."""
    cfg, n_boot, n_flip, tok = s.settings, s.shared.n_boot, s.shared.n_flip, s.engine.loaded.tokenizer
    lap = _Lap(s.name)
    emotions, d = list(s.readout.emotions), s.engine.cfg.hidden_size
    h, labels = read_activations(s.activations / f"{cfg.fit_set}.npz", s.engine.n_layers, d)
    neutral = read_activations(s.activations / f"{cfg.denoise_set}.npz", s.engine.n_layers, d)[0] \
        if cfg.denoise_k else None
    directions = fit_directions(h, labels, emotions, neutral, cfg.denoise_k, cfg.directions, cfg.probe_C)
    save_npz(s.directions, directions=directions.directions[s.layers], layers=np.array(s.layers),
             scale=directions.scale, emotions=np.array(emotions), removed=directions.removed[s.layers])
    at_text = cfg.where == "text"
    items = s.stimuli[cfg.set][:cfg.n_items]
    s.offsets = calibration_offsets(s.engine, tok, s.template, s.answers)
    clean = clean_runs(s.engine, tok, s.template, items, s.answers, positions=at_text, desc=f"clean {cfg.set}",
                       offsets=s.offsets)
    result = steer(s.engine, s.readout, clean, directions, s.layers, cfg.doses, cfg.n_random, s.seed,
                   text_positions(tok, s.template, items) if at_text else None)
    lap("clean runs and the steering grid")
    summary = steering_summary(result, emotions, n_boot, s.seed, n_flip)
    best = summary["best"]
    grain_items = balanced(s.stimuli[cfg.grain_set], emotions, cfg.n_grain)
    grain_clean = clean_runs(s.engine, tok, s.template, grain_items, s.answers, positions=True,   # kept for the
                             desc=f"clean {cfg.grain_set}", offsets=s.offsets, cache=s.prepared)  # ablation
    grain = grain_summary(against_grain(s.engine, s.readout, grain_clean, directions, best["layer"], best["dose"],
                                        cfg.n_random, derive(s.seed, "grain"),
                                        text_positions(tok, s.template, grain_items) if at_text else None),
                          emotions, n_boot, s.seed, n_flip)
    lap("against the grain")
    spec = summary["specificity"]
    metrics = {"model": s.name, "set": cfg.set, "grain_set": cfg.grain_set, "fit_set": cfg.fit_set,
               "prompt": s.shared.prompt, "n": len(items), "n_grain": len(grain_items), "n_layers": s.engine.n_layers,
               "layers": ",".join(map(str, s.layers)), "doses": list(cfg.doses), "n_random": cfg.n_random,
               "denoise_k": cfg.denoise_k, "where": cfg.where, "directions": cfg.directions,
               "clean_answers": {e: int((clean.top1 == e).sum()) for e in emotions},
               "n_interventions": len(items) * len(s.layers) * len(cfg.doses) * (len(emotions) + cfg.n_random)
               + len(grain_items) * (len(emotions) + cfg.n_random),
               "best": best, "earliest": summary["earliest"], "per_emotion": summary["per_emotion"], "grain": grain,
               "specificity": {k: v for k, v in spec.items() if k not in ("matrix", "random", "emotions")}}
    log.info("%s steering: best h%d dose %g, share steered %.2f (random %.2f), max-statistic p %.3f; specificity "
             "diagonal %.2f vs off %.2f; against the grain moved %.2f (random %.2f)", s.name, best["layer"],
             best["dose"], best["share"], best["random_share"], best["p_max"], spec["diagonal"], spec["off_diagonal"],
             grain["moved"], grain["random_moved"])
    for row in summary["rows"]:
        row["depth"] = (row["layer"] + 1) / s.engine.n_layers
    matrix = [{"direction": e, **{f: spec["matrix"][i, j] for j, f in enumerate(emotions)}}
              for i, e in enumerate(emotions)] + [{"direction": "random", **dict(zip(emotions, spec["random"]))}]
    per = [{"emotion": e, **{k: v for k, v in summary["per_emotion"][e].items()},
            **{f"grain_{k}": v for k, v in grain["per_emotion"][e].items()}} for e in emotions]
    metrics["generation"], text = generation.run_generation(s.engine.loaded, s.stimuli[cfg.set], directions, emotions,
                                                           best, s.generation, n_boot, derive(s.seed, "generation"))
    lap("steered generation")
    metrics["affect"], plane = affect.affect(directions.directions[best["layer"]], emotions,
                                             s.affect)
    rows = summary["rows"]
    metrics["ablation"], ablation_tables = run_ablation(s, h, labels)
    lap("directional ablation")
    return metrics, rows, list(rows[0]), {"steering_specificity": matrix, "steering_emotions": per,
                                          "steering_text": text, "steering_affect": plane, **ablation_tables}


class _Lap:
    """Logs the seconds since the last call, so a user sees where the stage spends its time."""

    def __init__(self, name: str):
        self.name, self.last = name, time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        log.info("%s steering: %s %.1f s", self.name, what, now - self.last)
        self.last = now


def run_stage(params: Params, model: str, metrics_dir="metrics", plots_dir="plots", activations="data/activations",
              directions=None) -> dict:
    """Run the steering stage for one model; write its metrics, plot tables and directions."""
    start = time.perf_counter()
    s = setup(params, model, activations, directions)
    metrics, rows, columns, tables = run_steering(s)
    write_json(Path(metrics_dir) / model / "steering.json", metrics)
    write_csv(Path(plots_dir) / model / "steering.csv", rows, columns)
    for name, table in tables.items():
        write_csv(Path(plots_dir) / model / f"{name}.csv", table)
    log.info("%s steering: %.0f s", model, time.perf_counter() - start)
    return metrics
