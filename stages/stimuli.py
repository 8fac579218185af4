"""dvc stage `stimuli`: screen every stimulus set -> metrics/stimuli.json, plots/stimuli/pairs.csv

Fails (one line naming the items) if Sets B, N or C contain a word of the explicit lexicon or a B/N pair is out of
length tolerance, if `stimuli/ratings.jsonl` exists and an item falls short of the blind-reading rule, or (policy
`fail`) on a display cue or a style breach; then nothing is written.

`--dev-style` prints only the style-only baseline on `screen.dev_seed` (for writers revising the sets) and writes
nothing.
"""
import argparse
import logging
from pathlib import Path

from emotion_circuits import cli
from emotion_circuits.config import load_params
from emotion_circuits.io import write_csv, write_json
from emotion_circuits.ratings import load_ratings
from emotion_circuits.screen import DISPLAY_CUES, ScreenSettings, dev_style_baseline, load_lexicon, pair_ratios, screen
from emotion_circuits.stimuli import load_params_sets

log = logging.getLogger("stimuli")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--dev-style", action="store_true",
                        help="print the style-only baseline on screen.dev_seed and exit (writes nothing)")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.section("screen", ScreenSettings)
    sets = load_params_sets(params)
    if args.dev_style:
        for task, v in dev_style_baseline(sets, settings).items():
            print(f"{task}: style-only AUROC {v['auroc']:.3f} [{v['low']:.3f}, {v['high']:.3f}] "
                  f"(dev seed {settings.dev_seed})")
        return
    paths = {name: params.stimulus_file(name) for name in sets}
    readings = load_ratings(settings.ratings, [s.id for items in sets.values() for s in items])
    metrics = screen(sets, load_lexicon(settings.lexicon), settings, seed=params.seed,
                     cues=load_lexicon(settings.lexicon, DISPLAY_CUES), paths=paths, ratings=readings)
    rows = [{"b_id": b, "n_id": n, "words_b": wb, "words_n": wn, "ratio": wn / wb}
            for b, n, wb, wn in pair_ratios(sets)]
    write_json(Path(args.metrics) / "stimuli.json", metrics)
    write_csv(Path(args.plots) / "stimuli" / "pairs.csv", rows, ["b_id", "n_id", "words_b", "words_n", "ratio"])
    cues, style = metrics["display_cues"], metrics["style_checks"]
    log.info("display cues (%s): %d hits in %d items; style checks (%s): %d breaches; ratings: %s", cues["policy"],
             cues["n_hits"], cues["n_items"], style["policy"], len(style["breaches"]),
             "rated" if metrics["ratings"]["rated"] else "not rated")
    for task, found in metrics["baselines"].items():
        log.info("%s: %s", task, ", ".join(f"{k} {v['auroc']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
                                           for k, v in found.items()))


if __name__ == "__main__":
    cli.run(main)
