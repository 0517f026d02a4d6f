"""The device filesystem: `disk0:` and `harddisk:` as directories of the state
directory, one resolver for device paths, and the SFTP/SCP view of them."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import asyncssh

from .datastore import atomic_write

DEVICES = ("disk0:", "harddisk:")
DEFAULT_MAX_READ = 64 * 1024 * 1024
# "/disk0:/a/b", "disk0:/a/b", "disk0:a/b"
_DEVICE_PATH = re.compile(r"^/?([A-Za-z0-9_-]+:)/?(.*)$", re.S)


class DevFSError(Exception):
    """code is a stable error-app-tag: bad-device-path, path-escape, file-not-found,
    not-a-file, file-too-large or storage-failed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def tag(self) -> str:
        """The RFC 6241 error-tag for this failure."""
        return {"file-not-found": "data-missing", "storage-failed": "operation-failed"}.get(self.code, "invalid-value")


class DeviceFS:
    def __init__(self, root: Path):
        self.root = Path(root)
        for dev in DEVICES:
            (self.root / dev).mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)

    def resolve(self, path: str, must_exist: bool = False) -> Path:
        """The real file behind a device path. Nothing outside the device may come out."""
        if "\0" in path or "\\" in path:
            raise DevFSError("bad-device-path", f"{path!r}: invalid characters in the path")
        m = _DEVICE_PATH.match(path)
        if m is None or m.group(1) not in DEVICES:
            raise DevFSError("bad-device-path",
                             f"{path!r}: not a device path (expected {' or '.join(DEVICES)} followed by a path)")
        device, rest = m.groups()
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

    def read_bytes(self, path: str, max_size: int = DEFAULT_MAX_READ) -> bytes:
        real = self.resolve(path, must_exist=True)
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

    def write_bytes(self, path: str, data: bytes) -> None:
        real = self.resolve(path)
        if real.is_dir():
            raise DevFSError("not-a-file", f"{path!r} is a directory")
        try:
            atomic_write(real, data, mode=0o644)
        except OSError as exc:
            raise DevFSError("storage-failed", f"cannot write {path!r}: {exc.strerror}") from None


def sftp_factory(devfs: DeviceFS):
    """An asyncssh SFTP server class confined to the device filesystem (SCP uses it too)."""
    root = str(devfs.root)
    real_root = os.fsencode(os.path.realpath(root))
    devices = {os.fsencode(d) for d in DEVICES}

    class DeviceSFTPServer(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=root)

        def map_path(self, path: bytes) -> bytes:
            mapped = super().map_path(path)
            real = os.path.realpath(mapped)
            if real == real_root:
                return mapped  # "/" lists the devices
            if not real.startswith(real_root + b"/"):
                raise asyncssh.SFTPPermissionDenied("path leads out of the device filesystem")
            if real[len(real_root) + 1:].split(b"/")[0] not in devices:
                raise asyncssh.SFTPNoSuchFile(f"not on a device ({', '.join(DEVICES)})")
            return mapped

        def symlink(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("symbolic links are not allowed")

        def link(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("hard links are not allowed")

    return DeviceSFTPServer
