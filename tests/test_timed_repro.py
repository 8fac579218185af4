"""tools/timed_repro.py: stage times from DVC's output lines (known answer, skipped stages), and a real `dvc repro`
of a two-stage toy repository timed end to end (one stage sleeps, so its time is at least the sleep)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("timed_repro", ROOT / "tools" / "timed_repro.py")
timed_repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timed_repro)


def test_stage_times_known_answer():
    events = [(0.0, "Stage 'stimuli' didn't change, skipping\n"),
              (1.0, "Running stage 'extract@m-two-shot':\n"),
              (2.0, "> python stages/extract.py\n"),
              (11.5, "Running stage 'probes@m':\n"),
              (12.0, "Updating lock file 'dvc.lock'\n")]
    assert timed_repro.stage_times(events, end=20.0) == [("stimuli", None), ("extract@m-two-shot", 10.5),
                                                          ("probes@m", 8.5)]
    text = timed_repro.table(timed_repro.stage_times(events, 20.0), 20.0)
    assert text.splitlines()[1].split() == ["stimuli", "skipped"] and text.splitlines()[-1].split() == ["total", "20.0"]


def test_timed_repro_of_a_toy_pipeline(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  slow:\n    cmd: python -c \"import time; time.sleep(1.5); open('a.txt', 'w').write('a')\"\n"
        "    outs:\n      - a.txt:\n          cache: false\n"
        "  fast:\n    cmd: python -c \"open('b.txt', 'w').write(open('a.txt').read())\"\n"
        "    deps:\n      - a.txt\n    outs:\n      - b.txt:\n          cache: false\n")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "timed_repro.py"), "--table", "t.txt"], cwd=tmp_path,
                         env=env, check=True, capture_output=True, text=True).stdout
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert set(rows) == {"slow", "fast", "total"}
    assert float(rows["slow"]) >= 1.5 and float(rows["total"]) >= float(rows["slow"]) + float(rows["fast"]) - 0.01
    assert (tmp_path / "t.txt").read_text().strip() == out.strip()
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "timed_repro.py"), "--no-force"], cwd=tmp_path,
                           env=env, check=True, capture_output=True, text=True).stdout
    assert {line.split()[0]: line.split()[1] for line in again.splitlines()[1:-1]} == {"slow": "skipped",
                                                                                      "fast": "skipped"}
