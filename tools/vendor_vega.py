"""Inline vega, vega-lite and vega-embed (pinned npm builds) into the `dvc plots` page template, so the page that
`dvc plots show` writes needs no network (DVC's default page loads them from a CDN).

    python tools/vendor_vega.py           # npm pack the pinned versions, check their integrity, re-inline them
    python tools/vendor_vega.py --check   # offline: the template's inlined scripts are exactly the pinned files

The template keeps one `<script data-vendor="NAME@VERSION/FILE">` block per library; only the block bodies are
rewritten, so the hand-written parts of the page (layout, grouping) stay as they are. The libraries' licences are
in docs/plots/licenses/. Updating a version: change PINS (integrity from `npm view NAME@VERSION dist.integrity`),
run without --check, then put the printed sha256 into PINS.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from emotion_circuits.io import write_text

log = logging.getLogger("vendor_vega")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "docs" / "plots" / "template.html"
# DVC fills these by plain string replacement anywhere in the template, so an inlined script must not contain them.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


@dataclasses.dataclass(frozen=True)
class Pin:
    package: str
    version: str
    file: str       # inside the npm tarball's package/ folder
    integrity: str  # npm's sha512 of the tarball
    sha256: str     # of `file`, what --check verifies offline

    @property
    def key(self) -> str:
        return f"{self.package}@{self.version}/{self.file}"


# The vega 5 line (vega-embed 6 requires vega ^5); DVC 3.67's specs are vega-lite v5.
PINS = (
    Pin("vega", "5.33.1", "build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8"),
    Pin("vega-lite", "5.23.0", "build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f"),
    Pin("vega-embed", "6.29.0", "build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da"),
)

BLOCK = re.compile(r'(<script data-vendor="(?P<key>[^"]+)">)(?P<body>.*?)(</script>)', re.S)


def blocks(html: str) -> dict[str, str]:
    """The template's vendored script bodies by key (NAME@VERSION/FILE)."""
    return {m["key"]: m["body"] for m in BLOCK.finditer(html)}


def check(html: str) -> list[str]:
    """Problems with the template's vendored scripts; empty when each pin is inlined byte for byte."""
    found = blocks(html)
    problems = [f"unpinned block {key}" for key in found if key not in {p.key for p in PINS}]
    for pin in PINS:
        if pin.key not in found:
            problems.append(f"missing block {pin.key}")
        elif hashlib.sha256(found[pin.key].encode()).hexdigest() != pin.sha256:
            problems.append(f"{pin.key}: sha256 differs from the pin")
    return problems


def fetch(pin: Pin, workdir: Path) -> str:
    """`npm pack` one pinned package, check the tarball against its integrity, return the file's text."""
    out = subprocess.run(["npm", "pack", "--silent", f"{pin.package}@{pin.version}"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    tarball = workdir / out
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != pin.integrity:
        raise SystemExit(f"{pin.package}@{pin.version}: tarball integrity {digest} != pinned {pin.integrity}")
    with tarfile.open(tarball) as tar:
        text = tar.extractfile(f"package/{pin.file}").read().decode()
    bad = [s for s in (*PLACEHOLDERS, "</script") if s in text]
    if bad:
        raise SystemExit(f"{pin.key} contains {bad}, which would break the page when inlined")
    return text


def inline(html: str, bodies: dict[str, str]) -> str:
    return BLOCK.sub(lambda m: m[1] + bodies.get(m["key"], m["body"]) + m[4], html)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the inlined scripts against PINS, offline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    html = TEMPLATE.read_text(encoding="utf8")
    if not args.check:
        with tempfile.TemporaryDirectory() as tmp:
            bodies = {pin.key: fetch(pin, Path(tmp)) for pin in PINS}
        for key, body in bodies.items():
            log.info("%s: %d bytes, sha256 %s", key, len(body.encode()), hashlib.sha256(body.encode()).hexdigest())
        html = inline(html, bodies)
        write_text(TEMPLATE, html)
    problems = check(html)
    for problem in problems:
        log.error("%s: %s", TEMPLATE.relative_to(ROOT), problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
