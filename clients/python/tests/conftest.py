"""A real kalshi-replay server for the whole session: the project's binary as `demo`, on a free port, with a private
PostgreSQL in a temporary data directory (DATABASE_URL is ignored, so that the tests never write into a shared
database). The binary is $KALSHI_REPLAY_BIN, or target/debug/kalshi-replay of this repository."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kalshi_replay import Client

REPO = Path(__file__).resolve().parents[3]
SERIES = "KXSYNAA"
START = "2026-01-05T00:00:00Z"
END = "2026-01-08T00:00:00Z"
MARKETS = 20
TRADES = 30000
STARTUP_SECONDS = 300


def _binary() -> Path:
    path = Path(os.environ.get("KALSHI_REPLAY_BIN", REPO / "target" / "debug" / "kalshi-replay"))
    if not path.is_file():
        pytest.exit(f"kalshi-replay binary not found at {path}: run `cargo build` or set KALSHI_REPLAY_BIN", 2)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The demo server; kill() and start() again keep its data directory and port, as a restart would."""

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._wait_for_postgres_gone()
        self.starts += 1
        stdout = self.data_dir / f"stdout-{self.starts}.log"
        stderr = self.data_dir / f"stderr-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "KALSHI_REPLAY_"))}
        env["KALSHI_REPLAY_LOG"] = "warn"
        args = [
            str(self.binary),
            "demo",
            "--listen",
            self.target,
            "--data-dir",
            str(self.data_dir / "data"),
            "--markets",
            str(MARKETS),
            "--days",
            "3",
            "--trades",
            str(TRADES),
        ]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            # demo prints "kalshi-replay is serving gRPC on ADDR" once the port is bound
            if "serving gRPC on" in stdout.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"the server did not start:\n{stdout.read_text(errors='replace')}\n{stderr.read_text(errors='replace')}"
        )

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; its private PostgreSQL then shuts down by itself (parent-death signal)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def _wait_for_postgres_gone(self) -> None:
        pid_file = self.data_dir / "data" / "pg" / "postmaster.pid"
        deadline = time.monotonic() + 60
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    # PostgreSQL runs as an unprivileged user when the tests run as root: it must reach the data directory
    data_dir = Path(tempfile.mkdtemp(prefix="kalshi-replay-pytest-"))
    data_dir.chmod(0o755)
    srv = Server(_binary(), data_dir)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


class CuttingProxy:
    """A TCP proxy in front of the server that cuts its first connection after `cut_after` bytes from the server:
    a real transport failure in the middle of a stream, at a point the test chooses. Later connections pass."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._cut_after = cut_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            self.connections += 1
            limit = self._cut_after if self.connections == 1 else None
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, limit), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while data := source.recv(65536):
                if limit is not None and passed + len(data) > limit:
                    self.cuts += 1
                    break
                sink.sendall(data)
                passed += len(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
