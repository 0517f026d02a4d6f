"""A device for a workload: `trustplane init`, then `trustplane serve` on a free loopback
port, both as subprocesses of the source tree under test."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


class Device:
    def __init__(self, state: Path, root: Path = ROOT):
        self.state, self.root = state, root
        self.password = secrets.token_urlsafe(12)
        self.env = dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD=self.password)
        self._cli("init", "--state-dir", str(state))

    def _cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "trustplane.cli", *args], cwd=self.root, env=self.env, check=True,
                       capture_output=True)

    @contextmanager
    def serving(self) -> Iterator[tuple[int, int]]:
        """The server's port and PID while it runs."""
        proc = subprocess.Popen([sys.executable, "-m", "trustplane.cli", "serve", "--state-dir", str(self.state),
                                 "--port", "0", "--log-level", "WARNING"], cwd=self.root, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            yield int(proc.stdout.readline().decode().rsplit(":", 1)[1]), proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=15)
