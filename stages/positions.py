"""dvc stage `positions`: B -> N patching of h at each relative position of the stimulus text -> metrics/<model>/positions.json, plots/<model>/positions*.csv"""
import argparse

from emotion_circuits import cli
from emotion_circuits.causal_report import run_stage
from emotion_circuits.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    args = parser.parse_args()
    run_stage(load_params(args.params), args.model, "positions", args.metrics, args.plots)


if __name__ == "__main__":
    cli.run(main)
