"""dvc stage `summary`: the cross-model table (the published study's rows, with intervals and controls) from the
stage outputs of the models in params `run.analyze`.

Writes metrics/summary.json (flat keys `<model>/<site>.<result>.<number>`), metrics/summary.md and
metrics/headline.json (the few dozen numbers per model that `dvc metrics show` / `diff` print).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from emotion_circuits import cli, report
from emotion_circuits.headline import headline, write_headline
from emotion_circuits.config import load_params
from emotion_circuits.io import write_json, write_text
from emotion_circuits.probes import ProbeSettings

log = logging.getLogger("summary")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics", help="holds <model>/probes.json, stimuli.json, cka.json, ...")
    parser.add_argument("--plots", default="plots")
    parser.add_argument("--out", default=None, help="folder for summary.json and summary.md (default: --metrics)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    threshold = params.section("probes", ProbeSettings).saturation
    outputs = report.Outputs(Path(args.metrics), Path(args.plots))
    summary = report.build_summary(outputs, params.run.analyze, threshold)
    out = Path(args.out or args.metrics)
    write_json(out / "summary.json", summary.flat)
    write_text(out / "summary.md", summary.markdown())
    write_headline(out / "headline.json", headline(summary.flat, params.run.analyze))
    log.info("summary of %s: %d numbers, %d tables -> %s", ", ".join(params.run.analyze), len(summary.flat),
             len(summary.tables), out / "summary.md")


if __name__ == "__main__":
    cli.run(main)
