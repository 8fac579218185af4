"""The headline metrics file: the HEADLINE keys of the summary with their bounds, written by dvclive without
touching dvc.yaml, atomically, and small enough for `dvc metrics diff` to fit a screen."""
from __future__ import annotations

import json
import math
from unittest import mock

import pytest

from emotion_circuits.headline import HEADLINE, headline, write_headline
from test_report import MODELS, run_root, summarize  # noqa: F401  (run_root: the fixture run)


def test_headline_keeps_the_listed_keys_with_bounds_and_drops_missing_or_non_finite():
    flat = {"m/h.set_b.nested": 0.9, "m/h.set_b.nested_low": 0.85, "m/h.set_b.nested_high": 0.95,
            "m/h.set_a.nested": float("nan"), "m/steering.earliest.layer": 21, "m/steering.earliest.layer_low": 20,
            "m/heads.survivors.at_chance": True, "m/h.set_b.auroc": 0.91, "other/h.set_b.nested": 0.5,
            "m/h.transfer.auroc": None}
    assert headline(flat, ["m"]) == {"m": {"h.set_b.nested": 0.9, "h.set_b.nested_low": 0.85,
                                           "h.set_b.nested_high": 0.95, "steering.earliest.layer": 21}}


def test_written_through_dvclive_nested_by_model_without_touching_dvc_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    path = tmp_path / "metrics" / "headline.json"
    numbers = {"a": {"h.set_b.nested": 0.91234567, "steering.earliest.layer": 21}, "b": {"h.set_b.nested": 0.5}}
    write_headline(path, numbers)
    assert json.loads(path.read_text()) == {"a": {"h.set_b.nested": 0.912346, "steering.earliest.layer": 21},
                                            "b": {"h.set_b.nested": 0.5}}
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["headline.json"]      # no temporary folder left


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "headline.json"
    write_headline(path, {"a": {"x": 1.0}})
    before = path.read_bytes()
    with mock.patch("dvclive.Live.make_summary", side_effect=RuntimeError("killed")):
        with pytest.raises(RuntimeError, match="killed"):
            write_headline(path, {"a": {"x": 2.0}})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["headline.json"]


def test_the_summary_stage_writes_a_headline_of_about_fifty_numbers_per_model(run_root, tmp_path):
    flat, _ = summarize(run_root, tmp_path)
    written = json.loads((tmp_path / "headline.json").read_text())
    assert sorted(written) == sorted(MODELS)
    for model, values in written.items():
        assert 20 <= len(values) <= 2 * len(HEADLINE) + 10, model
        for key, value in values.items():
            assert math.isclose(value, flat[f"{model}/{key}"], rel_tol=1e-6), key
    assert "h.set_b.nested_low" in written["tiny-llama"] and "steering.share.share" in written["tiny-llama"]
