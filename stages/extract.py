"""dvc stage `extract`: activations of one model x prompt for several stimulus sets (one start-up of torch and the
model for all of them) -> data/activations/<model>/<prompt>/<set>.npz, one file per set"""
import argparse
from pathlib import Path

from emotion_circuits import cli
from emotion_circuits.config import ConfigError, load_params
from emotion_circuits.extract import ExtractSettings, extract_sets
from emotion_circuits.models import load_model
from emotion_circuits.stimuli import load_stimuli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--sets", "--set", nargs="+", dest="sets", help="default: params.yaml run.sets")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", help="default: data/activations/<model>/<prompt>")
    parser.add_argument("--out", help="output file, with a single set only")
    args = parser.parse_args()

    params = load_params(args.params)
    params.model(args.model)  # every check before the slow part: names, settings, stimulus files
    template = params.prompt(args.prompt).template
    settings = params.section("extract", ExtractSettings)
    stimuli = {name: load_stimuli(params.stimulus_file(name), name) for name in args.sets or params.run.sets}
    if args.out and len(stimuli) != 1:
        raise ConfigError(f"--out names one file but {len(stimuli)} sets were asked for ({' '.join(stimuli)}); "
                          "use --out-dir")
    out_dir = Path(args.out_dir or f"data/activations/{args.model}/{args.prompt}")
    sets = {name: (items, Path(args.out) if args.out else out_dir / f"{name}.npz") for name, items in stimuli.items()}

    loaded = load_model(args.model, params)
    extract_sets(loaded, sets, template, settings, prompt_name=args.prompt)


if __name__ == "__main__":
    cli.run(main)
