"""The remote story on a toy DVC repo against a loopback moto S3: repro, push, clone, pull byte-identical, nothing
re-runs; a server that is down fails push/pull clearly and touches no local file; metrics diff across a param change;
and tools/s3_local.py start/status/stop. The toy repo has the real pipeline's shape: an `extract` stage writing a
DVC-cached .npz through emotion_circuits.io, and a `score` stage writing a git-tracked metrics JSON (cache: false).
Run with `pytest -s` to see the push/pull times.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml

from s3server import BIN, BUCKET, PROJECT_URL, ROOT, isolated_env, s3_local, s3_server  # noqa: F401 (s3_server is a fixture)

TIMEOUT = 120  # seconds, any one dvc/git call
pytestmark = pytest.mark.slow  # ~30 s in all: a moto server and ~60 dvc/git calls of ~0.5-1 s each

MAKE_DATA = """\
import numpy as np, yaml
from emotion_circuits.io import save_npz
p = yaml.safe_load(open("params.yaml"))["toy"]
h = np.random.default_rng(p["seed"]).normal(size=(p["n"], 3, 4)).astype(np.float32)
save_npz("data/acts.npz", h=h, ids=np.array([f"s{i}" for i in range(p["n"])]), meta=np.array('{"model": "toy"}'))
open("runs.log", "a").write("extract\\n")
"""
SCORE = """\
import yaml
from emotion_circuits.io import load_npz, write_json
p = yaml.safe_load(open("params.yaml"))["score"]
h = load_npz("data/acts.npz", required=("h",))["h"]
write_json("metrics/score.json", {"auroc": float((h > p["threshold"]).mean())})
open("runs.log", "a").write("score\\n")
"""
DVC_YAML = """\
stages:
  extract:
    cmd: python make_data.py
    deps: [make_data.py]
    params: [toy]
    outs: [data/acts.npz]
  score:
    cmd: python score.py
    deps: [score.py, data/acts.npz]
    params: [score]
    metrics:
      - metrics/score.json:
          cache: false
"""
PARAMS = "toy:\n  n: 6\n  seed: 0\nscore:\n  threshold: {threshold}\n"
TRACKED = ("data/acts.npz", "metrics/score.json")


def run(args, cwd, env, check=True) -> subprocess.CompletedProcess:
    """One dvc/git call, bounded in time; a failure shows its output."""
    exe = str(BIN / "dvc") if args[0] == "dvc" else args[0]
    proc = subprocess.run([exe, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def timed(args, cwd, env) -> float:
    start = time.perf_counter()
    run(args, cwd, env)
    return time.perf_counter() - start


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root except git internals and dvc's scratch folder (.dvc/tmp)."""
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts[:1] and ".dvc/tmp" not in str(p)}


def init_repo(root: Path, env: dict) -> Path:
    """git init + dvc init + the project's default remote (the url committed in .dvc/config)."""
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "remote", "add", "-d", "storage", PROJECT_URL], root, env)
    return root


def make_toy(root: Path, env: dict, threshold: float = 0.0) -> Path:
    """A fresh repo with the two stages, reproduced and committed."""
    init_repo(root, env)
    (root / "make_data.py").write_text(MAKE_DATA)
    (root / "score.py").write_text(SCORE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(PARAMS.format(threshold=threshold))
    (root / ".gitignore").write_text("runs.log\n")
    run(["dvc", "repro", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "toy pipeline"], root, env)
    return root


def clone(source: Path, dest: Path, env: dict, endpoint: str) -> Path:
    """A fresh `git clone` whose remote points (--local, as a user would) at `endpoint`."""
    run(["git", "clone", "-q", str(source), str(dest)], source.parent, env)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], dest, env)
    return dest


def runs(repo: Path) -> list[str]:
    log = repo / "runs.log"
    return log.read_text().split() if log.exists() else []


@pytest.fixture(scope="module")
def pushed(s3_server, tmp_path_factory):
    """Toy repo A, reproduced, committed and pushed to the module's server."""
    home = tmp_path_factory.mktemp("home")
    env = isolated_env(home)
    repo = make_toy(home / "A", env)
    assert runs(repo) == ["extract", "score"]
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server.endpoint], repo, env)
    seconds = timed(["dvc", "push"], repo, env)
    size = (repo / "data/acts.npz").stat().st_size
    print(f"\n[remote] dvc push of the toy repo (1 file, {size} bytes) to moto: {seconds:.2f} s")
    return SimpleNamespace(repo=repo, env=env, home=home, hashes={f: sha256(repo / f) for f in TRACKED})


def test_clone_pull_is_byte_identical_and_repro_runs_nothing(pushed, s3_server, tmp_path):
    repo = clone(pushed.repo, tmp_path / "B", pushed.env, s3_server.endpoint)
    assert not (repo / "data/acts.npz").exists()  # only the DVC-cached file is missing from git
    seconds = timed(["dvc", "pull"], repo, pushed.env)
    print(f"\n[remote] dvc pull into a fresh clone: {seconds:.2f} s")
    assert {f: sha256(repo / f) for f in TRACKED} == pushed.hashes
    mtime = (repo / "data/acts.npz").stat().st_mtime_ns

    status = run(["dvc", "status"], repo, pushed.env).stdout
    assert "Data and pipelines are up to date" in status, status
    out = run(["dvc", "repro"], repo, pushed.env).stdout
    assert "Stage 'extract' didn't change, skipping" in out and "Stage 'score' didn't change, skipping" in out, out
    assert runs(repo) == []  # neither stage ran in the clone
    assert (repo / "data/acts.npz").stat().st_mtime_ns == mtime
    assert {f: sha256(repo / f) for f in TRACKED} == pushed.hashes


def test_repro_pull_fetches_instead_of_rerunning(pushed, s3_server, tmp_path):
    repo = clone(pushed.repo, tmp_path / "C", pushed.env, s3_server.endpoint)
    out = run(["dvc", "repro", "--pull"], repo, pushed.env).stdout
    assert runs(repo) == [], out
    assert {f: sha256(repo / f) for f in TRACKED} == pushed.hashes


@pytest.mark.parametrize("metrics_cached", [False, True], ids=["metrics-in-git", "metrics-in-dvc-cache"])
def test_worker_run_cache_lets_another_clone_skip_stages(pushed, s3_server, tmp_path, metrics_cached):
    """Scaling out (docs/remote.md): a worker clone runs the changed stages and `dvc push --run-cache`; another
    clone at the same commit, whose dvc.lock predates the change, runs `dvc repro --pull`. The .npz stage comes
    from the shared run-cache. A stage whose output is `cache: false` (metrics committed to git) runs again there:
    dvc 3.67 pushes run-cache entries but not the objects of uncached outputs. With the metrics DVC-cached it
    does not. Either way the collector's files and dvc.lock equal the worker's."""
    source = clone(pushed.repo, tmp_path / "S", pushed.env, s3_server.endpoint)
    seed = 2 if metrics_cached else 1  # a seed no other test has pushed, so the worker must run it
    (source / "params.yaml").write_text(PARAMS.format(threshold=0.0).replace("seed: 0", f"seed: {seed}"))
    if metrics_cached:
        (source / "dvc.yaml").write_text(DVC_YAML.replace("cache: false", "cache: true"))
        (source / "metrics" / "score.json").unlink()
        run(["git", "rm", "-q", "--cached", "metrics/score.json"], source, pushed.env)
        (source / "metrics" / ".gitignore").write_text("/score.json\n")
        run(["git", "add", "metrics/.gitignore"], source, pushed.env)
    run(["git", "commit", "-q", "-am", "new seed, not reproduced here"], source, pushed.env)

    worker = clone(source, tmp_path / "W", pushed.env, s3_server.endpoint)
    run(["dvc", "repro", "--pull"], worker, pushed.env)
    assert runs(worker) == ["extract", "score"]
    run(["dvc", "push", "--run-cache"], worker, pushed.env)

    collector = clone(source, tmp_path / "G", pushed.env, s3_server.endpoint)
    out = run(["dvc", "repro", "--pull"], collector, pushed.env).stdout
    assert "Stage 'extract' is cached - skipping run, checking out outputs" in out, out
    assert runs(collector) == ([] if metrics_cached else ["score"]), out
    assert {f: sha256(collector / f) for f in TRACKED} == {f: sha256(worker / f) for f in TRACKED} != pushed.hashes
    assert (collector / "dvc.lock").read_text() == (worker / "dvc.lock").read_text()


def test_server_down_push_and_pull_fail_clearly_and_touch_nothing(pushed, tmp_path):
    """A port nothing listens on stands for a stopped server. AWS_MAX_ATTEMPTS=2 keeps the retries short
    (botocore's default makes a failed pull wait ~11 s here before it gives up)."""
    dead = f"http://127.0.0.1:{s3_local.free_port()}"
    env = {**pushed.env, "AWS_MAX_ATTEMPTS": "2"}

    repo = tmp_path / "A-copy"  # A with its cache, repointed; A itself stays as the other tests expect it
    shutil.copytree(pushed.repo, repo, symlinks=True)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", dead], repo, env)
    before = tree_digest(repo)
    push = run(["dvc", "push"], repo, env, check=False)
    assert push.returncode != 0
    assert f'Could not connect to the endpoint URL: "{dead}/{BUCKET}/' in push.stderr, push.stderr
    assert tree_digest(repo) == before

    repo = clone(pushed.repo, tmp_path / "D", env, dead)
    before = tree_digest(repo)
    pull = run(["dvc", "pull"], repo, env, check=False)
    assert pull.returncode != 0
    assert "failed to pull data from the cloud" in pull.stderr and dead in pull.stderr, pull.stderr
    assert tree_digest(repo) == before  # no partial data/acts.npz, nothing else changed
    assert not (repo / "data/acts.npz").exists()


def test_metrics_diff_shows_changed_value_after_param_change(tmp_path):
    env = isolated_env(tmp_path)
    repo = make_toy(tmp_path / "E", env, threshold=0.0)
    (repo / "params.yaml").write_text(PARAMS.format(threshold=0.5))
    run(["dvc", "repro", "-q"], repo, env)
    assert runs(repo) == ["extract", "score", "score"]  # a score param re-runs score only, never extract
    run(["git", "commit", "-q", "-am", "threshold 0.5"], repo, env)

    h = np.random.default_rng(0).normal(size=(6, 3, 4)).astype(np.float32)  # what make_data.py wrote
    old, new = float(f"{(h > 0.0).mean():.6g}"), float(f"{(h > 0.5).mean():.6g}")
    assert old != new
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo, env).stdout)
    assert diff["metrics/score.json"]["auroc"]["old"] == old
    assert diff["metrics/score.json"]["auroc"]["new"] == new
    params = json.loads(run(["dvc", "params", "diff", "HEAD~1", "HEAD", "--json"], repo, env).stdout)
    assert params["params.yaml"]["score.threshold"] == {"old": 0.0, "new": 0.5, "diff": 0.5}


def test_s3_local_tool_start_status_stop(s3_server, tmp_path):
    """The `make s3-local` / `make s3-stop` tool on a toy checkout: a busy port is a one-line error; start points
    the remote at the server with dummy keys in config.local, so `dvc push` needs no AWS variables; stop undoes it."""
    env = isolated_env(tmp_path)
    repo = init_repo(tmp_path / "F", env)
    (repo / "blob.bin").write_bytes(bytes(range(256)))
    run(["dvc", "add", "-q", "blob.bin"], repo, env)
    no_aws = {k: v for k, v in env.items() if k not in s3_local.DUMMY_ENV}
    local = repo / ".dvc" / "config.local"

    def tool(*args):
        return run([sys.executable, str(ROOT / "tools" / "s3_local.py"), *args, "--repo", str(repo)], repo, no_aws,
                   check=False)

    busy = tool("start", "--port", str(s3_server.port))
    assert busy.returncode == 1 and busy.stderr.strip().count("\n") == 0, busy.stderr
    assert f"port {s3_server.port} on 127.0.0.1 is busy" in busy.stderr
    assert not local.exists() and not (repo / ".moto" / "pid").exists()

    port = s3_local.free_port()
    try:
        started = tool("start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        pid = int((repo / ".moto" / "pid").read_text())
        status = tool("status")
        assert status.returncode == 0 and f"http://127.0.0.1:{port} (pid {pid})" in status.stdout
        assert f"endpointurl = http://127.0.0.1:{port}" in local.read_text()
        again = tool("start", "--port", str(port))
        assert again.returncode == 1 and f"already running on port {port}" in again.stderr

        run(["dvc", "push"], repo, no_aws)  # credentials come from config.local only
        client = s3_local._client(f"http://127.0.0.1:{port}")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        md5 = yaml.safe_load((repo / "blob.bin.dvc").read_text())["outs"][0]["md5"]
        prefix = urlparse(PROJECT_URL).path.strip("/")
        assert keys == [f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"]

        stopped = tool("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not s3_local._is_moto(pid)
        assert "endpointurl" not in local.read_text() and "testing" not in local.read_text()
        for args in (("status",), ("stop",)):
            down = tool(*args)
            assert down.returncode == 1 and "not running" in down.stderr and down.stderr.count("\n") == 1
    finally:
        pid_file = repo / ".moto" / "pid"
        if pid_file.exists() and s3_local._is_moto(int(pid_file.read_text())):
            s3_local.terminate(int(pid_file.read_text()))
