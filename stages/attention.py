"""dvc stage `attention` (one model): where the extraction position attends, per layer and head: stimulus text,
template, first token (sink) and, using the stimuli lexicon, emotion words; text share compared between two sets.

Writes metrics/<model>/attention.json, plots/<model>/attention.csv (set, layer, head) and
plots/<model>/attention_sets.csv (layer: text share of each compared set, difference and its bootstrap interval).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from emotion_circuits import attention as att, cli
from emotion_circuits.config import load_params
from emotion_circuits.io import write_csv, write_json

log = logging.getLogger("attention")


def head_rows(name: str, sh: dict) -> list[dict]:
    """Means over stimuli per (layer, head); emotion-word columns over the stimuli that contain an emotion word."""
    has = sh["emotion_word_uniform"].sum(axis=(1, 2)) > 0
    n_layers, n_heads = sh["text"].shape[1:]
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            row = {"set": name, "layer": layer, "head": head}
            for key in ("text", "sink", "template"):
                row[f"{key}_share"] = sh[key][:, layer, head].mean()
            if has.any():
                row["emotion_word_share"] = sh["emotion_word"][has, layer, head].mean()
                row["emotion_word_uniform"] = sh["emotion_word_uniform"][has, layer, head].mean()
            rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--activations", default="data/activations")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    params.model(args.model)
    settings = params.section("attention", att.AttentionSettings)
    lexicon = att.load_lexicon(settings.lexicon)
    metrics = {"prompt": settings.prompt, "lexicon_entries": len(lexicon), "sets": {}}
    rows, per_stimulus, per_token = [], {}, {}
    columns = ["set", "layer", "head", "text_share", "sink_share", "template_share", "emotion_word_share",
               "emotion_word_uniform"]
    for name in settings.sets:
        data = att.read_attention(Path(args.activations) / args.model / settings.prompt / f"{name}.npz")
        mask = att.emotion_word_mask(data["tokens"], data["text_start"], data["text_end"], lexicon)
        sh = att.shares(data["attention"], data["n_tokens"], data["text_start"], data["text_end"], mask)
        n_text = data["text_end"] - data["text_start"]
        metrics["sets"][name] = att.summarize_set(sh, n_text, settings.n_boot, params.seed)
        top = att.top_heads(sh, settings.top_heads)
        if top:
            metrics["sets"][name]["top_emotion_word_heads"] = top
        rows += head_rows(name, sh)
        text = sh["text"].mean(axis=2)                                            # (n, L): mean over heads
        per_stimulus[name] = np.column_stack([text, text.mean(axis=1)])           # last column: mean over layers
        per_token[name] = per_stimulus[name] / np.maximum(n_text, 1)[:, None]     # share per text token
        log.info("%s set %s: text share %.3f, sink %.3f, emotion words in %s stimuli", args.model, name,
                 metrics["sets"][name]["text_share"]["mean"], metrics["sets"][name]["sink_share"]["mean"],
                 metrics["sets"][name].get("stimuli_with_emotion_words", 0))
    sa, sb = settings.compare
    diff = att.compare_sets(per_stimulus[sa], per_stimulus[sb], settings.n_boot, params.seed)
    tok = att.compare_sets(per_token[sa], per_token[sb], settings.n_boot, params.seed)
    n_layers = per_stimulus[sa].shape[1] - 1
    layer_rows = [{"layer": l, "depth": (l + 1) / n_layers, "set_a": sa, "set_b": sb,
                   "text_share_a": per_stimulus[sa][:, l].mean(), "text_share_b": per_stimulus[sb][:, l].mean(),
                   "diff": diff["diff"][l], "low": diff["low"][l], "high": diff["high"][l],
                   "per_token_a": per_token[sa][:, l].mean(), "per_token_b": per_token[sb][:, l].mean(),
                   "per_token_diff": tok["diff"][l], "per_token_low": tok["low"][l], "per_token_high": tok["high"][l]}
                  for l in range(n_layers)]
    metrics["compare"] = {
        "set_a": sa, "set_b": sb,
        "text_share_diff": {k: diff[k][-1] for k in ("diff", "low", "high")},
        "text_share_per_token_diff": {k: tok[k][-1] for k in ("diff", "low", "high")},
        "layers_a_higher_per_token": int(np.sum(tok["low"][:-1] > 0)),
        "layers_b_higher_per_token": int(np.sum(tok["high"][:-1] < 0)),
        "layers_a_higher": int(np.sum(diff["low"][:-1] > 0)), "layers_b_higher": int(np.sum(diff["high"][:-1] < 0)),
        "max_abs_diff_layer": int(np.argmax(np.abs(diff["diff"][:-1])))}
    plots = Path(args.plots) / args.model
    write_csv(plots / "attention.csv", rows, columns)
    write_csv(plots / "attention_sets.csv", layer_rows)
    write_json(Path(args.metrics) / args.model / "attention.json", metrics)


if __name__ == "__main__":
    cli.run(main)
