"""The committed plots page template, offline checks: the inlined vega builds are exactly the pinned ones (and a
changed byte is caught), DVC's placeholders are where DVC expects them, nothing is loaded from the network, and
.dvc/config points `dvc plots` at it. The browser test is tests/test_plots_page.py."""
from __future__ import annotations

import importlib.util
import re
import sys

from dvc_render.html import HTML

from s3server import ROOT

spec = importlib.util.spec_from_file_location("vendor_vega", ROOT / "tools" / "vendor_vega.py")
vendor_vega = sys.modules.setdefault("vendor_vega", importlib.util.module_from_spec(spec))
spec.loader.exec_module(vendor_vega)

TEMPLATE = vendor_vega.TEMPLATE
HTML_TEXT = TEMPLATE.read_text(encoding="utf8")


def test_inlined_scripts_are_the_pinned_builds():
    assert vendor_vega.check(HTML_TEXT) == []
    assert sorted(vendor_vega.blocks(HTML_TEXT)) == sorted(p.key for p in vendor_vega.PINS)


def test_check_catches_a_changed_or_missing_build():
    key = vendor_vega.PINS[0].key
    body = vendor_vega.blocks(HTML_TEXT)[key]
    tampered = vendor_vega.inline(HTML_TEXT, {key: body.replace("vega", "vegb", 1)})
    assert vendor_vega.check(tampered) == [f"{key}: sha256 differs from the pin"]
    dropped = HTML_TEXT.replace(f'data-vendor="{key}"', 'data-vendor="vega@0.0.0/x.js"')
    assert vendor_vega.check(dropped) == ["unpinned block vega@0.0.0/x.js", f"missing block {key}"]


def test_dvc_placeholders_and_no_network():
    outside = vendor_vega.BLOCK.sub("", HTML_TEXT)  # the hand-written part of the page
    assert outside.count("{plot_divs}") == 1
    assert "{scripts}" not in HTML_TEXT  # DVC would put its CDN <script> tags there
    for body in vendor_vega.blocks(HTML_TEXT).values():
        assert not any(p in body for p in vendor_vega.PLACEHOLDERS) and "</script" not in body
    assert re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", outside) == []
    page = HTML(HTML_TEXT).with_element('<div id="x"></div>').with_scripts('<script src="https://cdn/v"></script>')
    filled = page.embed()
    assert '<div id="x"></div>' in filled and "https://cdn/v" not in filled


def test_dvc_config_points_at_the_template():
    from dvc.repo import Repo
    with Repo(str(ROOT)) as repo:
        configured = repo.config["plots"]["html_template"]
        assert (ROOT / ".dvc" / configured).resolve() == TEMPLATE.resolve()
