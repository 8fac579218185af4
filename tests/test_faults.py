"""Faults: an extraction killed while writing leaves the previous files intact and the rerun completes; reruns are
deterministic."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from emotion_circuits.io import load_npz


def stage_env():
    return {**os.environ, "EMOTION_CIRCUITS_DEBUG": ""}


def extract_cmd(tmp_path, n_items, sets=("B",)):
    """A params copy whose sets hold the first n_items vignettes of Set B; the command extracts them with SmolLM2
    (one set: to --out; several: to --out-dir)."""
    params = yaml.safe_load(open("params.yaml"))
    lines = open("stimuli/sets/set_B.jsonl").read().splitlines()[:n_items]
    for name in sets:
        stim = tmp_path / f"set_{name}.jsonl"
        rows = [{k: v for k, v in json.loads(l).items() if k != "pair"} for l in lines]
        stim.write_text("\n".join(json.dumps({**r, "set": name}) for r in rows) + "\n")
        params["stimuli"][name] = str(stim)
    params["extract"]["batch_size"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out_dir = tmp_path / "act"
    cmd = [sys.executable, "stages/extract.py", "--params", str(tmp_path / "params.yaml"), "--model",
           "smollm2-135m-instruct", "--prompt", "zero-shot", "--sets", *sets]
    if len(sets) == 1:
        return cmd + ["--out", str(out_dir / f"{sets[0]}.npz")], out_dir / f"{sets[0]}.npz"
    return cmd + ["--out-dir", str(out_dir)], out_dir


# Runs a stage script with os.replace of an .npz held: the temporary file is complete, the rename has not happened;
# the script writes the temporary file's name to $HOLD_FLAG and waits to be killed.
HOLD_BEFORE_RENAME = """import os, runpy, sys, time
real = os.replace
def hold(src, dst):
    if not str(dst).endswith(".npz"):
        return real(src, dst)
    open(os.environ["HOLD_FLAG"], "w").write(str(src))
    time.sleep(600)
os.replace = hold
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_killed_while_writing_leaves_the_previous_files_and_rerun_completes(tmp_path):
    """Killed after the new .npz is complete under its temporary name: a writer that wrote in place would have
    replaced A.npz by then; the atomic one leaves both previous files byte for byte, and the rerun removes the
    stale temporary file."""
    cmd, out_dir = extract_cmd(tmp_path, 4, sets=("A", "B"))
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=stage_env())
    before = {name: (out_dir / f"{name}.npz").read_bytes() for name in ("A", "B")}
    cmd, _ = extract_cmd(tmp_path, 6, sets=("A", "B"))  # new content: 6 stimuli per set
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_BEFORE_RENAME, *cmd[1:]], stderr=subprocess.DEVNULL,
                            env={**stage_env(), "HOLD_FLAG": str(flag)})
    deadline = time.time() + 300
    while not flag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert flag.exists(), "the writer never reached the rename"
    time.sleep(0.2)
    tmp = out_dir / os.path.basename(flag.read_text())
    assert tmp.exists() and tmp.name.startswith(".A.npz.")
    assert load_npz(tmp)["h"].shape[0] == 6  # the new file is complete, only not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert {name: (out_dir / f"{name}.npz").read_bytes() for name in ("A", "B")} == before
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=stage_env())
    assert sorted(p.name for p in out_dir.iterdir()) == ["A.npz", "B.npz"]  # no temporary file left
    for name in ("A", "B"):
        arrays = load_npz(out_dir / f"{name}.npz", required=("h", "a", "m", "ids"))
        assert arrays["h"].shape[0] == 6 and json.loads(str(arrays["meta"]))["set"] == name


@pytest.mark.slow
def test_extraction_rerun_is_identical_and_thread_count_differs_only_in_rounding(tmp_path):
    """Same params and threads: identical arrays. Another CPU thread count may change the order of float additions
    inside matrix products, so values may differ in the last bits (bounded here), never more."""
    cmd, out = extract_cmd(tmp_path, 6)
    runs = []
    for threads in ("2", "2", "1"):
        env = {**stage_env(), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=env)
        runs.append(load_npz(out))
    for key in ("h", "a", "m", "attention"):
        assert np.array_equal(runs[0][key], runs[1][key]), key
        scale = np.abs(runs[0][key]).max()
        assert np.abs(runs[0][key] - runs[2][key]).max() <= 1e-4 * scale, key
