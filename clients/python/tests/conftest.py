"""The server the tests run against: `kalshi-replay demo` on a small generated dataset, one per test session.

The binary is $KALSHI_REPLAY_BIN, else the debug build of this repository (built by `cargo build`, as the test
command does first). With DATABASE_URL set, the server uses a fresh database created there and dropped at the
end; otherwise it starts a private PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP_SECONDS = 180


def cargo_target_dir() -> Path:
    """Where cargo puts its builds: $CARGO_TARGET_DIR (relative to the repository) or <repo>/target."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    return REPO / configured if configured else REPO / "target"


@dataclass(frozen=True)
class Dataset:
    """The shape of the generated data (the demo's generator flags), for requests that must hit it."""

    markets: int = 40
    days: int = 3
    trades: int = 30_000
    seed: int = 42
    start: str = "2026-01-05T00:00:00Z"
    end: str = "2026-01-08T00:00:00Z"
    series: tuple[str, ...] = ("KXSYNAA", "KXSYNAB")


@dataclass(frozen=True)
class ReplayServer:
    """A running server: its address (HOST:PORT, plaintext) and what it holds."""

    target: str
    dataset: Dataset


def _psql(url: str, statement: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", statement], check=True)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server() -> Iterator[ReplayServer]:
    binary = Path(os.environ.get("KALSHI_REPLAY_BIN") or cargo_target_dir() / "debug" / "kalshi-replay")
    if not binary.is_file():
        pytest.fail(f"{binary} does not exist: run `cargo build` first, or set KALSHI_REPLAY_BIN")
    dataset = Dataset()
    data_dir = tempfile.mkdtemp(prefix="kalshi-replay-pytest-")
    os.chmod(data_dir, 0o755)  # the private PostgreSQL runs as an unprivileged user when we are root
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_REPLAY_") and k != "DATABASE_URL"}
    admin_url = os.environ.get("DATABASE_URL")
    database = f"kalshi_replay_pytest_{uuid.uuid4().hex[:12]}"
    if admin_url:
        _psql(admin_url, f"CREATE DATABASE {database}")
        env["DATABASE_URL"] = _with_database(admin_url, database)
    args = [str(binary), "demo", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--log", "info"]
    args += ["--markets", str(dataset.markets), "--days", str(dataset.days), "--trades", str(dataset.trades)]
    args += ["--seed", str(dataset.seed), "--start", dataset.start[:10]]
    child = subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stderr is not None
        seen: list[str] = []
        address: str | None = None
        deadline = time.monotonic() + STARTUP_SECONDS
        while address is None and time.monotonic() < deadline:
            line = child.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "serving grpc local=" in line:
                address = line.split("serving grpc local=", 1)[1].strip()
        if address is None:
            pytest.fail("the server did not start:\n" + "".join(seen[-40:]))
        # keep reading its log so that it never blocks on a full pipe
        stderr = child.stderr
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
        yield ReplayServer(address, dataset)
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if admin_url:
            _psql(admin_url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        shutil.rmtree(data_dir, ignore_errors=True)
