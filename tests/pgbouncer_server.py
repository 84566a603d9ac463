"""Debian's ``pgbouncer`` in transaction pooling mode in front of the test server, for the
tests that run the store through it (``make install`` / ``.ci/run`` install it).

PgBouncer refuses to run as root; as root (CI here) it is started with ``-u nobody``, so its
folder and files are made readable by everyone (they hold no password: ``trust``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

POOL_SIZE = 2
"""Server connections per database: small, so that clients really share them."""


def executable() -> str | None:
    """The ``pgbouncer`` program (Debian installs it in /usr/sbin, outside a user's PATH)."""
    found = os.environ.get("STATESTORE_PGBOUNCER") or shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pgbouncer(program: str, server_url: str, pool_size: int = POOL_SIZE) -> Iterator[int]:
    """Run PgBouncer in front of the server of ``server_url`` (any database on it, as the
    URL's user, trusted) on a free loopback port, ``pool_size`` server connections per
    database; yields the port."""
    server = make_url(server_url)
    user = server.username or "postgres"
    folder = Path(tempfile.mkdtemp(prefix="statestore-pgbouncer-"))
    port = _free_port()
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host or '127.0.0.1'} port={server.port or 5432} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
        "min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 1000\n"
        # A client stuck waiting for a server connection fails the test within seconds.
        "query_wait_timeout = 30\nlogfile =\npidfile =\n"
    )
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    command = [program, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    log = folder / "pgbouncer.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for(port, process, log)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({process.returncode}): {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}")
