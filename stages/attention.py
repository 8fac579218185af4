"""dvc stage `attention` (one model): where the extraction position attends, per layer and head: stimulus text,
template, first token (sink) and, using the stimuli lexicon, emotion words, each as a share and as a ratio to its
uniform expectation (1 = no preference); the text ratio compared between two sets.

Writes metrics/<model>/attention.json, plots/<model>/attention.csv (set, layer, head) and
plots/<model>/attention_sets.csv (layer: text share and text ratio of each compared set, the ratio difference with
its bootstrap interval, permutation p and BH q over layers).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from emotion_circuits import attention as att, cli
from emotion_circuits.config import load_params
from emotion_circuits.io import write_csv, write_json
from emotion_circuits.seeds import derive

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
                row[f"{key}_ratio"] = sh[f"{key}_ratio"][:, layer, head].mean()
            if has.any():
                row["emotion_word_share"] = sh["emotion_word"][has, layer, head].mean()
                row["emotion_word_uniform"] = sh["emotion_word_uniform"][has, layer, head].mean()
                row["emotion_word_ratio"] = sh["emotion_word_ratio"][has, layer, head].mean()
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
    seed = derive(params.seed, "attention")
    params.model(args.model)
    settings = params.section("attention", att.AttentionSettings)
    lexicon = att.load_lexicon(settings.lexicon)
    metrics = {"prompt": settings.prompt, "lexicon_entries": len(lexicon), "sets": {}}
    rows, per_stimulus, ratio = [], {}, {}
    columns = ["set", "layer", "head", "text_share", "sink_share", "template_share", "text_ratio", "sink_ratio",
               "template_ratio", "emotion_word_share", "emotion_word_uniform", "emotion_word_ratio"]
    for name in settings.sets:
        data = att.read_attention(Path(args.activations) / args.model / settings.prompt / f"{name}.npz")
        mask = att.emotion_word_mask(data["tokens"], data["text_start"], data["text_end"], lexicon)
        sh = att.shares(data["attention"], data["n_tokens"], data["text_start"], data["text_end"], mask)
        n_text = data["text_end"] - data["text_start"]
        metrics["sets"][name] = att.summarize_set(sh, n_text, settings.n_boot, derive(seed, "sets", name))
        top = att.top_heads(sh, settings.top_heads)
        if top:
            metrics["sets"][name]["top_emotion_word_heads"] = top
        rows += head_rows(name, sh)
        text = sh["text"].mean(axis=2)                                            # (n, L): mean over heads
        per_stimulus[name] = np.column_stack([text, text.mean(axis=1)])           # last column: mean over layers
        r = sh["text_ratio"].mean(axis=2)                                         # (n, L) ratio to uniform
        ratio[name] = np.column_stack([r, r.mean(axis=1)])
        summary = metrics["sets"][name]
        log.info("%s set %s: text share %.3f, text ratio %.2f (peak %.2f at layer %d), sink %.3f, emotion words in "
                 "%s stimuli", args.model, name, summary["text_share"]["mean"], summary["text_ratio"]["mean"],
                 summary["text_ratio_peak"]["mean"], summary["text_ratio_peak"]["layer"], summary["sink_share"]["mean"],
                 summary.get("stimuli_with_emotion_words", 0))
    sa, sb = settings.compare
    diff = att.compare_sets(per_stimulus[sa], per_stimulus[sb], settings.n_boot, derive(seed, "share"))
    # significance over layers only (the last column, the mean over layers, is the headline and tested on its own)
    by_layer = att.compare_sets(ratio[sa][:, :-1], ratio[sb][:, :-1], settings.n_boot, derive(seed, "by layer"),
                                n_perm=settings.n_perm)
    overall = att.compare_sets(ratio[sa][:, -1:], ratio[sb][:, -1:], settings.n_boot, derive(seed, "overall"),
                               n_perm=settings.n_perm)
    n_layers = per_stimulus[sa].shape[1] - 1
    layer_rows = [{"layer": l, "depth": (l + 1) / n_layers, "set_a": sa, "set_b": sb,
                   "text_share_a": per_stimulus[sa][:, l].mean(), "text_share_b": per_stimulus[sb][:, l].mean(),
                   "text_ratio_a": ratio[sa][:, l].mean(), "text_ratio_b": ratio[sb][:, l].mean(),
                   "ratio_diff": by_layer["diff"][l], "ratio_low": by_layer["low"][l],
                   "ratio_high": by_layer["high"][l], "p": by_layer["p"][l], "q_bh": by_layer["q_bh"][l]}
                  for l in range(n_layers)]
    significant = by_layer["q_bh"] < 0.05
    metrics["compare"] = {
        "set_a": sa, "set_b": sb,
        "text_share_diff": {k: diff[k][-1] for k in ("diff", "low", "high")},
        "text_ratio_diff": {**{k: overall[k][0] for k in ("diff", "low", "high")}, "p": overall["p"][0]},
        "layers_a_higher_bh": int(np.sum(significant & (by_layer["diff"] > 0))),
        "layers_b_higher_bh": int(np.sum(significant & (by_layer["diff"] < 0))),
        "max_abs_ratio_diff_layer": int(np.argmax(np.abs(by_layer["diff"]))),
        "max_abs_ratio_diff_p_max": by_layer["p_max"]}
    plots = Path(args.plots) / args.model
    write_csv(plots / "attention.csv", rows, columns)
    write_csv(plots / "attention_sets.csv", layer_rows)
    write_json(Path(args.metrics) / args.model / "attention.json", metrics)


if __name__ == "__main__":
    cli.run(main)
