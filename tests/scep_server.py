"""Debian's `scepserver` (micromdm) as a throwaway SCEP CA for tests, reachable on loopback only.

scepserver turns `-port P` into the listen address ":P", which is every interface, and has no
option for a host ("-port 127.0.0.1:P" becomes ":127.0.0.1:P" and fails). So it runs alone in a
fresh network namespace, whose only interface is its own loopback, and two relays join that
namespace to this one:

    client -> 127.0.0.1:<ephemeral> (thread here) -> Unix socket in workdir (mode 0600)
           -> relay inside the namespace -> scepserver on the namespace's port 8080

Usage:

    with ScepServer(tmp_path, "s3cret") as srv:
        srv.url       # http://127.0.0.1:PORT/scep
        srv.ca_pem    # the depot's CA certificate (PEM)
"""
from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SCEPSERVER = "/usr/bin/scepserver"
INNER_PORT = 8080  # private to the namespace, so it cannot clash with anything
START_TIMEOUT = 20.0


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends, then pass the end on."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _bridge(a: socket.socket, b: socket.socket) -> None:
    back = threading.Thread(target=_pipe, args=(b, a), daemon=True)
    back.start()
    _pipe(a, b)
    back.join(60)
    a.close()
    b.close()


class ScepServer:
    def __init__(self, workdir: Path, challenge: str):
        self.workdir = Path(workdir)
        self.challenge = challenge
        self.depot = self.workdir / "depot"
        self.ca_pem = self.depot / "ca.pem"
        self.log_path = self.workdir / "scepserver.log"
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._sock_path = self.workdir / "scep.sock"
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> "ScepServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ScepServer":
        if not os.path.exists(SCEPSERVER):
            import pytest
            pytest.skip(f"{SCEPSERVER} is not installed (Debian package scep)")
        if shutil.which("unshare") is None:
            raise RuntimeError("unshare (util-linux) is needed to keep scepserver off the network")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.ca_pem.exists():
            subprocess.run([SCEPSERVER, "ca", "-init", "-depot", str(self.depot), "-keySize", "2048",
                            "-years", "1", "-organization", "trustplane-test",
                            "-organizational_unit", "SCEP test CA"],
                           check=True, capture_output=True, timeout=60)
        # root may make a network namespace directly; anyone else needs a user namespace too
        unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--net"]
        self._sock_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*unshare, sys.executable, os.path.abspath(__file__), "--inside", str(self._sock_path),
                 str(INNER_PORT), "--", SCEPSERVER, "-depot", str(self.depot), "-port", str(INNER_PORT),
                 "-challenge", self.challenge],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
            line = self.proc.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                raise RuntimeError(f"scepserver did not start: {line!r}\n{self.log_path.read_text()}")
            self._listener = socket.socket()
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(16)
            threading.Thread(target=self._accept, daemon=True).start()
        except BaseException:
            self.stop()
            raise
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/scep"
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            try:
                inner = socket.socket(socket.AF_UNIX)
                inner.connect(str(self._sock_path))
            except OSError:
                conn.close()
                continue
            threading.Thread(target=_bridge, args=(conn, inner), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # the inner relay stops scepserver when its stdin closes or on SIGTERM
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # the session we started has the relay's pid as its id; anything left in it goes too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- the part that runs inside the namespace -------------------------------------------------

def _loopback_up() -> None:
    """`ip link set lo up` without needing iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    layout = "16sh22x"  # struct ifreq: name, then the flags member of a 24-byte union
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(layout, fcntl.ioctl(s, siocgifflags, struct.pack(layout, b"lo", 0)))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack(layout, b"lo", flags | iff_up))


def _inside(sock_path: str, port: int, command: list[str]) -> int:
    _loopback_up()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if child.poll() is not None:
                return 1
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return 1
                time.sleep(0.05)
        old = os.umask(0o177)
        try:
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(sock_path)
        finally:
            os.umask(old)
        listener.listen(16)
        print("ready", flush=True)
        while True:
            readable, _, _ = select.select([listener, sys.stdin], [], [])
            if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
                return 0  # the test process closed the pipe or died
            if listener in readable:
                conn, _ = listener.accept()
                try:
                    server = socket.create_connection(("127.0.0.1", port), timeout=10)
                    server.settimeout(None)
                except OSError:
                    conn.close()
                    continue
                threading.Thread(target=_bridge, args=(conn, server), daemon=True).start()
    finally:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        try:
            os.unlink(sock_path)
        except OSError:
            pass


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "--inside" or sys.argv[4] != "--":
        sys.exit("usage: scep_server.py --inside SOCKET PORT -- COMMAND...")
    sys.exit(_inside(sys.argv[2], int(sys.argv[3]), sys.argv[5:]))
