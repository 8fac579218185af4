"""The B-vs-N bag-of-words baseline with splits grouped by pair: how much word choice alone tells a vignette from
its neutral twin when a pair never straddles train and test (the split and the cluster bootstrap are
stats.splits and stats.bootstrap_auroc, as in the screen).

    python tools/bow_grouped.py                      # the working tree's stimuli/sets/set_B.jsonl and set_N.jsonl
    python tools/bow_grouped.py --rev HEAD~3         # the sets as committed at a git revision
    python tools/bow_grouped.py --dir drafts/        # drafts/set_B.jsonl and drafts/set_N.jsonl
    python tools/bow_grouped.py --top 20 --easiest 15

Same pipeline as the screen (screen.bow_model: CountVectorizer + logistic regression, vocabulary fitted in each
training fold), StratifiedGroupKFold(5, shuffled with the seed), AUROC of P(B) with 95 % bootstrap intervals over
items (stats.bootstrap_auroc, as the screen) and over pairs (both items of a resampled pair). Also prints the words
with the largest weights when fitted on all items, and the pairs the out-of-fold classifier separates most easily
(P(B | vignette) - P(B | twin)), the N twins to revise first. Writes nothing.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from emotion_circuits import stats
from emotion_circuits.screen import bow_model
from emotion_circuits.stimuli import load_sets

log = logging.getLogger("bow_grouped")


def load(rev: str | None, folder: str = "stimuli") -> dict:
    if rev is None:
        return load_sets({name: Path(folder) / f"set_{name}.jsonl" for name in "BN"})
    tmp = Path(tempfile.mkdtemp())
    for name in "BN":
        text = subprocess.run(["git", "show", f"{rev}:stimuli/sets/set_{name}.jsonl"], capture_output=True, text=True,
                              check=True).stdout
        (tmp / f"set_{name}.jsonl").write_text(text, encoding="utf-8")
    return load_sets({name: tmp / f"set_{name}.jsonl" for name in "BN"})


def grouped_bow(b, n, folds: int, seed: int, n_boot: int) -> dict:
    """Out-of-fold P(B) `(2m,)` of the m vignettes then their m twins, AUROC and item/pair bootstrap intervals."""
    n_by_id = {s.id: s for s in n}
    twins = [n_by_id[s.pair] for s in b]
    texts = np.array([s.text for s in b] + [s.text for s in twins], dtype=str)
    y = np.r_[np.ones(len(b), dtype=int), np.zeros(len(b), dtype=int)]
    groups = np.r_[np.arange(len(b)), np.arange(len(b))]
    proba = stats.cv_proba(texts, y, stats.splits(y, folds, seed, groups)[0], model_factory=bow_model)
    point, low, high = stats.bootstrap_auroc(y, proba, n_boot, seed)
    _, p_low, p_high = stats.bootstrap_auroc(y, proba, n_boot, seed, groups=groups)   # both twins drawn together
    return {"proba": proba[:, 1], "auroc": point, "item": (low, high), "pair": (p_low, p_high), "twins": twins}


def top_words(b, twins, k: int) -> tuple[list, list]:
    model = bow_model().fit([s.text for s in b] + [s.text for s in twins], np.r_[np.ones(len(b)), np.zeros(len(b))])
    vocab = model[0].get_feature_names_out()
    coef = model[-1].coef_[0]
    order = np.argsort(coef)
    return ([(vocab[i], coef[i]) for i in order[::-1][:k]], [(vocab[i], coef[i]) for i in order[:k]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=None, help="git revision to read the sets from (default: working tree)")
    parser.add_argument("--dir", default="stimuli", help="folder of set_B.jsonl and set_N.jsonl (without --rev)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--easiest", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    sets = load(args.rev, args.dir)
    b = sets["B"]
    out = grouped_bow(b, sets["N"], args.folds, args.seed, args.n_boot)
    log.info("B vs N, bag of words, %d pairs, StratifiedGroupKFold(%d) by pair, seed %d: AUROC %.3f "
             "[%.3f, %.3f] (items) [%.3f, %.3f] (pairs)", len(b), args.folds, args.seed, out["auroc"], *out["item"],
             *out["pair"])
    to_b, to_n = top_words(b, out["twins"], args.top)
    log.info("words weighted to B: %s", ", ".join(f"{w} {c:+.2f}" for w, c in to_b))
    log.info("words weighted to N: %s", ", ".join(f"{w} {c:+.2f}" for w, c in to_n))
    margin = out["proba"][:len(b)] - out["proba"][len(b):]
    log.info("easiest pairs (out-of-fold P(B|vignette) - P(B|twin)):")
    for i in np.argsort(margin)[::-1][:args.easiest]:
        log.info("  %.2f  %s / %s", margin[i], b[i].id, b[i].pair)


if __name__ == "__main__":
    main()
