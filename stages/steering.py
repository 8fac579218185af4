"""dvc stage `steering`: emotion directions (difference of means on the fitting set), steering the neutral set over layers and doses against same-norm random directions, the specificity matrix and steering against the grain -> metrics/<model>/steering.json, plots/<model>/steering*.csv, data/steering/<model>/directions.npz"""
import argparse

from emotion_circuits import cli
from emotion_circuits.config import load_params
from emotion_circuits.steering_report import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--activations", default="data/activations")
    parser.add_argument("--directions", default=None, help="default data/steering/<model>/directions.npz")
    args = parser.parse_args()
    run_stage(load_params(args.params), args.model, args.metrics, args.plots, args.activations, args.directions)


if __name__ == "__main__":
    cli.run(main)
