"""dvc stage `stimuli`: screen every stimulus set -> metrics/stimuli.json, plots/stimuli/pairs.csv

Fails (one line naming the items) if Sets B, N or C contain a word of the explicit lexicon or a B/N pair is out of
length tolerance; then nothing is written.
"""
import argparse
import logging
from pathlib import Path

from emotion_circuits import cli
from emotion_circuits.config import load_params
from emotion_circuits.io import write_csv, write_json
from emotion_circuits.screen import ScreenSettings, load_lexicon, pair_ratios, screen
from emotion_circuits.stimuli import load_params_sets

log = logging.getLogger("stimuli")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.section("screen", ScreenSettings)
    sets = load_params_sets(params)
    metrics = screen(sets, load_lexicon(settings.lexicon), settings, seed=params.seed)
    rows = [{"b_id": b, "n_id": n, "words_b": wb, "words_n": wn, "ratio": wn / wb}
            for b, n, wb, wn in pair_ratios(sets)]
    write_json(Path(args.metrics) / "stimuli.json", metrics)
    write_csv(Path(args.plots) / "stimuli" / "pairs.csv", rows, ["b_id", "n_id", "words_b", "words_n", "ratio"])
    for task, found in metrics["baselines"].items():
        log.info("%s: %s", task, ", ".join(f"{k} {v['auroc']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
                                           for k, v in found.items()))


if __name__ == "__main__":
    cli.run(main)
