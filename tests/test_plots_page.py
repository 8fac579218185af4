"""The `dvc plots show` page in a real browser, offline: a fixture DVC project (probe curves, patching, knockout, a
confusion matrix in per-model folders, one across-model CSV, one wide PNG) rendered with the project's page template
(docs/plots/template.html) and curve templates (.dvc/plots/*.json) must show every plot with no script error and no
network request; each model's headline plots first (8-class A, B, transfer, B vs N, patching, knockout), then the
detailed ones (folded sections), then across models, then figures; every title in words; every headline probe plot with its
permutation null band (an area between the null mean and 95th percentile) and chance as a rule at 0.5, one
Okabe-Ito colour per site; no band where the null cells are empty. The same check on DVC's default page (vega from
a CDN) must find nothing rendered: it is what users without internet got before. Screenshots are written under the
test's temp folder (`pytest -s` prints them).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import browser
from s3server import BIN, ROOT, isolated_env

pytestmark = pytest.mark.slow  # ~15 s: 3 dvc calls and two Chromium page loads

TEMPLATE = ROOT / "docs" / "plots" / "template.html"
CURVE_TEMPLATES = ROOT / ".dvc" / "plots"
SITES = ("h", "a", "m")
LAYER_COLUMNS = ["layer", *SITES, *[f"{s}_null_mean" for s in SITES], *[f"{s}_null_p95" for s in SITES], "chance"]


def layers_csv(nulls: bool) -> str:
    """A probe-curve file as probes.py writes it; without `nulls` the null cells are empty (a variant)."""
    rows = [[i, 0.6 + 0.1 * i, 0.55 + 0.05 * i, 0.58, *([0.49 + 0.01 * k for k in range(3)] if nulls else [""] * 3),
             *([0.56 + 0.01 * k for k in range(3)] if nulls else [""] * 3), 0.5] for i in range(4)]
    return "\n".join(",".join(map(str, r)) for r in [LAYER_COLUMNS, *rows]) + "\n"


PATCHING = "layer,h,a,m,h_control,a_control,m_control,baseline\n" + "".join(
    f"{i},{0.2 * i},{0.1 * i},0.05,0.02,0.01,0.0,0.0\n" for i in range(4))
KNOCKOUT = "layer,a_zero,a_zero_control,a_mean,a_mean_control,m_zero,m_zero_control,m_mean,m_mean_control\n" + "".join(
    f"{i},{0.1 * i},0.01,{0.01 * i},0.001,{0.05 * i},0.02,0.002,0.001\n" for i in range(4))
CONFUSION = "id,actual,predicted\n" + "".join(f"x{i},{'ab'[i % 2]},{'ab'[i % 3 % 2]}\n" for i in range(6))
POSITIONS = "layer,position,recovery,recovery_low,recovery_high\n" + "".join(
    f"{layer},{p},{0.1 * layer + p},{0.1 * layer + p - 0.1},{0.1 * layer + p + 0.1}\n" for layer in (1, 2) for p in (0.1, 0.5))
CKA = "layer,cka\n" + "".join(f"{i},{0.2 * i}\n" for i in range(4))
FILES = {
    **{f"plots/tiny-a/probes/layers/{task}.csv": layers_csv(True) for task in ("b_vs_n", "set_a", "set_b", "transfer")},
    "plots/tiny-a/probes/layers/zero_shot.set_a.csv": layers_csv(False),
    "plots/tiny-b/probes/layers/set_a.csv": layers_csv(True),
    "plots/tiny-a/patching.csv": PATCHING, "plots/tiny-a/knockout.csv": KNOCKOUT, "plots/tiny-a/positions.csv": POSITIONS,
    "plots/tiny-a/probes/confusion/set_a_h.csv": CONFUSION, "plots/cka.csv": CKA,
}
# Declared out of order on purpose: the page, not dvc.yaml, puts the headline plots first and models before the
# rest (a folder lists its files alphabetically: b_vs_n first). The titled plot has no path in its spec, so the
# page places it by its div id.
DVC_YAML = """\
plots:
  - plots/tiny-b/probes/layers/:
      template: probe_layers
      x: layer
      y: h
  - plots/cka.csv:
      x: layer
      y: cka
  - plots/tiny-a/probes/confusion/set_a_h.csv:
      template: confusion
      x: actual
      y: predicted
  - plots/tiny-a/positions.csv:
      template: by_layer
      x: position
      y: recovery
  - plots/tiny-a/knockout.csv:
      template: knockout
      x: layer
      y: a_zero
  - plots/tiny-a/patching.csv:
      template: patching
      title: "tiny-a: patching, recovery by layer (faint: control)"
      x: layer
      y: h
  - plots/tiny-a/probes/layers/:
      template: probe_layers
      x: layer
      y: h
  - figures/wide.png
"""
N_VEGA = 11
HEADLINE_PROBES = ["plots_tiny-b_probes_layers_set_a_csv", "plots_tiny-a_probes_layers_set_a_csv",
                   "plots_tiny-a_probes_layers_set_b_csv", "plots_tiny-a_probes_layers_transfer_csv",
                   "plots_tiny-a_probes_layers_b_vs_n_csv"]
EXPECTED_ORDER = [*HEADLINE_PROBES, "plots_tiny-a_patching_csv", "plots_tiny-a_knockout_csv",
                  "plots_tiny-a_probes_layers_zero_shot_set_a_csv", "plots_tiny-a_probes_confusion_set_a_h_csv",
                  "plots_tiny-a_positions_csv", "plots_cka_csv"]
BAND = "grey band: permutation null, mean to 95th percentile; dashed: chance"
TITLES = {
    "plots_tiny-a_probes_layers_set_b_csv": ["tiny-a: Set B, emotions (one-vs-rest AUROC), by layer", BAND],
    "plots_tiny-a_probes_layers_transfer_csv": [
        "tiny-a: Transfer A\u2192B (probe fit on Set A, scored on Set B), by layer", BAND],
    "plots_tiny-a_probes_layers_b_vs_n_csv": ["tiny-a: Set B vs Set N (emotional vs neutral twin), by layer", BAND],
    "plots_tiny-a_probes_layers_zero_shot_set_a_csv": [
        "tiny-a: Zero-shot prompt: Set A, AUROC by layer",
        "no permutation null for this variant; dashed: chance"],
    "plots_tiny-a_patching_csv": ["tiny-a: patching, recovery by layer", "faint: control"],
    "plots_tiny-a_probes_confusion_set_a_h_csv": [
        "tiny-a: Set A, site h (residual)", ""],
}
OKABE_ITO = {"#0072B2", "#D55E00", "#009E73"}  # figures.SITE_COLORS h, a, m
REQUIRE = os.environ.get("EMOTION_CIRCUITS_REQUIRE_BROWSER") == "1"  # set by .ci/run: CI must not skip


@pytest.fixture(scope="module", autouse=True)
def need_chromium():
    if browser.chromium() is None:
        message = f"no Chromium at {browser.CHROMIUM} or on PATH (Debian: apt-get install chromium)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)


def png(width: int, height: int) -> bytes:
    """A grey RGB PNG, written by hand (zlib + chunks) so the fixture needs no imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def run(args, cwd, env) -> subprocess.CompletedProcess:
    exe = str(BIN / "dvc") if args[0] == "dvc" else args[0]
    proc = subprocess.run([exe, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def fixture_project(root: Path, template: bool) -> Path:
    """git + dvc repo with the plots above; with `template`, the project's page template configured as in
    .dvc/config (a path relative to .dvc/). Returns the written index.html."""
    env = isolated_env(root / "home")
    repo = root / "repo"
    for rel, text in {**FILES, "dvc.yaml": DVC_YAML}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / "figures").mkdir()
    (repo / "figures" / "wide.png").write_bytes(png(3000, 300))  # wider than any screen's column
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    shutil.copytree(CURVE_TEMPLATES, repo / ".dvc" / "plots")  # part of the project, with either page
    if template:
        (repo / "docs" / "plots").mkdir(parents=True)
        shutil.copy(TEMPLATE, repo / "docs" / "plots" / "template.html")
        run(["dvc", "config", "plots.html_template", "../docs/plots/template.html"], repo, env)
    run(["dvc", "plots", "show", "-o", "dvc_plots"], repo, env)
    return repo / "dvc_plots" / "index.html"


ORDER_JS = "Array.from(document.querySelectorAll('.vega-embed')).map(e => e.id)"
HEADINGS_JS = "Array.from(document.querySelectorAll('main h2, main h3')).map(h => h.textContent)"
IMAGE_JS = ("(() => { const i = document.querySelector('img'); return [i.naturalWidth, "
            "i.getBoundingClientRect().width, document.documentElement.clientWidth, "
            "document.documentElement.scrollWidth]; })()")
DETAILS_JS = ("Array.from(document.querySelectorAll('details.more')).map(d => "
              "[d.querySelector('h3').textContent, d.open, d.querySelectorAll('.vega-embed').length])")
TITLES_JS = ("Object.fromEntries(Object.entries(window.plotSpecs).map(([id, s]) => "
             "[id, typeof s.title === 'string' ? [s.title, ''] : [s.title.text, s.title.subtitle || '']]))")
# What each rendered view drew, read from its scenegraph: per named mark (vega-lite's `<layer name>_marks`), the
# mark type, the number of items, the distinct stroke colours, the first item's datum, and for the chance rule its
# pixel y beside the y scale's pixel for 0.5.
MARKS_JS = """(() => {
  const out = {};
  for (const [id, view] of Object.entries(window.plotViews)) {
    const marks = {};
    (function walk(node) {
      if (!node) return;
      if (node.marktype && node.name && node.marktype !== "group") {
        const m = marks[node.name] = marks[node.name] || {type: node.marktype, n: 0, strokes: [], datum: null};
        for (const item of node.items || []) {
          m.n += 1;
          if (item.stroke && !m.strokes.includes(item.stroke)) m.strokes.push(item.stroke);
          if (!m.datum && item.datum) m.datum = Object.fromEntries(Object.entries(item.datum)
            .filter(([, v]) => ["number", "string"].includes(typeof v)));
          if (node.name === "chance_marks") m.y = [item.y, view.scale("y")(0.5)];
        }
      }
      (node.items || []).forEach(walk);
    })(view.scenegraph().root);
    out[id] = marks;
  }
  return JSON.stringify(out);
})()"""


@pytest.fixture(scope="module")
def offline_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots-page")
    index = fixture_project(root, template=True)
    report = browser.open_page(index, root / "page.png", N_VEGA,
                               evaluate=(ORDER_JS, HEADINGS_JS, IMAGE_JS, TITLES_JS, MARKS_JS, DETAILS_JS))
    print(f"\n[plots] project template: {report.views} views of {N_VEGA}, errors {report.errors}, "
          f"requests {report.requests}; screenshot {root / 'page.png'}")
    return index, report, root / "page.png"


def test_every_plot_renders_offline(offline_page):
    index, report, shot = offline_page
    assert (report.views, report.errors, report.requests) == (N_VEGA, [], [])
    assert shot.stat().st_size > 10_000
    html = index.read_text()
    assert "cdn.jsdelivr.net" not in html and 'src="http' not in html


def test_headline_plots_first_per_model_then_details_and_images_fit(offline_page):
    _, report, _ = offline_page
    assert report.values[ORDER_JS] == EXPECTED_ORDER
    assert report.values[HEADINGS_JS] == ["tiny-b", "Headline", "tiny-a", "Headline",
                                          "Probes: zero-shot prompt and random-init control",
                                          "Probes: confusion matrices at the peak layer", "Causal: positions and heads",
                                          "Across models", "Figures"]
    assert report.values[DETAILS_JS] == [  # the detailed sections folded, the headline ones open
        ["Probes: zero-shot prompt and random-init control", False, 1],
        ["Probes: confusion matrices at the peak layer", False, 1], ["Causal: positions and heads", False, 1]]
    natural, shown, viewport, page_width = report.values[IMAGE_JS]
    assert natural == 3000 and shown <= viewport and page_width <= viewport  # scaled down, no horizontal scroll


def test_titles_in_words(offline_page):
    _, report, _ = offline_page
    titles = report.values[TITLES_JS]
    assert set(titles) == set(EXPECTED_ORDER)
    for plot, expected in TITLES.items():
        assert titles[plot] == expected, plot
    for plot, (text, subtitle) in titles.items():  # no path left, every model plot names its model
        assert ".csv" not in text + subtitle and "plots/" not in text + subtitle, plot
        assert plot == "plots_cka_csv" or text.startswith(plot.split("_")[1] + ": "), plot


def test_headline_probe_plots_draw_null_band_chance_and_site_colours(offline_page):
    _, report, _ = offline_page
    marks = json.loads(report.values[MARKS_JS])
    for plot in HEADLINE_PROBES:
        band, chance, curves = marks[plot]["null_band_marks"], marks[plot]["chance_marks"], marks[plot]["curves_marks"]
        assert band["type"] == "area" and band["n"] == 3 * 4, plot  # 3 sites x 4 layers
        assert band["datum"]["null_mean"] < band["datum"]["null_p95"], plot
        assert chance["type"] == "rule" and chance["n"] == 1 and chance["y"][0] == pytest.approx(chance["y"][1])
        assert curves["type"] == "line" and set(curves["strokes"]) == OKABE_ITO and curves["n"] == 3 * 4, plot
    variant = marks["plots_tiny-a_probes_layers_zero_shot_set_a_csv"]  # empty null cells: no band, still chance
    assert variant.get("null_band_marks", {"n": 0})["n"] == 0 and variant["chance_marks"]["n"] == 1
    positions = marks["plots_tiny-a_positions_csv"]  # by_layer: a line and an interval band per patched layer
    assert positions["interval_marks"]["n"] == 4 and positions["lines_marks"]["n"] == 4
    assert positions["interval_marks"]["datum"]["low"] < positions["interval_marks"]["datum"]["high"]
    for plot in ("plots_tiny-a_patching_csv", "plots_tiny-a_knockout_csv"):  # a colour per site there too
        strokes = {s for mark in marks[plot].values() for s in mark["strokes"]}
        assert OKABE_ITO - {"#0072B2"} <= strokes and strokes <= OKABE_ITO | {"#7f7f7f"}, plot


def test_default_cdn_page_renders_nothing_offline(tmp_path):
    """The check itself can fail: DVC's own page loads vega from jsdelivr, which the disabled network blocks."""
    index = fixture_project(tmp_path, template=False)
    report = browser.open_page(index, tmp_path / "page.png", N_VEGA)
    print(f"\n[plots] DVC default template: {report.views} views of {N_VEGA}, errors {report.errors[:2]} ..., "
          f"requests {report.requests}")
    assert report.views == 0
    assert any("vegaEmbed is not defined" in e for e in report.errors)
    assert any("cdn.jsdelivr.net" in url for url in report.requests)
