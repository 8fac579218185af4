"""Figures stage on the fixture run of test_report: every figure written as PNG and SVG at the stated size, drawn
from the stage outputs (curve values equal the CSV values), chance where it is, house style, absent optional inputs
skipped with a warning, a missing required input named in one line."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.text import Text

from emotion_circuits import figures as F, report
from emotion_circuits.config import load_params
from emotion_circuits.io import DataError
from test_report import MODELS, ROOT, build_run, copy_run, stage


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.getbasetemp() / "fixture-run")


def expected_names() -> list[str]:
    names = ["auroc_depth", "transfer_binary", "cka_models", "cka_depths", "cka_matched", "attention_text_share",
             "patching", "knockout", "heads", "positions", "steering_dose", "steering_specificity", "steering_affect", "steering_ablation"]
    for model in MODELS:
        names += [f"pca_{model}", f"centroid_cosine_{model}"]
    return sorted(names)


def draw(root: Path, out: Path) -> None:
    stage("figures").main(["--params", str(root / "params.yaml"), "--metrics", str(root / "metrics"),
                           "--plots", str(root / "plots"), "--figures", str(out)])


def jobs(root: Path) -> dict:
    outputs = report.Outputs(root / "metrics", root / "plots")
    return dict(stage("figures").figure_jobs(outputs, load_params(root / "params.yaml")))


@pytest.fixture(scope="module")
def drawn(run_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figures")
    draw(run_root, out)
    return out


def test_every_figure_is_written_as_png_and_svg_at_its_size(run_root, drawn):
    expected = sorted(f"{n}.{e}" for n in expected_names() for e in ("png", "svg"))
    assert sorted(p.name for p in drawn.iterdir()) == expected
    built = jobs(run_root)
    assert sorted(built) == expected_names()
    for name, build in built.items():
        fig = build()
        width, height = fig.get_size_inches()
        image = mpimg.imread(drawn / f"{name}.png")
        assert image.shape[:2] == (round(height * F.DPI), round(width * F.DPI)), name
        assert width in (F.COLUMN, F.WIDE), name                      # one column or two
        assert image.std() > 0.05, name                               # not blank
        svg = (drawn / f"{name}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and "<dc:date>" not in svg


def lines(fig) -> list[Line2D]:
    return [line for ax in fig.axes for line in ax.get_lines()]


def horizontal_levels(fig) -> set[float]:
    levels = set()
    for line in lines(fig):
        y = np.asarray(line.get_ydata(), float)
        if len(y) == 2 and y[0] == y[1] and list(line.get_xdata()) == [0, 1]:
            levels.add(float(y[0]))
    return levels


def test_auroc_figures_draw_chance_at_one_half_and_plot_the_stage_values(run_root):
    built = jobs(run_root)
    probes = pd.read_csv(run_root / "plots" / "tiny-llama" / "probes.csv")
    for name in ("auroc_depth", "transfer_binary"):
        fig = built[name]()
        levels = horizontal_levels(fig)
        assert 0.5 in levels and 1 / 8 not in levels, name
        for ax in fig.axes:
            assert ax.get_ylim()[0] <= 0.5 <= ax.get_ylim()[1]
    fig = built["auroc_depth"]()
    set_b = probes[(probes["task"] == "set_b") & (probes["site"] == "h")].sort_values("depth")
    plotted = [l for l in fig.axes[0].get_lines() if len(l.get_xdata()) == len(set_b)]
    assert any(np.array_equal(l.get_ydata(), set_b["auroc"].to_numpy()) for l in plotted)
    assert 0.74 in horizontal_levels(fig)        # Set B text-only (bow) baseline
    binary = built["transfer_binary"]()
    assert {0.71, 0.88, 0.93} <= horizontal_levels(binary)                        # the b_vs_n text-only baselines


def test_house_style_fonts_and_palette(run_root):
    allowed = {c.lower() for c in F.OKABE_ITO.values()} | {F.GREY, "#000000"}
    for name, build in jobs(run_root).items():
        fig = build()
        small = [t.get_text() for t in fig.findobj(Text) if t.get_text().strip() and t.get_fontsize() < 8]
        assert not small, (name, small)
        colours = {to_hex(line.get_color()) for line in lines(fig)}
        assert colours <= allowed, (name, colours - allowed)


def test_same_inputs_same_bytes(run_root, tmp_path):
    build = jobs(run_root)["auroc_depth"]
    first = F.save(build(), tmp_path / "a" / "x")
    second = F.save(build(), tmp_path / "b" / "x")
    for p, q in zip(first, second):
        assert p.read_bytes() == q.read_bytes(), p.suffix
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.png", "x.svg"]     # no temporary left


def test_missing_optional_inputs_skip_their_figures_with_a_warning(run_root, tmp_path, caplog):
    root = copy_run(run_root, tmp_path)
    gone = [root / "metrics" / "tiny-gemma" / "geometry.json", root / "plots" / "cka.csv",
            root / "plots" / "tiny-llama" / "attention_sets.csv", root / "metrics" / "stimuli.json"]
    for path in gone:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        draw(root, tmp_path / "figures")
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in gone:
        assert f"{path}: not found" in warned
    drawn = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    assert drawn == sorted(["auroc_depth", "transfer_binary", "attention_text_share", "pca_tiny-llama",
                            "centroid_cosine_tiny-llama", "patching", "knockout", "heads", "positions",
                            "steering_dose", "steering_specificity", "steering_affect", "steering_ablation"])
    attention = jobs(root)["attention_text_share"]()
    assert [ax.get_title() for ax in attention.axes if ax.get_title()] == ["tiny-gemma"]


def test_intervention_figures_skip_models_without_outputs_and_vanish_without_any(run_root, tmp_path, caplog):
    root = copy_run(run_root, tmp_path)
    for name in ("patching_detail", "knockout_detail", "heads"):
        (root / "plots" / "tiny-llama" / f"{name}.csv").unlink()
    with caplog.at_level(logging.WARNING):
        built = jobs(root)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{root / 'plots' / 'tiny-llama' / 'heads.csv'}: not found" in warned
    for name in ("patching", "knockout", "heads"):
        fig = built[name]()
        assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["tiny-gemma"], name
        assert fig.get_size_inches()[0] == F.COLUMN, name
    heads = root / "plots" / "tiny-gemma" / "heads.csv"
    pd.read_csv(heads).drop(columns="survives").to_csv(heads, index=False)
    with pytest.raises(DataError, match=r"tiny-gemma/heads\.csv: missing column survives \(has layer,"):
        jobs(root)
    for name in ("patching_detail", "knockout_detail", "heads"):
        (root / "plots" / "tiny-gemma" / f"{name}.csv").unlink()
    assert {"patching", "knockout", "heads"}.isdisjoint(jobs(root))


def drawn_as(line, values) -> bool:
    y = np.asarray(line.get_ydata(), float)
    return y.shape == (len(values),) and np.allclose(y, values)


def test_intervention_figures_draw_the_stage_values(run_root):
    built = jobs(run_root)
    plots = run_root / "plots" / "tiny-llama"
    detail = pd.read_csv(plots / "patching_detail.csv")
    fig = built["patching"]()
    ax = fig.axes[0]
    assert ax.get_title() == "tiny-llama"
    for site, column in (("h", "recovery"), ("m", "control_recovery")):
        rows = detail[detail["site"] == site].sort_values("depth")
        assert any(drawn_as(line, rows[column]) for line in ax.get_lines()), (site, column)
    assert {0.0, 0.5} <= set(horizontal_levels(fig))                       # baseline 0 and the 0.5 threshold
    knockout = pd.read_csv(plots / "knockout_detail.csv")
    ax = built["knockout"]().axes[0]
    for op, column in (("zero", "kl"), ("mean", "kl"), ("zero", "control_kl")):
        rows = knockout[(knockout["site"] == "a") & (knockout["ablation"] == op)].sort_values("depth")
        assert any(drawn_as(line, rows[column]) for line in ax.get_lines()), (op, column)
    # critical-layer dots: the cells the stage's knockout.json lists (BH against matched controls)
    found = json.loads((run_root / "metrics" / "tiny-llama" / "knockout.json").read_text())["a"]
    dots = [line for line in ax.get_lines() if line.get_marker() == "o" and line.get_linestyle() == "None"
            and to_hex(line.get_color()) == to_hex(F.SITE_COLORS["a"])]
    for line, op in zip(dots, ("zero", "mean")):
        rows = knockout[(knockout["site"] == "a") & (knockout["ablation"] == op)].set_index("layer")
        expected = [int(layer) for layer in found[op]["critical_kl"].split(",") if layer]
        assert np.allclose(line.get_xdata(), rows.loc[expected, "depth"])
    heads = pd.read_csv(plots / "heads.csv")
    ax = built["heads"]().axes[0]
    matrix = ax.get_images()[0].get_array()
    assert matrix.shape == (MODELS["tiny-llama"], heads["head"].max() + 1)
    assert np.allclose(matrix, heads.pivot(index="layer", columns="head", values="rank_drop").to_numpy())
    sure = heads[heads["survives"].fillna(False).astype(bool)]
    dots = next(line for line in ax.get_lines() if line.get_marker() == "o")
    assert len(sure) and sorted(zip(dots.get_ydata(), dots.get_xdata())) == sorted(zip(sure["layer"], sure["head"]))


def test_cka_matched_draws_the_pair_and_its_random_init_reference(run_root):
    cka = pd.read_csv(run_root / "plots" / "cka.csv")
    rows = cka[cka["reference_debiased"].notna()]
    fig = jobs(run_root)["cka_matched"]()
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == len(rows.groupby(["model_a", "model_b", "set"]))
    for ax in panels:
        pair, _, name = ax.get_title().rpartition(", Set ")
        a, b = pair.split(" vs ")
        frame = rows[(rows["model_a"] == a) & (rows["model_b"] == b) & (rows["set"] == name)].sort_values("depth_a")
        solid, dashed = (l for l in ax.get_lines() if l.get_linestyle() in ("-", "--"))
        assert drawn_as(solid, frame["cka_debiased"]) and drawn_as(dashed, frame["reference_debiased"])


def test_positions_heatmap_draws_the_stage_values_and_marks_cells_above_zero(run_root):
    frame = pd.read_csv(run_root / "plots" / "tiny-llama" / "positions.csv")
    fig = jobs(run_root)["positions"]()
    ax = next(a for a in fig.axes if a.get_title() == "tiny-llama")
    matrix = frame.pivot(index="layer", columns="bin", values="recovery").sort_index().sort_index(axis=1)
    assert np.allclose(ax.get_images()[0].get_array(), matrix.to_numpy())
    dots = next(line for line in ax.get_lines() if line.get_marker() == "o")
    sure = frame[frame["recovery_low"] > 0]
    rows, cols = list(matrix.index), list(matrix.columns)
    assert sorted(zip(dots.get_ydata(), dots.get_xdata())) == sorted(
        (rows.index(l), cols.index(b)) for l, b in zip(sure["layer"], sure["bin"]))
    assert (1, cols.index(frame["bin"].max() // 2)) in set(zip(dots.get_ydata(), dots.get_xdata()))  # planted


def test_steering_figures_draw_the_stage_values(run_root):
    """Dose-response: one line per steered layer equal to the CSV's share at each dose; specificity: the image is
    the CSV's matrix with the random row last."""
    frame = pd.read_csv(run_root / "plots" / "tiny-llama" / "steering.csv")
    built = jobs(run_root)
    ax = next(a for a in built["steering_dose"]().axes if a.get_title() == "tiny-llama")
    for layer, rows in frame.groupby("layer"):
        line = next(l for l in ax.get_lines() if l.get_label() == f"h{layer}")
        assert drawn_as(line, rows.sort_values("dose")["share"]), layer
    top = frame[frame["layer"] == frame["layer"].max()]
    assert top["share"].max() > 0.9 and frame[frame["layer"] == frame["layer"].min()]["share"].max() < 0.3  # planted
    spec = pd.read_csv(run_root / "plots" / "tiny-llama" / "steering_specificity.csv")
    ax = next(a for a in built["steering_specificity"]().axes if a.get_title() == "tiny-llama")
    assert np.allclose(ax.get_images()[0].get_array(), spec.drop(columns="direction").to_numpy())
    assert list(spec["direction"]) == list(F.EMOTIONS) + ["random"]
    plane = pd.read_csv(run_root / "plots" / "tiny-llama" / "steering_affect.csv")
    ax = next(a for a in built["steering_affect"]().axes if a.get_title() == "tiny-llama")
    assert np.allclose(ax.collections[0].get_offsets(), plane[["pc1", "pc2"]].to_numpy())
    assert [t.get_text() for t in ax.texts] == list(plane["emotion"])


def test_missing_or_damaged_required_input_is_a_one_line_error(run_root, tmp_path):
    root = copy_run(run_root, tmp_path)
    path = root / "plots" / "tiny-gemma" / "probes.csv"
    frame = pd.read_csv(path)
    frame.drop(columns="high").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"tiny-gemma/probes\.csv: missing column high \(has task,"):
        draw(root, tmp_path / "figures")
    path.unlink()
    cmd = [sys.executable, str(ROOT / "stages" / "figures.py"), "--params", str(root / "params.yaml"),
           "--metrics", str(root / "metrics"), "--plots", str(root / "plots"), "--figures", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {path}: not found (run its stage: `dvc repro`, or `dvc pull`)"]
    assert not (tmp_path / "out").exists()
