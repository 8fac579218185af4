"""Extraction speed, as ratios measured in one run on the embedded models:
  1. prefix-cached vs plain extraction of the same stimuli with the two-shot prompt (target >= 1.8x), and the
     largest difference between their arrays
  2. plain extraction throughput vs the bare model forward on the same batches (hook overhead; target >= 0.9x)
  3. batched vs one-at-a-time extraction (target >= 3x on 2 cores), and vs the naive per-stimulus loop (full
     logits at every position, output_attentions and output_hidden_states, slicing the last position afterwards)
  4. load time from the safetensors cache vs from GGUF, and the start-up of a fresh process (Python, torch,
     transformers, the model) that one extract process per model x prompt instead of per set saves
Usage: python bench/bench_extract.py [--models ...] [--n 32] [--quick]   (--quick: items 1, 2 and 4's start-up only)
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from emotion_circuits.config import load_params
from emotion_circuits.extract import ExtractSettings, extract, pad_left, tokenize_prompt
from emotion_circuits.models import _gguf_path, load_model

FALLBACK = ["The ferry left without the last three passengers, and the next one was due on Thursday morning.",
            "A parcel sat on the step for two days before anyone in the building carried it inside."]


def stimuli(params, n):
    path = Path(params.stimuli.get("B", ""))
    if path.exists():
        from emotion_circuits.stimuli import load_stimuli
        items = load_stimuli(path)
    else:
        items = [SimpleNamespace(id=f"x{i}", emotion="grief", text=t) for i, t in enumerate(FALLBACK)]
    return [items[i % len(items)] for i in range(n)]


STARTUP = """import sys
from emotion_circuits.config import load_params
from emotion_circuits.models import load_model
load_model(sys.argv[1], load_params(), device="cpu", dtype="float32")
"""


def timed(fn, repeat=2):
    fn()  # warm-up: first calls on new shapes are slower
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="skip the one-by-one loops and the GGUF load")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each line as soon as it is measured, also into a file
    params = load_params()
    template = params.prompt("two-shot").template
    torch.set_num_threads(torch.get_num_threads())
    for name in args.models:
        start = time.perf_counter()
        loaded = load_model(name, params, device="cpu", dtype="float32")
        load_cache = time.perf_counter() - start
        items = stimuli(params, args.n)
        settings = ExtractSettings(batch_size=args.batch_size, prefix_cache=False)
        cached = ExtractSettings(batch_size=args.batch_size, prefix_cache=True)
        prompts = sorted((tokenize_prompt(loaded.tokenizer, template, s.text).ids for s in items), key=len)
        batches = [pad_left(prompts[i:i + args.batch_size], loaded.tokenizer.pad_token_id, "cpu")
                   for i in range(0, len(prompts), args.batch_size)]

        def bare():
            with torch.inference_mode():
                for batch in batches:
                    loaded.model(**batch, logits_to_keep=1, use_cache=False)

        t_bare = timed(bare)
        t_extract = timed(lambda: extract(loaded, items, template, settings, progress=False))
        t_cached = timed(lambda: extract(loaded, items, template, cached, progress=False))
        plain_arrays = extract(loaded, items, template, settings, progress=False)
        cached_arrays = extract(loaded, items, template, cached, progress=False)
        error = max(float(abs(cached_arrays[k] - plain_arrays[k]).max() / abs(plain_arrays[k]).max())
                    for k in ("h", "a", "m", "attention"))
        n_prefix = json.loads(str(cached_arrays["meta"]))["prefix_tokens"]
        n_tokens = sum(len(p) for p in prompts)
        print(f"{name}: {args.n} prompts, {n_tokens} tokens (the first {n_prefix} of each prompt are the shared "
              f"prefix), batch {args.batch_size}, float32, {torch.get_num_threads()} threads")
        print(f"  extraction (plain)    {t_extract:7.2f} s  ({n_tokens / t_extract:6.0f} tokens/s)"
              f"  throughput vs bare forward {t_bare:.2f} s: {t_bare / t_extract:.2f}x (target >= 0.9x)")
        print(f"  extraction (prefix)   {t_cached:7.2f} s  prefix-cached speed-up: {t_extract / t_cached:.2f}x "
              f"(target >= 1.8x); largest difference / scale {error:.1e}")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", STARTUP, name], check=True)
        print(f"  start-up of a fresh process (import torch and transformers, load the model): "
              f"{time.perf_counter() - start:.1f} s (saved for each set after the first of a model x prompt)")
        if args.quick:
            continue
        t_single = timed(lambda: extract(loaded, items, template, ExtractSettings(batch_size=1, prefix_cache=False),
                                         progress=False), repeat=1)

        def naive():
            with torch.inference_mode():
                for ids in prompts:
                    out = loaded.model(input_ids=torch.tensor([ids]), output_attentions=True,
                                       output_hidden_states=True, use_cache=False)
                    [h[:, -1].numpy() for h in out.hidden_states], [a[:, :, -1].numpy() for a in out.attentions]
                    out.logits[:, -1].numpy()

        t_naive = timed(naive, repeat=1)
        print(f"  plain (1 by 1)        {t_single:7.2f} s  batched speed-up: {t_single / t_extract:.2f}x (target >= 3x)")
        print(f"  naive loop (1 by 1)   {t_naive:7.2f} s  extraction speed-up: {t_naive / t_extract:.2f}x")
        spec = params.model(name)
        if spec.source == "gguf-package":
            from transformers import AutoModelForCausalLM
            gguf = _gguf_path(spec)
            start = time.perf_counter()
            AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            load_gguf = time.perf_counter() - start
            print(f"  load: safetensors cache {load_cache:.1f} s vs GGUF {load_gguf:.1f} s "
                  f"({load_gguf / load_cache:.0f}x faster)")


if __name__ == "__main__":
    main()
