"""A local S3 stand-in for trying `dvc push` / `dvc pull`: moto's server on 127.0.0.1, this checkout only.

    python tools/s3_local.py start [--port P]   # start moto, create the bucket, point remote 'storage' at it
    python tools/s3_local.py status             # exit 0 if running, 1 if not
    python tools/s3_local.py stop               # stop it and remove the local endpoint config

The server's pid, port and log live in `.moto/` (git-ignored). The remote's endpoint and dummy credentials go to
`.dvc/config.local` (git-ignored), so nothing is committed and `dvc push` works without AWS environment variables.
The functions below (free_port, launch, wait_ready, make_bucket, terminate) are also the tests' server fixture.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("s3_local")

REMOTE = "storage"
HOST = "127.0.0.1"
DEFAULT_PORT = 5055
DUMMY_KEY = "testing"  # moto accepts any key; these are moto's conventional dummy values, not secrets
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": DUMMY_KEY, "AWS_SECRET_ACCESS_KEY": DUMMY_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
ROOT = Path(__file__).resolve().parents[1]


class S3LocalError(RuntimeError):
    """A one-line message for the user (port busy, not running, server failed to start)."""


def _venv_tool(name: str) -> str:
    """The executable `name` beside this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise S3LocalError(f"`{name}` not found beside {sys.executable} or on PATH (run `make install`)")
    return found


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_busy(port: int) -> bool:
    """True if something already holds 127.0.0.1:port (same SO_REUSEADDR rule as the server's own bind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def launch(port: int, logfile: Path) -> subprocess.Popen:
    """Start `moto_server -H 127.0.0.1 -p port` in its own session (it outlives this command), output to logfile."""
    if port_busy(port):
        raise S3LocalError(f"port {port} on {HOST} is busy; pick another with --port")
    try:
        cmd = [_venv_tool("moto_server")]
    except S3LocalError:
        cmd = [sys.executable, "-m", "moto.server"]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        return subprocess.Popen(cmd + ["-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY,
                        region_name="us-east-1",
                        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))


def wait_ready(proc: subprocess.Popen, endpoint: str, logfile: Path, timeout: float = 30.0) -> None:
    """Poll until the server answers an S3 call; fail with the log's last line if it exits or never answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _client(endpoint)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = logfile.read_text(errors="replace").strip().splitlines() if logfile.exists() else []
            raise S3LocalError(f"moto server exited with code {proc.returncode}: "
                               f"{lines[-1] if lines else 'no output'} (log: {logfile})")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            time.sleep(0.2)
    terminate(proc.pid)
    raise S3LocalError(f"moto server on {endpoint} did not answer within {timeout:.0f} s (log: {logfile})")


def make_bucket(endpoint: str, bucket: str) -> None:
    """Create `bucket` unless it exists (moto keeps buckets in memory, so every start needs this)."""
    client = _client(endpoint)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def _is_moto(pid: int) -> bool:
    """True if pid is alive and is a moto server (guards against a recycled pid)."""
    import psutil

    try:
        return any("moto" in part for part in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the server we started (by pid), SIGKILL if it lingers; reap it if it is our child."""
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    except psutil.NoSuchProcess:
        pass


class Checkout:
    """One DVC checkout: its `.moto/` state files and its remote's local (git-ignored) config."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        if not (self.root / ".dvc").is_dir():
            raise S3LocalError(f"{self.root}: not a DVC checkout (no .dvc/ folder)")
        self.state = self.root / ".moto"
        self.logfile = self.state / "server.log"

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([_venv_tool("dvc"), *args], cwd=self.root, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        if check and proc.returncode != 0:
            msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise S3LocalError(f"dvc {' '.join(args)}: {msg[-1] if msg else f'exit {proc.returncode}'}")
        return proc

    def option(self, name: str, level: str | None = None) -> str | None:
        """remote.storage.<name> from the merged config, or from one level ('repo' = .dvc/config, 'local');
        read in-process (dvc's own config reader) because a `dvc config` call costs ~0.4 s."""
        from dvc.config import Config, ConfigError

        try:
            config = Config(dvc_dir=str(self.root / ".dvc"), validate=False)
            remotes = config["remote"] if level is None else config.load_one(level).get("remote", {})
        except ConfigError as err:
            raise S3LocalError(f"{self.root}/.dvc: unreadable DVC config ({err})") from None
        value = remotes.get(REMOTE, {}).get(name)
        return str(value) if value is not None else None

    def bucket(self) -> str:
        url = self.option("url")
        if not url:
            raise S3LocalError(f"{self.root}/.dvc/config: no remote '{REMOTE}' (dvc remote add -d {REMOTE} s3://...)")
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise S3LocalError(f"remote '{REMOTE}' url {url!r} is not s3://bucket/path")
        return parsed.netloc

    def running(self) -> tuple[int, int] | None:
        """(pid, port) of this checkout's server if it is alive, else None (stale state files are removed)."""
        try:
            pid = int((self.state / "pid").read_text())
            port = int((self.state / "port").read_text())
        except (OSError, ValueError):
            return None
        if _is_moto(pid):
            return pid, port
        self._forget()
        return None

    def _forget(self) -> None:
        for name in ("pid", "port"):
            (self.state / name).unlink(missing_ok=True)

    def point_remote(self, endpoint: str) -> None:
        self.dvc("remote", "modify", "--local", REMOTE, "endpointurl", endpoint)
        self.dvc("remote", "modify", "--local", REMOTE, "access_key_id", DUMMY_KEY)
        self.dvc("remote", "modify", "--local", REMOTE, "secret_access_key", DUMMY_KEY)

    def unpoint_remote(self, port: int | None) -> None:
        """Remove what `start` set, and only that: a user's own endpoint or keys are left alone."""
        endpoint = self.option("endpointurl", "local")
        if endpoint and urlparse(endpoint).hostname == HOST and (port is None or urlparse(endpoint).port == port):
            self.dvc("remote", "modify", "--local", "--unset", REMOTE, "endpointurl")
        for key in ("access_key_id", "secret_access_key"):
            if self.option(key, "local") == DUMMY_KEY:
                self.dvc("remote", "modify", "--local", "--unset", REMOTE, key)


def start(checkout: Checkout, port: int) -> str:
    if found := checkout.running():
        raise S3LocalError(f"already running on port {found[1]} (pid {found[0]}); run `stop` first")
    bucket = checkout.bucket()
    endpoint = f"http://{HOST}:{port}"
    proc = launch(port, checkout.logfile)
    log.info("started moto_server pid %d on %s, waiting for it to answer (log: %s)", proc.pid, endpoint,
             checkout.logfile)
    try:
        wait_ready(proc, endpoint, checkout.logfile)
        make_bucket(endpoint, bucket)
        checkout.point_remote(endpoint)
    except BaseException:
        terminate(proc.pid)
        raise
    checkout.state.mkdir(exist_ok=True)
    (checkout.state / "pid").write_text(f"{proc.pid}\n")
    (checkout.state / "port").write_text(f"{port}\n")
    return f"moto S3 on {endpoint} (pid {proc.pid}), bucket '{bucket}'; remote '{REMOTE}' points at it (--local)"


def stop(checkout: Checkout) -> str:
    found = checkout.running()
    if not found:
        checkout.unpoint_remote(None)
        raise S3LocalError(f"not running (no live server recorded in {checkout.state})")
    pid, port = found
    log.info("stopping moto_server pid %d", pid)
    terminate(pid)
    checkout._forget()
    checkout.unpoint_remote(port)
    return f"stopped moto S3 on port {port} (pid {pid}); remote '{REMOTE}' endpoint config removed"


def status(checkout: Checkout) -> str:
    found = checkout.running()
    if not found:
        raise S3LocalError("not running")
    pid, port = found
    return (f"running on http://{HOST}:{port} (pid {pid}), bucket '{checkout.bucket()}', "
            f"remote '{REMOTE}' endpointurl = {checkout.option('endpointurl')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"loopback port (default {DEFAULT_PORT})")
    parser.add_argument("--repo", type=Path, default=ROOT, help="DVC checkout to configure (default: this one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not 0 < args.port < 65536:
            raise S3LocalError(f"--port {args.port}: not a port number (1-65535)")
        checkout = Checkout(args.repo)
        print({"start": lambda: start(checkout, args.port), "stop": lambda: stop(checkout),
               "status": lambda: status(checkout)}[args.action]())
    except S3LocalError as err:
        print(f"s3_local {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
