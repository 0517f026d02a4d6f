"""A real small filesystem for the tests of full and read-only disks: a tmpfs mounted at a
directory, filled to ENOSPC or remounted read-only. Mounting needs root."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

FILLER = ".filler"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a full or read-only disk is made with a tmpfs mount, which needs root")


class Disk:
    def __init__(self, path: Path, size: str = "16m"):
        self.path = Path(path)
        self.size = size

    def mount(self) -> "Disk":
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)],
                       check=True)
        return self

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=True)

    def fill(self) -> None:
        """No byte more fits: the filler takes every free block."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 4096, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC
                        break
        finally:
            os.close(fd)

    def unfill(self) -> None:
        os.unlink(self.path / FILLER)

    def remount(self, mode: str) -> None:
        """mode: "ro" or "rw"."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    @contextlib.contextmanager
    def full(self):
        self.fill()
        try:
            yield errno.ENOSPC
        finally:
            self.unfill()

    @contextlib.contextmanager
    def read_only(self):
        self.remount("ro")
        try:
            yield errno.EROFS
        finally:
            self.remount("rw")

    def broken(self, how: str):
        """The context for `how`: "full" or "read-only"."""
        return self.full() if how == "full" else self.read_only()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m"):
    """A Disk mounted at path for the length of the block."""
    need_root()
    disk = Disk(path, size).mount()
    try:
        yield disk
    finally:
        disk.unmount()
