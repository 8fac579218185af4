"""The summary's probe cells print the numbers of their own keys: built from metrics with known, distinct values,
every printed number is checked against its source key (the nested estimate once carried the peak's interval)."""
from __future__ import annotations

import re

from emotion_circuits import report

TASKS = ("set_a", "set_b", "transfer", "b_vs_n")


def known_probes() -> dict:
    """Distinct values per task and key, so a number taken from the wrong key cannot match by accident."""
    probes = {}
    for i, task in enumerate(TASKS):
        base = 0.5 + 0.1 * i
        site = {"auroc": base + 0.011, "low": base + 0.002, "high": base + 0.023, "peak_layer": 3 + i,
                "null_p95": base - 0.044, "p_max_layers": 0.00123 + i * 1e-5,
                "margin": 0.031 + i / 1000, "margin_low": -0.012 - i / 1000, "margin_high": 0.067 + i / 1000}
        if task != "transfer":
            site.update(nested_auroc=base + 0.005, nested_low=base - 0.017, nested_high=base + 0.019)
        probes[task] = {"h": site, "best_baseline": "embedding", "best_baseline_auroc": base - 0.026}
    return probes


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[+-]?\d+\.\d+", text)]


def test_headline_cells_print_the_nested_estimate_with_its_own_interval_and_the_nested_margin():
    probes = known_probes()
    for task in TASKS:
        t, m = probes[task], probes[task]["h"]
        cell = report.headline_probe(t, "h")
        expected = [m["auroc"], m["low"], m["high"]]
        if task != "transfer":
            expected += [m["nested_auroc"], m["nested_low"], m["nested_high"]]
        expected += [t["best_baseline_auroc"], m["margin"], m["margin_low"], m["margin_high"]]
        assert numbers(cell.text) == [round(v, 3) for v in expected], (task, cell.text)
        assert "embedding" in cell.text
        if task != "transfer":
            assert cell.stats["nested_low"] == m["nested_low"] and cell.stats["nested_high"] == m["nested_high"]
        assert cell.stats["margin"] == m["margin"] and cell.stats["baseline_auroc"] == t["best_baseline_auroc"]


def test_control_and_probe_table_rows_use_each_number_s_own_key():
    probes = known_probes()
    nested = {key: cell for key, _, cell in report.control_rows(probes, "h") if key.endswith(".nested")}
    for task in ("set_a", "set_b", "b_vs_n"):
        m = probes[task]["h"]
        assert numbers(nested[f"h.{task}.nested"].text) == [round(m[k], 3) for k in
                                                            ("nested_auroc", "nested_low", "nested_high")]
    flat = {}
    body = report.probe_table("x", probes, "h", flat)
    for (task, _), row in zip(report.PROBE_TASKS, body):
        t, m = probes[task], probes[task]["h"]
        printed = numbers(" | ".join(row[1:]))
        expected = [m["auroc"], m["low"], m["high"], m["null_p95"], t["best_baseline_auroc"], m["margin"],
                    m["margin_low"], m["margin_high"], float(f"{m['p_max_layers']:.3g}")]
        if task != "transfer":
            expected += [m["nested_auroc"], m["nested_low"], m["nested_high"]]
        assert printed == [round(v, 5) if v < 0.01 else round(v, 3) for v in expected], (task, row)
        assert flat[f"x/probe.{task}.margin_low"] == m["margin_low"]
