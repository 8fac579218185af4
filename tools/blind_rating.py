"""Blind readings of Sets B and N (issue 23): sheets for readers, and their answers collected into
stimuli/ratings.jsonl.

    python tools/blind_rating.py make OUT_DIR --raters 6 --seed 1     # OUT_DIR/sheet-K.jsonl and OUT_DIR/key.json
    python tools/blind_rating.py collect OUT_DIR --rater-name "model X, run R"   # -> stimuli/ratings.jsonl

A sheet holds `{"key", "text"}` lines only: no id, label, set or twin. The readers are split in groups of three
and the items in as many halves; a reader never sees both items of a pair (a B vignette sits in one half, its N twin
in the other), so every item gets three readings and no reading can contrast a vignette with its twin. Answers are
`{"key", "answer"}` lines in OUT_DIR/answers-K.jsonl, answer one of the eight emotions or "none".
`--only ID_FILE` makes sheets of the listed ids alone (revised items, read again by new readers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from emotion_circuits.io import write_text  # noqa: E402
from emotion_circuits.ratings import ANSWERS  # noqa: E402
from emotion_circuits.stimuli import load_stimuli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GROUP = 3   # readings per item


def make(out: Path, raters: int, seed: int, only: set[str] | None, sets: Path) -> None:
    if raters % GROUP:
        raise SystemExit(f"--raters must be a multiple of {GROUP}")
    b = load_stimuli(sets / "set_B.jsonl", "B")
    n = {x.id: x for x in load_stimuli(sets / "set_N.jsonl", "N")}
    rng = np.random.default_rng(seed)
    halves = [[] for _ in range(raters // GROUP)]
    for k, item in enumerate(rng.permutation(len(b))):
        vignette = b[item]
        twin = n[vignette.pair]
        side = k % len(halves)
        halves[side].append(vignette)
        halves[(side + 1) % len(halves)].append(twin)   # with one half (3 readers) pairs are not kept apart
    out.mkdir(parents=True, exist_ok=True)
    key, used = {}, set()
    for r in range(raters):
        items = [x for x in halves[r // GROUP] if only is None or x.id in only]
        lines = []
        for x in rng.permutation(np.array(items, dtype=object)):
            code = f"t{rng.integers(10**5, 10**6)}"
            while code in used:
                code = f"t{rng.integers(10**5, 10**6)}"
            used.add(code)
            key[code] = x.id
            lines.append(json.dumps({"key": code, "text": x.text}, ensure_ascii=False))
        (out / f"sheet-{r + 1}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"sheet-{r + 1}: {len(lines)} texts")
    (out / "key.json").write_text(json.dumps(key), encoding="utf-8")


def collect(out: Path, rater_name: str, target: Path) -> None:
    key = json.loads((out / "key.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in target.read_text(encoding="utf-8").splitlines() if x.strip()] \
        if target.exists() else []
    for sheet in sorted(out.glob("sheet-*.jsonl")):
        k = sheet.stem.split("-")[1]
        answers = out / f"answers-{k}.jsonl"
        wanted = {json.loads(x)["key"] for x in sheet.read_text(encoding="utf-8").splitlines() if x.strip()}
        got = {}
        for number, line in enumerate(answers.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                if obj.get("answer") not in ANSWERS:
                    raise SystemExit(f"{answers}:{number}: answer {obj.get('answer')!r} not one of {ANSWERS}")
                got[obj["key"]] = obj["answer"]
        if set(got) != wanted:
            raise SystemExit(f"{answers}: {len(wanted - set(got))} keys unanswered, {len(set(got) - wanted)} unknown")
        rater = f"{rater_name}, reader {k}"
        rows = [r for r in rows if not (r["rater"] == rater and r["id"] in {key[c] for c in got})]
        rows += [{"id": key[c], "rater": rater, "answer": a} for c, a in got.items()]
    rows.sort(key=lambda r: (r["id"], r["rater"]))
    write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {target}: {len(rows)} readings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("make", "collect"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--raters", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", type=Path)
    parser.add_argument("--sets", type=Path, default=ROOT / "stimuli" / "sets", help="folder of set_B.jsonl and set_N.jsonl")
    parser.add_argument("--rater-name", default="reader")
    parser.add_argument("--target", type=Path, default=ROOT / "stimuli" / "ratings.jsonl")
    args = parser.parse_args()
    if args.action == "make":
        only = set(args.only.read_text().split()) if args.only else None
        make(args.out, args.raters, args.seed, only, args.sets)
    else:
        collect(args.out, args.rater_name, args.target)


if __name__ == "__main__":
    main()
