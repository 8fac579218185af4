"""Faults: an extraction killed part-way leaves nothing behind and the rerun completes; reruns are deterministic."""
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


def extract_cmd(tmp_path, n_items):
    """A params copy whose Set B holds the first n_items vignettes; the command extracts it with SmolLM2."""
    params = yaml.safe_load(open("params.yaml"))
    lines = open("stimuli/set_B.jsonl").read().splitlines()[:n_items]
    stim = tmp_path / "set_B.jsonl"
    stim.write_text("\n".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "pair"}) for l in lines) + "\n")
    params["stimuli"]["B"] = str(stim)
    params["extract"]["batch_size"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "act" / "B.npz"
    cmd = [sys.executable, "stages/extract.py", "--params", str(tmp_path / "params.yaml"), "--model",
           "smollm2-135m-instruct", "--prompt", "zero-shot", "--set", "B", "--out", str(out)]
    return cmd, out


@pytest.mark.slow
def test_killed_extraction_leaves_no_partial_file_and_rerun_completes(tmp_path):
    cmd, out = extract_cmd(tmp_path, 12)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=stage_env())
    seen = ""
    deadline = time.time() + 120
    while "extract smollm2" not in seen and time.time() < deadline:  # the progress bar: batches are running
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no .npz, no temporary file
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=stage_env())
    arrays = load_npz(out, required=("h", "a", "m", "ids"))
    assert arrays["h"].shape[0] == 12 and sorted(p.name for p in out.parent.iterdir()) == ["B.npz"]


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
