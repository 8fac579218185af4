"""The `dvc plots show` page in a real browser, offline: a fixture DVC project (four CSV plots in per-model folders
and one wide PNG) rendered with the project's template (docs/plots/template.html) must show every plot with no
script error and no network request, in the order models -> probes, causal -> across models -> figures, images
scaled to the column. The same check on DVC's default page (vega from a CDN) must find nothing rendered: it is what
users without internet got before. Screenshots are written under the test's temp folder (`pytest -s` prints them).
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import browser
from s3server import BIN, ROOT, isolated_env

pytestmark = pytest.mark.slow  # ~10 s: 3 dvc calls and two Chromium page loads

TEMPLATE = ROOT / "docs" / "plots" / "template.html"
LAYERS = "layer,h,a,m,chance\n" + "".join(f"{i},{0.5 + 0.1 * i},{0.5 + 0.05 * i},{0.55},0.5\n" for i in range(4))
PATCHING = "layer,h,baseline\n" + "".join(f"{i},{0.1 * i},0.1\n" for i in range(4))
CKA = "layer,cka\n" + "".join(f"{i},{0.2 * i}\n" for i in range(4))
# Declared out of order on purpose: the page, not dvc.yaml, puts probes before causal and models before the rest.
# The titled plot has no path in its spec, so the page groups it by its div id.
DVC_YAML = """\
plots:
  - plots/tiny-b/probes/layers.csv:
      x: layer
      y: [h, a, m, chance]
  - plots/cka.csv:
      x: layer
      y: cka
  - plots/tiny-a/patching.csv:
      title: Patching flip rate
      x: layer
      y: [h, baseline]
  - plots/tiny-a/probes/layers.csv:
      x: layer
      y: [h, a, m, chance]
  - figures/wide.png
"""
N_VEGA = 4
EXPECTED_ORDER = ["plots_tiny-b_probes_layers_csv", "plots_tiny-a_probes_layers_csv", "plots_tiny-a_patching_csv",
                  "plots_cka_csv"]
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
    for rel, text in {"plots/tiny-a/probes/layers.csv": LAYERS, "plots/tiny-b/probes/layers.csv": LAYERS,
                      "plots/tiny-a/patching.csv": PATCHING, "plots/cka.csv": CKA, "dvc.yaml": DVC_YAML}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / "figures").mkdir()
    (repo / "figures" / "wide.png").write_bytes(png(3000, 300))  # wider than any screen's column
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
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


@pytest.fixture(scope="module")
def offline_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots-page")
    index = fixture_project(root, template=True)
    report = browser.open_page(index, root / "page.png", N_VEGA, evaluate=(ORDER_JS, HEADINGS_JS, IMAGE_JS))
    print(f"\n[plots] project template: {report.views} views of {N_VEGA}, errors {report.errors}, "
          f"requests {report.requests}; screenshot {root / 'page.png'}")
    return index, report, root / "page.png"


def test_every_plot_renders_offline(offline_page):
    index, report, shot = offline_page
    assert (report.views, report.errors, report.requests) == (N_VEGA, [], [])
    assert shot.stat().st_size > 10_000
    html = index.read_text()
    assert "cdn.jsdelivr.net" not in html and 'src="http' not in html


def test_page_groups_by_model_then_kind_and_images_fit(offline_page):
    _, report, _ = offline_page
    assert report.values[ORDER_JS] == EXPECTED_ORDER
    assert report.values[HEADINGS_JS] == ["tiny-b", "Probes", "tiny-a", "Probes", "Causal: patching, knockout, heads",
                                          "Across models", "Other", "Figures"]
    natural, shown, viewport, page_width = report.values[IMAGE_JS]
    assert natural == 3000 and shown <= viewport and page_width <= viewport  # scaled down, no horizontal scroll


def test_default_cdn_page_renders_nothing_offline(tmp_path):
    """The check itself can fail: DVC's own page loads vega from jsdelivr, which the disabled network blocks."""
    index = fixture_project(tmp_path, template=False)
    report = browser.open_page(index, tmp_path / "page.png", N_VEGA)
    print(f"\n[plots] DVC default template: {report.views} views of {N_VEGA}, errors {report.errors[:2]} ..., "
          f"requests {report.requests}")
    assert report.views == 0
    assert any("vegaEmbed is not defined" in e for e in report.errors)
    assert any("cdn.jsdelivr.net" in url for url in report.requests)
