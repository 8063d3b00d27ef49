"""The client side of the compile server (:mod:`tvmred.compile_server`): a process that needs a
kernel which is in no cache asks the user's compile server -- a process that has imported TVM
already -- to compile it into the disk cache, and loads it from there.  A new formula's first
call then costs the compile (a few tenths of a second), not TVM's import (one to two seconds)
as well.

One server per user, cache directory and code: its socket is ``server-<hash>.sock`` in the
cache directory (owner-only, checked as the cache's entries are), the hash naming tvmred's code
fingerprint, the TVM version and the Python executable, so a changed tvmred or TVM gets a new
server and the old one exits when idle (``IDLE`` seconds).  A process that finds no server
compiles itself, as without a server, and starts one in the background when it exits (not
before: the server's start would compete with it for the cores); the processes after it
find the server.

Nothing here can make a call fail or hang: no server, a dead or stale server, a socket path
too long for the OS, a refused or broken connection, or a failed remote compile -- each
returns False and the caller compiles in-process as before.  ``TVMRED_COMPILE_SERVER=0``
turns it off (it is on by default on Linux, the only platform where the server can check who
connects, by ``SO_PEERCRED``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from .settings import cache_dir, untrusted

log = logging.getLogger("tvmred")

#: seconds without a request after which a server exits (``TVMRED_COMPILE_SERVER_IDLE``)
IDLE = float(os.environ.get("TVMRED_COMPILE_SERVER_IDLE") or 600.0)
MAX_PATH = 100  # bytes: AF_UNIX socket paths are limited to 104-108 bytes
_HEADER = struct.Struct("<Q")


def enabled() -> bool:
    if os.environ.get("TVMRED_COMPILE_SERVER", "1") in ("", "0"):
        return False
    return sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")


def socket_path(d: Path, identity: str) -> Path:
    """The socket of the server for this code identity in cache directory ``d``."""
    return d / f"server-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.sock"


def send_msg(conn: socket.socket, data: bytes) -> None:
    conn.sendall(_HEADER.pack(len(data)) + data)


def recv_msg(conn: socket.socket) -> bytes:
    """One length-prefixed message; EOFError if the peer closed the connection first."""
    head = _recv_exact(conn, _HEADER.size)
    return _recv_exact(conn, _HEADER.unpack(head)[0])


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the compile server closed the connection")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _env() -> dict:
    """The settings a compile reads from the environment (tvmred's and TVM's)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("TVMRED_", "TVM_"))}


def _connect(path: Path) -> Optional[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _starting(path: Path) -> bool:
    """Whether a server holds the lock of ``path`` (it may still be importing TVM)."""
    import fcntl

    try:
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    return False  # closing the file released the lock


def _spawn(path: Path, d: Path) -> None:
    """Start a server for ``path`` in the background, for the processes that come next."""
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "TVMRED_CACHE_DIR": str(d)}
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    try:
        fd = os.open(d / "server.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tvmred.compile_server", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # outlives this process; no terminal signals
                close_fds=True,
            )
        finally:
            os.close(fd)
    except OSError as e:
        log.info("tvmred: could not start a compile server (%s)", e)
        return
    log.info("tvmred: started a compile server (pid %d) for the next processes", proc.pid)


def _usable_path(identity: str) -> Optional[Path]:
    """The server's socket path, None where there can be no server."""
    if not enabled():
        return None
    d = cache_dir()
    try:
        if untrusted(d) is not None:
            return None
    except OSError:
        return None
    path = socket_path(d, identity)
    return path if len(os.fsencode(path)) <= MAX_PATH else None


def _connect_or_start(path: Path) -> Optional[socket.socket]:
    """A connection to the server, or None after arranging for one to start (unless one is
    starting)."""
    conn = _connect(path)
    if conn is None and not _starting(path):
        _start_later(path)
    return conn


_LATER: set = set()  # socket paths this process starts a server for when it exits


def _start_later(path: Path) -> None:
    """Start a server for ``path`` when this process exits (once), for the processes that
    come next.  Not now: a server's start (TVM's import, a warm-up compile: 1-2 s of a core)
    would take a core from this process's own kernels meanwhile -- on a 2-core machine an
    ArgKMin ran in 20 ms instead of 11 ms during it, even with the server at idle priority."""
    if path not in _LATER:
        _LATER.add(path)
        atexit.register(_start_if_none, path)


def _start_if_none(path: Path) -> None:
    """At exit: start the server unless one listens or starts by now."""
    conn = _connect(path)
    if conn is not None:
        conn.close()
    elif not _starting(path):
        _spawn(path, path.parent)


@functools.lru_cache(maxsize=None)
def ensure(identity: str) -> None:
    """Start a server for the processes to come, when this one exits, if none runs or starts
    (for a process that compiles itself because it has TVM imported already)."""
    path = _usable_path(identity)
    if path is not None and not _starting(path):
        _start_later(path)


def request(payload: dict, identity: str) -> bool:
    """Ask the compile server to compile ``payload`` (key, spec, target, config, extra, what)
    into the disk cache: True if it did, False if this process must compile itself (with no
    server running, one is started for the processes to come)."""
    path = _usable_path(identity)
    conn = _connect_or_start(path) if path is not None else None
    if conn is None:
        return False
    try:
        with conn:
            send_msg(conn, pickle.dumps({**payload, "identity": identity, "env": _env()}))
            reply: dict[str, Any] = json.loads(recv_msg(conn))
    except (OSError, EOFError, ValueError) as e:
        log.info("tvmred: the compile server failed (%s); compiling here", e)
        return False
    if not reply.get("ok"):
        log.info("tvmred: the compile server could not compile (%s)", reply.get("error"))
        return False
    return True
