"""Shared fixtures: a real `trustplane serve` process on loopback, and ncclient sessions to it."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ncclient import manager
from ncclient.xml_ import to_ele

PASSWORD = "test-admin-pw"
ROOT = Path(__file__).resolve().parent.parent
CONFIG_TEST_YANG = ROOT / "tests" / "yang-config"
CT = "urn:trustplane:test:config-test"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
# a whole configuration must keep a local user (admin keeps the hash it has)
KEEP_ADMIN = ('<system xmlns="urn:ietf:params:xml:ns:yang:ietf-system"><authentication>'
              "<user><name>admin</name></user></authentication></system>")


@contextlib.contextmanager
def raises_code(exc_type, code: str, tag: str | None = None):
    """pytest.raises(exc_type), then the engine error's code and, if given, its NETCONF tag."""
    with pytest.raises(exc_type) as info:
        yield info
    assert info.value.code == code, info.value.message
    if tag:
        assert info.value.tag == tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`trustplane serve` in a subprocess, started and stopped by the tests."""

    def __init__(self, state_dir: Path, *extra: str):
        self.state_dir = state_dir
        self.extra = ("--yang-dir", str(CONFIG_TEST_YANG), *extra)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}.log"

    def start(self) -> "ServerProcess":
        env = dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD=PASSWORD)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trustplane.cli", "serve", "--state-dir", str(self.state_dir),
             "--port", str(self.port), *self.extra],
            stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=ROOT)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("trustplane: listening on"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log_path.read_text()}")
        self.listen_line = line
        return self

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self._log.close()
        return rc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self, **kw):
        params = dict(host=self.host, port=self.port, username="admin", password=PASSWORD,
                      hostkey_verify=False, look_for_keys=False, allow_agent=False, timeout=30)
        params.update(kw)
        return manager.connect(**params)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("srv") / "state").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    yield srv
    srv.stop()


@pytest.fixture
def nc(server):
    """A session on the shared server, whose running datastore holds only the admin user."""
    with server.connect() as m:
        m.dispatch(to_ele(f'<copy-config xmlns="{NC}"><target><running/></target>'
                          f"<source><config>{KEEP_ADMIN}</config></source></copy-config>"))
        yield m


def rpc(m, xml: str):
    """Send one operation given as XML text."""
    return m.dispatch(to_ele(xml))
