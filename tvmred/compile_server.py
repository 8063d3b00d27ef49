"""The compile server: ``python -m tvmred.compile_server <socket path>`` (started by
:mod:`tvmred.compile_client`, not by hand).  It imports TVM once, warms the compiler with one
small kernel, then listens on a Unix socket in the cache directory; each request is served by
a forked child (a crash or a hang in one compile touches no other request), which checks that
the peer is this user (``SO_PEERCRED``), compiles the kernel with the client's environment and
stores it in the disk cache for the client to load.  The client holds the entry's lock while
it waits, so the child stores without taking it.

One server per socket (a lock file next to it; a second one exits at once).  It exits after
``IDLE`` seconds without a request, or when a client of another code identity reaches it (the
socket name has the identity in it, so that means tvmred changed under it).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from . import build, cache
from .arrays import HOST
from .compile_client import IDLE, recv_msg, send_msg
from .targets import target_for


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _warm() -> None:
    """Import TVM and run one small compile, so the forked children start warm."""
    from .frontend import make_reduction

    r = make_reduction("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], "Sum", 1, "auto")
    spec = r.spec("float32", False)
    build.compile_reduction(spec, target_for(HOST))


def handle(conn: socket.socket, me: str) -> None:
    """Serve one request (in a child process)."""
    if _peer_uid(conn) != os.getuid():
        return  # another account: not a word, and nothing of theirs is unpickled
    req = pickle.loads(recv_msg(conn))
    if req.get("identity") != me:
        send_msg(conn, json.dumps({"ok": False, "error": "stale server"}).encode())
        os.kill(os.getppid(), signal.SIGTERM)
        return
    for k in [k for k in os.environ if k.startswith(("TVMRED_", "TVM_"))]:
        del os.environ[k]
    os.environ.update(req["env"])
    try:
        ex, meta = build.timed(
            req["what"], lambda: build.compile_reduction(req["spec"], req["target"], req["config"])
        )
        cache.store_built(req["key"], ex, meta, req["extra"])
        reply = {"ok": True}
    except Exception as e:  # the client compiles itself and raises what it meets
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    send_msg(conn, json.dumps(reply).encode())


def serve(path: Path) -> None:
    lock = open(f"{path}.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # a live server has this socket
    me = build.identity()
    _warm()  # import TVM and compile once before listening: the children start warm
    if path.exists():
        path.unlink()  # a dead server's socket: the lock says nobody serves it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    sock.settimeout(IDLE)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    print(f"tvmred compile server {os.getpid()} listening on {path}", flush=True)
    children: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                children = {p for p in children if os.waitpid(p, os.WNOHANG) == (0, 0)}
                if not children and time.monotonic() - last >= IDLE:
                    return
                continue
            last = time.monotonic()
            pid = os.fork()
            if pid == 0:  # the child: serve, then leave without running the parent's cleanup
                code = 0
                try:
                    sock.close()
                    conn.settimeout(None)
                    handle(conn, me)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            conn.close()
            children.add(pid)
            children = {p for p in children if os.waitpid(p, os.WNOHANG) == (0, 0)}
    finally:
        try:
            path.unlink()
        except OSError:
            pass


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
