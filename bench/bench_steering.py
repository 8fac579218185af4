"""Steering additions: batched on the fast path vs plain hooked forward passes, the same work, measured in one run
per embedded model. The work is one neutral (Set N) prompt steered as the `steering` stage does: every steered layer
(params `steering`) x dose x (8 emotion-like unit directions + n_random random ones), `add` of dose * s * u to h[l]
at the extraction position (s = 10, a stand-in for the layer's median norm). Prints the ratio of wall times (the
fast path counting its clean `prepare`), the max |score difference| and top-1 agreement. Target: >= 30x.
Second line: the experiments' relative scoring (`Engine.run(..., relative=True)`: the last prompt token needs only
the words' first-token logits) against full log-probabilities on the same groups, and the max |difference| of the
answers log-softmaxed over the emotions (equal up to float error by construction).
The plain side is timed on --n-plain groups and scaled to the whole work (it is linear in the groups).
Usage: python bench/bench_steering.py [--models ...] [--n-plain 40] [--threads N]
"""
import argparse
import time

import numpy as np
import torch

from emotion_circuits.causal import resolve_layers, unit_directions
from emotion_circuits.config import load_params
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.models import load_model
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.steering import SteeringSettings, steer_groups
from emotion_circuits.stimuli import load_stimuli


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--n-plain", type=int, default=40, help="plain forward passes timed (then scaled)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params()
    cfg = params.section("steering", SteeringSettings)
    template = params.prompt("two-shot").template
    item = load_stimuli(params.stimulus_file(cfg.set), cfg.set)[0]
    answers = params.section("answers", AnswerSettings)
    for name in args.models:
        loaded = load_model(name, params, device="cpu", dtype="float32")
        n_layers, d = loaded.n_layers, loaded.model.config.get_text_config().hidden_size
        layers = resolve_layers(cfg.layers, n_layers, "steering.layers", cfg.layer_step)
        vectors = unit_directions(np.random.default_rng(0), (len(layers), 8 + cfg.n_random), d)
        groups = steer_groups(layers, cfg.doses, vectors, np.full(n_layers, 10.0))
        ids = tokenize_prompt(loaded.tokenizer, template, item.text).ids
        readout = Readout.build(loaded.tokenizer, answers, params.emotions)
        engine = Engine(loaded, readout, batch_size=64)
        engine.run(engine.prepare(ids), groups[:64])            # warm-up: first calls on new shapes are slower
        plain_scores(loaded, readout, ids, groups[:2])
        start = time.perf_counter()
        fast = engine.run(engine.prepare(ids), groups)
        t_fast = time.perf_counter() - start
        pick = np.linspace(0, len(groups) - 1, args.n_plain).round().astype(int)
        start = time.perf_counter()
        plain = plain_scores(loaded, readout, ids, [groups[i] for i in pick])
        t_plain = (time.perf_counter() - start) * len(groups) / len(pick)
        diff = (fast[pick] - plain).abs().max().item()
        top1 = (fast[pick].argmax(-1) == plain.argmax(-1)).float().mean().item()
        print(f"{name} ({len(ids)} prompt tokens, {len(layers)} layers x {len(cfg.doses)} doses x "
              f"{8 + cfg.n_random} directions = {len(groups)} additions, torch threads {torch.get_num_threads()}): "
              f"fast {t_fast:.2f} s, plain {t_plain:.1f} s (scaled from {len(pick)}), ratio {t_plain / t_fast:.0f}x; "
              f"max |diff| {diff:.1e}, top-1 agreement {top1:.3f}")
        prepared = engine.prepare(ids)
        start = time.perf_counter()
        full = engine.run(prepared, groups)
        t_full = time.perf_counter() - start
        start = time.perf_counter()
        relative = engine.run(prepared, groups, relative=True)
        t_relative = time.perf_counter() - start
        gap = (torch.log_softmax(full, -1) - torch.log_softmax(relative, -1)).abs().max().item()
        print(f"{name}: relative scoring {t_relative:.2f} s, full log-probabilities {t_full:.2f} s, ratio "
              f"{t_full / t_relative:.2f}x; max |diff| of the answers over the emotions {gap:.1e}")


if __name__ == "__main__":
    main()
