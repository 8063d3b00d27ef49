"""The compile server (tvmred/compile_client.py, tvmred/compile_server.py): a process that
finds no server starts one and compiles itself; a later process's new formula is compiled by
the server and loaded from the cache without importing TVM; the server refuses other users,
exits when idle, and a dead, broken or refusing server never makes a call fail or hang."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tvmred import build, compile_client, compile_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")),
    reason="the compile server runs on Linux only (SO_PEERCRED)",
)

CALL = """
import json, sys, torch
from tvmred import cache
from tvmred.torch import Genred
c = float(sys.argv[1])
torch.manual_seed(0)
x, y = torch.rand(40, 3, dtype=torch.float64), torch.rand(60, 3, dtype=torch.float64)
b = torch.rand(60, 2, dtype=torch.float64)
g = Genred(f"Exp(-SqDist(x,y)*Inv(IntCst({int(c)})))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
           axis=1)
out = g(x, y, b)
ref = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / c) @ b
print(json.dumps({"err": (out - ref).abs().max().item(), "tvm": "tvm" in sys.modules,
                  "remote": cache.stats["remote"], "compiled": cache.stats["compiled"]}))
"""


def run(cache: Path, c: int, **env) -> dict:
    full = {
        **os.environ,
        "TVMRED_CACHE_DIR": str(cache),
        "TVMRED_COMPILE_SERVER": "1",
        "TVMRED_COMPILE_SERVER_IDLE": "6",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }
    r = subprocess.run(
        [sys.executable, "-c", CALL, str(c)], env=full, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def wait_for(cond, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def sockets(cache: Path) -> list:
    return list(cache.glob("server-*.sock"))


def test_a_later_process_compiles_through_the_server_without_tvm(tmp_path):
    cache = tmp_path / "c"
    first = run(cache, 3)  # no server: compiles itself, starts one
    assert first["err"] < 1e-12 and first["tvm"] and first["compiled"] == 1
    assert wait_for(lambda: sockets(cache)), (cache / "server.log").read_text()
    assert oct(sockets(cache)[0].stat().st_mode & 0o777) == "0o600"
    second = run(cache, 5)  # a new formula in a new process
    assert second["err"] < 1e-12
    assert second["remote"] == 1 and second["compiled"] == 0
    assert not second["tvm"], "the client imported TVM"
    again = run(cache, 5)  # now on disk
    assert again["remote"] == 0 and again["compiled"] == 0 and not again["tvm"]
    # idle for TVMRED_COMPILE_SERVER_IDLE seconds: the server exits and removes its socket
    assert wait_for(lambda: not sockets(cache), 60), (cache / "server.log").read_text()


def test_a_dead_servers_socket_never_blocks_a_call(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir(mode=0o700)
    path = compile_client.socket_path(cache, _identity_of_a_child(cache))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, then closed: a crashed server's file
    stale.close()
    res = run(cache, 7)
    assert res["err"] < 1e-12 and res["compiled"] == 1
    # the server it started replaced the stale socket; it exits when idle
    assert wait_for(lambda: _listening(path)), (cache / "server.log").read_text()
    assert wait_for(lambda: not path.exists(), 60)


def _identity_of_a_child(cache: Path) -> str:
    code = "from tvmred import build; print(build.identity())"
    env = {**os.environ, "TVMRED_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return r.stdout.strip()


def _listening(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


class FakeServer:
    """A listener on ``path`` that answers each connection with ``reply`` (None: hangs up)."""

    def __init__(self, path: Path, reply) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.reply, self.seen = reply, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.reply is not None:
                    self.seen.append(compile_client.recv_msg(conn))
                    compile_client.send_msg(conn, json.dumps(self.reply).encode())

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("reply", [None, {"ok": False, "error": "RuntimeError: no"}])
def test_a_broken_or_failing_server_means_compile_here(tmp_path, monkeypatch, reply):
    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "1")
    tmp_path.chmod(0o700)
    path = compile_client.socket_path(tmp_path, "me")
    srv = FakeServer(path, reply)
    try:
        assert compile_client.request({"key": "k"}, "me") is False
    finally:
        srv.close()
    if reply is not None:
        assert srv.seen, "the request never reached the server"


def test_no_server_and_one_starting_means_compile_here_without_a_second(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "1")
    tmp_path.chmod(0o700)
    path = compile_client.socket_path(tmp_path, "me")
    later, spawned = [], []
    monkeypatch.setattr(compile_client, "_start_later", lambda *a: later.append(a))
    monkeypatch.setattr(compile_client, "_spawn", lambda *a: spawned.append(a))
    with open(f"{path}.lock", "a") as lock:  # a server is starting (it holds the lock)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert compile_client.request({"key": "k"}, "me") is False
        assert later == []
        compile_client._start_if_none(path)  # at exit: one is starting, no second
        assert spawned == []
    assert compile_client.request({"key": "k"}, "me") is False  # nobody: one at exit
    assert later == [(path,)] and spawned == []  # not while this process runs
    compile_client._start_if_none(path)
    assert spawned == [(path, tmp_path)]


def test_the_server_starts_when_the_process_exits(tmp_path):
    """A process that compiled itself starts the server as it exits, not while it runs (the
    server's TVM import would compete with its kernels for the cores)."""
    cache = tmp_path / "c"
    code = (
        "import time, json, sys\n"
        "from tvmred.torch import Genred\n"
        "import torch\n"
        "Genred('SqDist(x,y)', ['x = Vi(2)', 'y = Vj(2)'], axis=1)(torch.rand(4, 2), torch.rand(5, 2))\n"
        "time.sleep(1.5)\n"
        "from pathlib import Path\n"
        "from tvmred.compile_client import _starting\n"
        f"d = Path({str(cache)!r})\n"
        "print(json.dumps([p.name for p in d.glob('server-*.sock')]\n"
        "                 + [p.name for p in d.glob('*.lock') if _starting(Path(str(p)[:-5]))]))\n"
    )
    env = {**os.environ, "TVMRED_CACHE_DIR": str(cache), "TVMRED_COMPILE_SERVER": "1",
           "TVMRED_COMPILE_SERVER_IDLE": "5"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []  # none, nor starting, then
    assert wait_for(lambda: sockets(cache)), (cache / "server.log").read_text()
    assert wait_for(lambda: not sockets(cache), 60)  # idle: it exits


def test_an_untrusted_cache_dir_gets_no_server(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "1")
    tmp_path.chmod(0o777)
    monkeypatch.setattr(compile_client, "_spawn", lambda *a: pytest.fail("spawned"))
    monkeypatch.setattr(compile_client, "_connect", lambda *a: pytest.fail("connected"))
    assert compile_client.request({"key": "k"}, "me") is False


def test_the_server_ignores_another_user(monkeypatch):
    class Conn:
        def getsockopt(self, *a):
            import struct

            return struct.pack("3i", 1, os.getuid() + 1, 0)

        def recv(self, n):
            raise AssertionError("read a request from another user")

    compile_server.handle(Conn(), "me")  # returns without reading or answering


def test_a_changed_tvmred_gets_another_server(monkeypatch):
    before = compile_client.socket_path(Path("/c"), build.identity())
    monkeypatch.setattr(build, "code_fingerprint", lambda: "changed")
    assert compile_client.socket_path(Path("/c"), build.identity()) != before


def test_it_is_off_when_asked(monkeypatch):
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "0")
    assert not compile_client.enabled()
    assert compile_client.request({"key": "k"}, "me") is False
