"""The extract stage's bad-input path: one line on stderr naming the culprit, and the existing .npz intact."""
import subprocess
import sys

import numpy as np
import pytest
import yaml


def run_stage(tmp_path, *args, stimuli_line=None):
    params = yaml.safe_load(open("params.yaml"))
    if stimuli_line is not None:
        path = tmp_path / "set_B.jsonl"
        path.write_text(stimuli_line)
        params["stimuli"]["B"] = str(path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "B.npz"
    np.savez(out, h=np.ones(3))
    before = out.read_bytes()
    proc = subprocess.run([sys.executable, "stages/extract.py", "--params", str(tmp_path / "params.yaml"),
                           "--out", str(out), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.glob("*.npz")) == ["B.npz"]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_unknown_model(tmp_path):
    line = run_stage(tmp_path, "--model", "gpt-7", "--prompt", "two-shot", "--set", "B")
    assert "unknown model 'gpt-7'" in line


@pytest.mark.parametrize("content, message", [
    ('{"id": "b-1", "set": "B", "emotion": "grief", "text": "x"}\n{"id": oops}\n', "set_B.jsonl:2: not valid JSON"),
    ("\n\n", "set_B.jsonl: no stimuli"),
])
def test_bad_stimulus_file(tmp_path, content, message):
    line = run_stage(tmp_path, "--model", "smollm2-135m-instruct", "--prompt", "two-shot", "--set", "B",
                     stimuli_line=content)
    assert message in line


def test_unknown_prompt_and_set(tmp_path):
    assert "unknown prompt 'five-shot'" in run_stage(tmp_path, "--model", "gemma3-270m", "--prompt", "five-shot",
                                                     "--set", "B")
    assert "unknown stimulus set 'Q'" in run_stage(tmp_path, "--model", "gemma3-270m", "--prompt", "two-shot",
                                                   "--set", "Q")


def test_out_with_several_sets_and_an_unknown_set_among_several(tmp_path):
    line = run_stage(tmp_path, "--model", "gemma3-270m", "--prompt", "two-shot", "--sets", "A", "B")
    assert "--out names one file but 2 sets" in line
    assert "unknown stimulus set 'Q'" in run_stage(tmp_path, "--model", "gemma3-270m", "--prompt", "two-shot",
                                                   "--sets", "A", "Q")
