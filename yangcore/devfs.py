"""The device filesystem: `disk0:` and `harddisk:` as directories of the state
directory, one resolver for device paths, quotas and access checks. Backends read
and write device files through it; a transport's file service (SFTP) is built on it."""
from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Callable

from backends.engine.errors import EngineError

from .datastore import atomic_write

DEVICES = ("disk0:", "harddisk:")
DEFAULT_MAX_READ = 64 * 1024 * 1024
DEFAULT_QUOTA_BYTES = 4 * 1024 ** 3
DEFAULT_MAX_FILES = 10_000
# "/disk0:/a/b", "disk0:/a/b", "disk0:a/b"
_DEVICE_PATH = re.compile(r"^/?([A-Za-z0-9_-]+:)/?(.*)$", re.S)
_TAGS = {"file-not-found": "data-missing", "file-access-denied": "access-denied", "quota-exceeded": "resource-denied",
         "storage-failed": "operation-failed"}

# (user, root, op) -> may the user do op (read, create, update or delete) on the root's files?
Authorizer = Callable[[str, str, str], bool]


class DevFSError(EngineError):
    """code is a stable error-app-tag: bad-device-path, path-escape, file-not-found,
    not-a-file, file-too-large, file-access-denied, quota-exceeded or storage-failed."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message, _TAGS.get(code, "invalid-value"))


def _nobody(user: str, root: str, op: str) -> bool:
    return False


class DeviceFS:
    """The device roots, who may use their files, and how much they may hold.

    A user of None is the server itself, never checked; any other user is checked
    with `authorize`, which refuses everyone until the server sets it. The byte and
    file counts are measured once here and then kept up to date by every change made
    through this class or its SFTP server, so no write rescans the tree.
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_QUOTA_BYTES, max_files: int = DEFAULT_MAX_FILES):
        self.root = Path(root)
        for dev in DEVICES:
            (self.root / dev).mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self.authorize: Authorizer = _nobody
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self.used_bytes, self.used_files = self._measure()

    def _measure(self) -> tuple[int, int]:
        size = count = 0
        pending = [os.path.join(self._real_root, d) for d in DEVICES]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    count += 1
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(entry.path)
                    size += counted_size(st)
        return size, count

    def check_access(self, user: str | None, root: str, op: str) -> None:
        if user is not None and not self.authorize(user, root, op):
            raise DevFSError("file-access-denied", f"{op} access to the files of {root} is denied")

    def charge(self, size: int, files: int = 0) -> None:
        """Count size more bytes and files more entries (less when negative);
        growth past the quota is refused and counts nothing."""
        with self._lock:
            if size > 0 and self.used_bytes + size > self.max_bytes:
                raise DevFSError("quota-exceeded", f"the device filesystem quota of {self.max_bytes} bytes "
                                                   f"would be exceeded ({self.used_bytes} bytes in use)")
            if files > 0 and self.used_files + files > self.max_files:
                raise DevFSError("quota-exceeded", f"the device filesystem limit of {self.max_files} files "
                                                   "and directories would be exceeded")
            self._add(size, files)

    def adjust(self, size: int, files: int = 0) -> None:
        """Count a change already made (or undo a charge): never refused."""
        with self._lock:
            self._add(size, files)

    def _add(self, size: int, files: int) -> None:
        self.used_bytes = max(0, self.used_bytes + size)
        self.used_files = max(0, self.used_files + files)

    def resolve(self, path: str, must_exist: bool = False, user: str | None = None, op: str = "read") -> Path:
        """The real file behind a device path, once user may do op there.
        Nothing outside the device may come out."""
        if "\0" in path or "\\" in path:
            raise DevFSError("bad-device-path", f"{path!r}: invalid characters in the path")
        m = _DEVICE_PATH.match(path)
        if m is None or m.group(1) not in DEVICES:
            raise DevFSError("bad-device-path",
                             f"{path!r}: not a device path (expected {' or '.join(DEVICES)} followed by a path)")
        device, rest = m.groups()
        # before anything about the files: a refused user learns nothing of them
        self.check_access(user, device, op)
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise DevFSError("path-escape", f"{path!r}: '..' is not allowed in device paths")
        base = os.path.join(self._real_root, device)
        real = os.path.realpath(os.path.join(base, *parts))
        if real != base and not real.startswith(base + os.sep):
            raise DevFSError("path-escape", f"{path!r} leads out of {device}")
        if must_exist and not os.path.lexists(real):
            raise DevFSError("file-not-found", f"{path!r}: no such file")
        return Path(real)

    def device_path(self, real: Path) -> str:
        """The canonical `disk0:/a/b` form of a path inside the device filesystem."""
        rel = Path(os.path.realpath(real)).relative_to(self._real_root)
        device, *rest = rel.parts
        return f"{device}/{'/'.join(rest)}"

    def read_bytes(self, path: str, max_size: int = DEFAULT_MAX_READ, user: str | None = None) -> bytes:
        real = self.resolve(path, must_exist=True, user=user)
        try:
            # O_NOFOLLOW: a symlink swapped in after resolve() is refused, not followed
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise DevFSError("file-not-found", f"{path!r}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise DevFSError("not-a-file", f"{path!r} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            if st.st_size > max_size:
                raise DevFSError("file-too-large", f"{path!r} is larger than {max_size} bytes")
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise DevFSError("file-too-large", f"{path!r} is larger than {max_size} bytes")
        return data

    def write_bytes(self, path: str, data: bytes, user: str | None = None) -> None:
        real = self.resolve(path, user=user, op="create")
        if real.is_dir():
            raise DevFSError("not-a-file", f"{path!r} is a directory")
        old = real.stat().st_size if real.exists() else None
        if old is not None:
            self.resolve(path, user=user, op="update")
        grow, new = len(data) - (old or 0), int(old is None)
        self.charge(grow, new)
        try:
            atomic_write(real, data, mode=0o644)
        except OSError as exc:
            self.adjust(-grow, -new)
            raise DevFSError("storage-failed", f"cannot write {path!r}: {exc.strerror}") from None
        except BaseException:
            self.adjust(-grow, -new)
            raise


def counted_size(st: os.stat_result) -> int:
    """What an entry counts against the byte quota: a regular file its size, others nothing."""
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
