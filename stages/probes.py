"""dvc stage `probes`: linear probes, their nulls, text baselines and controls for one model ->
metrics/<model>/probes.json, plots/<model>/"""
import argparse
from pathlib import Path

from emotion_circuits import cli
from emotion_circuits.config import load_params
from emotion_circuits.probes import (input_embeddings, random_init_of, read_items, run_probes, settings_from,
                                     write_outputs)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--activations", default="data/activations", help="holds <model>/<prompt>/<set>.npz")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the bag-of-input-embeddings baseline")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = settings_from(params)
    control = random_init_of(params, args.model)
    items = {}
    for name in params.stimuli:
        items.update(read_items(params.stimulus_file(name)))
    embeddings = None if args.no_embeddings else input_embeddings(args.model, params,
                                                                  {i: o["text"] for i, o in items.items()})
    root = Path(args.activations)
    result = run_probes(root / args.model, settings, control_folder=root / control if control else None,
                        items=items, embeddings=embeddings)
    write_outputs(result, Path(args.metrics) / args.model / "probes.json", Path(args.plots) / args.model)


if __name__ == "__main__":
    cli.run(main)
