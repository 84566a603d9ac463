"""``statestore ui`` in a subprocess, for the tests that talk to the real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATESTORE = str(Path(sys.executable).with_name("statestore"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running ``statestore ui``: its port, and its log (stderr) for failure messages."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_ui(url: str, *args: str) -> Server:
    """``statestore ui`` on a free port, once it accepts connections (the caller stops it)."""
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="statestore-ui-")) / "ui.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [STATESTORE, "--url", url, "ui", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "STATESTORE_DATABASE_URL"},
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"statestore ui exited:\n{server.output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    stop(server)
    raise AssertionError(f"statestore ui did not start serving:\n{server.output()}")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
