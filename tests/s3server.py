"""A moto S3 server on a free loopback port for the remote tests, started and stopped by the fixture.

It reuses tools/s3_local.py (the same launch, readiness and bucket code `make s3-local` runs), and gives
every dvc/git call an environment with dummy AWS credentials that never reads ~/.aws.
Import the fixture into a test module: `from s3server import s3_server`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's dvc, moto_server and python


def _load_tool():
    spec = importlib.util.spec_from_file_location("s3_local", ROOT / "tools" / "s3_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


s3_local = _load_tool()
PROJECT_URL = s3_local.Checkout(ROOT).option("url", "repo")  # the committed remote url, s3://bucket/path
BUCKET = urlparse(PROJECT_URL).netloc


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for dvc/git subprocesses: venv first on PATH, dummy AWS keys, no ~/.aws, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_", "GIT_"))}
    env.update(s3_local.DUMMY_ENV)
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    })
    env.update(extra)
    return env


@dataclasses.dataclass(frozen=True)
class S3Server:
    port: int
    pid: int
    bucket: str
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://{s3_local.HOST}:{self.port}"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> S3Server:
    """moto_server on 127.0.0.1:<free port> with the project's bucket; stopped (by its pid) at module end."""
    logfile = tmp_path_factory.mktemp("moto") / "server.log"
    port = s3_local.free_port()
    proc = s3_local.launch(port, logfile)
    try:
        s3_local.wait_ready(proc, f"http://{s3_local.HOST}:{port}", logfile, timeout=30)
        s3_local.make_bucket(f"http://{s3_local.HOST}:{port}", BUCKET)
        yield S3Server(port=port, pid=proc.pid, bucket=BUCKET, log=logfile)
    finally:
        s3_local.terminate(proc.pid)
        proc.poll()  # let Popen see the exit psutil already reaped
