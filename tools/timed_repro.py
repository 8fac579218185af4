"""Run `dvc repro` and print each stage's wall time and the total, from DVC's own output.

    python tools/timed_repro.py            # `dvc repro -f`: every stage, fully cold (after install; `make cold-repro`)
    python tools/timed_repro.py --no-force # `dvc repro`: only what changed (a no-op run times DVC's own checks)
    python tools/timed_repro.py --log repro.log   # also keep DVC's output in a file

DVC prints "Running stage 'name':" when a stage starts and "Stage 'name' didn't change, skipping" for a skipped one;
a stage's time runs from its line to the next stage's line (or DVC's exit), so it includes DVC's lock update.
The table goes to stdout and, with --table, to a file; the exit code is DVC's.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


def stage_times(events: list[tuple[float, str]], end: float) -> list[tuple[str, float | None]]:
    """`events`: (time, line) of DVC's output in order; `end`: when DVC exited. -> [(stage, seconds or None if
    skipped)] in the order DVC reached them."""
    marks = []
    for t, line in events:
        if m := RUNNING.search(line):
            marks.append((t, m.group(1), True))
        elif m := SKIPPED.search(line):
            marks.append((t, m.group(1), False))
    out = []
    for i, (t, name, ran) in enumerate(marks):
        following = marks[i + 1][0] if i + 1 < len(marks) else end
        out.append((name, following - t if ran else None))
    return out


def table(times: list[tuple[str, float | None]], total: float) -> str:
    width = max([len(n) for n, _ in times] + [len("total")])
    rows = [f"{'stage':<{width}}  seconds"]
    rows += [f"{name:<{width}}  {'skipped' if s is None else f'{s:7.1f}'}" for name, s in times]
    rows.append(f"{'total':<{width}}  {total:7.1f}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-force", action="store_true", help="plain `dvc repro` (default: `dvc repro -f`)")
    parser.add_argument("--log", type=Path, help="also write DVC's output here")
    parser.add_argument("--table", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    cmd = ["dvc", "repro"] + ([] if args.no_force else ["-f"])
    start = time.monotonic()
    events = []
    log = args.log.open("w") if args.log else None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            events.append((time.monotonic(), line))
            if RUNNING.search(line) or SKIPPED.search(line) or "ERROR" in line:
                print(line.rstrip(), file=sys.stderr, flush=True)
            if log:
                log.write(line)
    end = time.monotonic()
    if log:
        log.close()
    out = table(stage_times(events, end), end - start)
    print(out)
    if args.table:
        args.table.write_text(out + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
