"""Fast path vs plain full forward pass on the same interventions (default 500), measured in one run per embedded
model, label tokens included: both return each emotion's whole-word score (log P of all its tokens after the
prompt). Prints the ratio of wall times (the fast path counting its clean `prepare`), the max |score difference|
and top-1 agreement. Target: >= 60x, identical top-1, scores within 5e-4 (float32).

Plain: per intervention, one forward pass of a batch holding the prompt followed by each label word's tokens (one
right-padded row per word), the intervention hooked in at the last prompt token. Fast: `Engine.run` (the last token
and the label tokens recomputed from the prefix cache, k interventions per call). The interventions are a
patching/knockout mix on one Set B prompt: every (site, layer) in turn, set to another stimulus's value or zeroed,
every tenth a single attention head zeroed. Variant "from block 0" recomputes every layer (no skipping).
Usage: python bench/bench_fastpath.py [--models ...] [--n 500] [--batch-size 64] [--threads N]
"""
import argparse
import time

import torch

from emotion_circuits.config import load_params
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.models import load_model
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.sites import Intervention, Site
from emotion_circuits.stimuli import load_stimuli


def interventions(n: int, n_layers: int, n_heads: int, source) -> list[list[Intervention]]:
    sites = [Site(kind, layer) for layer in range(n_layers) for kind in "ham"]
    groups = []
    for i in range(n):
        site = sites[(i // 2) % len(sites)]
        if i % 10 == 9:
            groups.append([Intervention(Site("a", site.layer), "zero", head=i % n_heads)])
        elif i % 2 == 0:
            groups.append([Intervention(site, "set", source.sites[site])])
        else:
            groups.append([Intervention(site, "zero")])
    return groups


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params()
    template = params.prompt("two-shot").template
    items = load_stimuli(params.stimulus_file("B"), "B")
    answers = params.section("answers", AnswerSettings)
    print(f"torch threads {torch.get_num_threads()}, {args.n} interventions, batch {args.batch_size}, float32")
    for name in args.models:
        loaded = load_model(name, params, device="cpu", dtype="float32")
        cfg = loaded.model.config.get_text_config()
        target, source = (tokenize_prompt(loaded.tokenizer, template, items[i].text).ids for i in (0, 50))
        readout = Readout.build(loaded.tokenizer, answers, params.emotions)
        fast_engine = Engine(loaded, readout, batch_size=args.batch_size)
        block0 = Engine(loaded, readout, batch_size=args.batch_size, skip_lower_layers=False)
        groups = interventions(args.n, cfg.num_hidden_layers, cfg.num_attention_heads, fast_engine.prepare(source))
        for engine in (fast_engine, block0):  # warm-up: first calls on new shapes are slower
            engine.run(engine.prepare(target), groups[:args.batch_size])
        plain_scores(loaded, readout, target, groups[:2])

        plain, t_plain = timed(lambda: plain_scores(loaded, readout, target, groups))
        results = {label: timed(lambda engine=engine: engine.run(engine.prepare(target), groups))
                   for label, engine in (("skip lower", fast_engine), ("from block 0", block0))}
        fast = results["skip lower"][0]
        diff = (fast - plain).abs().max().item()
        top1 = (fast.argmax(-1) == plain.argmax(-1)).float().mean().item()
        n_label = sum(len(s) for s in readout.sequences) - len(readout.sequences)
        print(f"{name} ({len(target)} prompt tokens, {cfg.num_hidden_layers} layers, {len(readout.words)} words, "
              f"{n_label} label tokens after the first): plain {t_plain:.1f} s ({args.n / t_plain:.1f}/s)")
        for label, (_, seconds) in results.items():
            print(f"  fast, {label:<12} {seconds:6.2f} s ({args.n / seconds:6.1f}/s)  ratio {t_plain / seconds:5.1f}x")
        print(f"  max |score diff| {diff:.2e} (largest |score| {plain.abs().max():.1f}), top-1 agreement {top1:.3f}")


if __name__ == "__main__":
    main()
