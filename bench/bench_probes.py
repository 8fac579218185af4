"""Time the probes stage on synthetic activations of the embedded models' shapes (the v2 set sizes, all controls).

Prints, per model, the ratio of the fast paths to the plain paths on the same work, measured in this run (the
probe fits of one repeat of Set B and of B vs N at three layers: `fastprobe.probe_pipeline` vs
`stats.probe_pipeline`; the tuned TF-IDF baseline of one repeat: `tfidf.TfidfSearch` vs `probes.tfidf_model`) with
the max |difference| of their out-of-fold probabilities; then the wall time of `run_probes` (headline prompt,
zero-shot prompt and random-init control, all three sites, repeats, nulls, nested selection, text baselines
without embeddings, MDL), the share per part, and the agreement of the closed-form ridge null probe with the
logistic probe on the unpermuted labels.
Usage: python bench/bench_probes.py [--n-jobs 2] [--n-perm 1000] [--n-boot 1000] [--repeats 5] [--models ...]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import zlib
from pathlib import Path

import time

import numpy as np
from threadpoolctl import threadpool_limits

from emotion_circuits import fastprobe, stats
from emotion_circuits.config import EMOTIONS
from emotion_circuits.io import save_npz
from emotion_circuits.probes import HEADLINE, ProbeSettings, load_prompt, make_tasks, run_probes, tfidf_model
from emotion_circuits.tfidf import TfidfCounts, TfidfSearch

SHAPES = {"smollm2": (30, 576), "gemma3": (18, 640)}  # (n_layers, d_model)
SIZES = {"A": 192, "B": 192, "N": 192, "C": 24}


def synthetic_set(set_name: str, n_layers: int, d_model: int, signal: float, seed: int) -> dict[str, np.ndarray]:
    """Activations whose class signal grows with depth: per-class means of norm ~`signal * depth` plus unit noise."""
    rng = np.random.default_rng(seed)
    n = SIZES[set_name]
    emotions = np.repeat(EMOTIONS, n // len(EMOTIONS)) if set_name in ("A", "B") else np.full(n, "neutral")
    labels = np.searchsorted(sorted(set(emotions)), emotions)
    means = np.random.default_rng(1).normal(size=(len(set(emotions)) + 1, d_model)) / np.sqrt(d_model)
    depth = (np.arange(n_layers) + 1) / n_layers
    arrays = {}
    for kind in ("h", "a", "m"):
        shift = means[labels] if set_name in ("A", "B") else means[-1][None, :] * np.ones((n, 1))
        x = rng.normal(size=(n, n_layers, d_model)) + signal * 4 * depth[None, :, None] * shift[:, None, :]
        arrays[kind] = x.astype(np.float32)
    return {**arrays, "ids": np.array([f"{set_name.lower()}-{i:03d}" for i in range(n)]),
            "emotions": emotions.astype(str), "n_tokens": np.full(n, 80), "meta": np.array("{}")}


def write_model(root: Path, name: str, shape, signal: float, prompts) -> None:
    for prompt in prompts:
        for set_name in SIZES:
            seed = zlib.crc32(f"{name}/{prompt}/{set_name}".encode())
            save_npz(root / name / prompt / f"{set_name}.npz", **synthetic_set(set_name, *shape, signal, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--n-perm", type=int, default=1000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ratios-only", action="store_true", help="skip the whole-stage run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = ProbeSettings(seed=0, n_jobs=args.n_jobs, n_perm=args.n_perm, n_boot=args.n_boot,
                             repeats=args.repeats)
    print(f"probes bench: n_jobs={args.n_jobs} n_boot={args.n_boot} n_perm={args.n_perm} repeats={args.repeats}; "
          f"sets A/B/N/C = {'/'.join(str(v) for v in SIZES.values())}; two-shot + zero-shot + random-init, "
          "sites h/a/m")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models:
            shape = SHAPES[model]
            write_model(root, model, shape, 1.0, ("two-shot", "zero-shot"))
            write_model(root, f"{model}-random-init", shape, 0.0, ("two-shot",))
            items = synthetic_items()
            print(f"{model}:")
            fast_vs_plain(root / model / "two-shot", settings, items)
            if args.ratios_only:
                continue
            result = run_probes(root / model, settings, control_folder=root / f"{model}-random-init", items=items)
            sec = result.seconds
            parts = {k: v for k, v in sec.items() if k != "wall"}
            work = sum(parts.values())
            m = result.metrics
            shares = ", ".join(f"{k} {v:5.1f} s ({v / work:4.0%})" for k, v in parts.items())
            print(f"{model:8s} ({shape[0]} layers, d={shape[1]}): {sec['wall']:6.1f} s wall; {shares}")
            print(f"         set_b.h peak {m['set_b']['h']['auroc']:.3f} at layer {m['set_b']['h']['peak_layer']} "
                  f"(nested {m['set_b']['h']['nested_auroc']:.3f}, p max-over-layers {m['set_b']['h']['p_max_layers']:.4f}), "
                  f"random-init {m['random_init']['set_b']['h']['auroc']:.3f}")
            for task in HEADLINE:
                a = m[task]["ridge_agreement"]
                print(f"         ridge null probe vs logistic, {task}: corr {a['corr']:.3f}, mean |diff| "
                      f"{a['mean_abs_diff']:.3f} over layers x sites")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def fast_vs_plain(folder: Path, settings: ProbeSettings, items: dict) -> None:
    """Print fast/plain time ratios and max |probability difference| on the same fits, single-threaded BLAS as in
    the stage."""
    data = load_prompt(folder)
    tasks = make_tasks(data, settings, {i: o.get("pair") for i, o in items.items()})
    with threadpool_limits(limits=1):
        for name in ("set_b", "b_vs_n"):
            task, times, diff = tasks[name], np.zeros(2), 0.0
            for layer in np.linspace(0, data["A"].shape[1] - 1, 3).astype(int):
                X = np.concatenate([data[s].sites["h"][:, layer] for s in task.inputs]).astype(np.float64)
                plain, t0 = timed(lambda: stats.cv_proba(X, task.y, task.folds[0]))
                fast, t1 = timed(lambda: stats.cv_proba(X, task.y, task.folds[0], model_factory=lambda:
                                                        fastprobe.probe_pipeline(settings.C)))
                times += (t0, t1)
                diff = max(diff, float(np.abs(plain - fast).max()))
            print(f"         probe fits {name} (3 layers x {settings.folds} folds): plain {times[0]:5.2f} s, fast "
                  f"{times[1]:5.2f} s, ratio {times[0] / times[1]:4.1f}x, max |dp| {diff:.1e}")
        task = tasks["set_b"]
        texts = np.array([items[i]["text"] for i in data["B"].ids])
        inner, groups = max(2, settings.folds - 2), np.arange(len(texts))
        plain, t0 = timed(lambda: stats.cv_proba(texts, task.y, task.folds[0], groups=groups, model_factory=lambda:
                                                 tfidf_model(settings.tfidf_C, inner, settings.seed)))
        counts = TfidfCounts(texts)
        fast, t1 = timed(lambda: stats.cv_proba(texts, task.y, task.folds[0], groups=groups, model_factory=lambda:
                                                TfidfSearch(counts, settings.tfidf_C, inner, settings.seed)))
        print(f"         TF-IDF baseline set_b ({settings.folds} folds x {len(settings.tfidf_C)} C x {inner} inner): "
              f"plain {t0:5.2f} s, fast {t1:5.2f} s, ratio {t0 / t1:4.1f}x, max |dp| "
              f"{float(np.abs(plain - fast).max()):.1e}")


def synthetic_items() -> dict[str, dict]:
    """Stimulus objects for the synthetic ids: texts and B/N pair links (the text baselines and grouped splits)."""
    rng = np.random.default_rng(0)
    vocabulary = [f"w{j}{'abcdefgh'[j % 8] * (1 + j % 5)}" for j in range(400)]
    items = {}
    for set_name, n in SIZES.items():
        for i in range(n):
            text = " ".join(rng.choice(vocabulary, rng.integers(20, 50)))   # ~30-word texts, like the stimuli
            item = {"id": f"{set_name.lower()}-{i:03d}", "text": text}
            if set_name in "BN":
                item["pair"] = f"{'n' if set_name == 'B' else 'b'}-{i:03d}"
            items[item["id"]] = item
    return items


if __name__ == "__main__":
    main()
