"""dvc stage `extract`: activations of one model x prompt x stimulus set -> data/activations/<model>/<prompt>/<set>.npz"""
import argparse
from pathlib import Path

from emotion_circuits import cli
from emotion_circuits.config import load_params
from emotion_circuits.extract import ExtractSettings, extract, save_activations
from emotion_circuits.models import load_model
from emotion_circuits.stimuli import load_stimuli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--set", required=True, dest="set_name")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="default: data/activations/<model>/<prompt>/<set>.npz")
    args = parser.parse_args()

    params = load_params(args.params)
    params.model(args.model)  # every check before the slow part: names, settings, stimulus file
    template = params.prompt(args.prompt).template
    settings = params.section("extract", ExtractSettings)
    stimuli = load_stimuli(params.stimulus_file(args.set_name), args.set_name)
    out = Path(args.out or f"data/activations/{args.model}/{args.prompt}/{args.set_name}.npz")

    loaded = load_model(args.model, params)
    arrays = extract(loaded, stimuli, template, settings, prompt_name=args.prompt, set_name=args.set_name)
    save_activations(out, arrays)


if __name__ == "__main__":
    cli.run(main)
