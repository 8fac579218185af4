"""The headline metrics: a few dozen flat numbers per model picked from the summary, the one file `dvc.yaml`
declares as `metrics:`, so `dvc metrics show` and `dvc metrics diff` fit a screen (the detailed JSONs stay
committed outputs that `dvc diff` tracks). Written through dvclive (`Live.log_metric`), into a temporary folder
renamed onto `metrics/headline.json`, with `dvcyaml=None` so that dvclive never edits `dvc.yaml` inside `dvc repro`.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from .io import _clean

# summary keys `<model>/<key>` kept, by what a reader compares across commits; the _low/_high of each are kept too
# (not for layers), so two models give about 100 rows of `dvc metrics diff`
HEADLINE = (
    "h.set_a.nested", "h.set_a.margin", "h.set_b.nested", "h.set_b.margin", "h.transfer.auroc", "h.transfer.margin",
    "h.b_vs_n.nested", "h.b_vs_n.margin", "h.set_b.random_init.auroc",
    "behaviour.A.accuracy", "behaviour.B.accuracy", "behaviour.B.probe_agreement.kappa",
    "h.patching_recovery.first_layer", "patching.best.recovery_minus_control",
    "steering.earliest.layer", "steering.share.share", "steering.share.random_share", "steering.grain.moved",
    "steering.ablation.next_drop_minus_random", "steering.generation.steered", "steering.valence.r",
)
BOUNDS = ("", "_low", "_high")


def headline(flat: dict, models) -> dict[str, dict[str, float]]:
    """{model: {key: value}} of the HEADLINE keys (and their bounds) present in the summary's flat numbers; a
    missing or non-finite number is left out (a stage that did not run)."""
    out = {}
    for model in models:
        values = {}
        for key in HEADLINE:
            for bound in BOUNDS if not key.endswith("layer") else ("",):     # a layer's bounds say nothing
                value = flat.get(f"{model}/{key}{bound}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                values[f"{key}{bound}"] = value
        out[model] = values
    return out


def write_headline(path, numbers: dict[str, dict[str, float]]) -> None:
    """`numbers` ({model: {key: value}}) as dvclive's metrics file at `path`: nested by model, values rounded like
    every metrics JSON of the project; nothing at `path` changes unless the whole file was written."""
    from dvclive import Live

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        live = Live(dir=tmp, dvcyaml=None, save_dvc_exp=False, report=None)
        for model, values in _clean(numbers).items():
            for key, value in sorted(values.items()):
                live.log_metric(f"{model}/{key}", value, plot=False)
        live.make_summary()
        os.replace(Path(tmp) / "metrics.json", path)
