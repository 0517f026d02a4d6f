"""The device filesystem: `disk0:` and `harddisk:` as directories of the state
directory, one resolver for device paths, and the SFTP/SCP view of them."""
from __future__ import annotations

import os
import posixpath
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import Callable

import asyncssh

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


class DevFSError(Exception):
    """code is a stable error-app-tag: bad-device-path, path-escape, file-not-found,
    not-a-file, file-too-large, file-access-denied, quota-exceeded or storage-failed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def tag(self) -> str:
        """The RFC 6241 error-tag for this failure."""
        return _TAGS.get(self.code, "invalid-value")


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
                    size += _counted_size(st)
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


_WRITE_FLAGS = (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
                | asyncssh.FXF_EXCL)


def _sftp_error(exc: DevFSError) -> asyncssh.SFTPError:
    if exc.code == "quota-exceeded":
        return asyncssh.SFTPQuotaExceeded(exc.message)  # FX_FAILURE, with this text, for SFTP v3
    return asyncssh.SFTPPermissionDenied(exc.message)


def _refuse_attrs(attrs: asyncssh.SFTPAttrs) -> None:
    """No owner changes and no setuid, setgid or sticky bit, on any file."""
    if (attrs.uid, attrs.gid, attrs.owner, attrs.group) != (None, None, None, None):
        raise asyncssh.SFTPPermissionDenied("changing the owner or group of a file is not allowed")
    if attrs.permissions is not None and stat.S_IMODE(attrs.permissions) & ~0o777:
        raise asyncssh.SFTPPermissionDenied("setuid, setgid and sticky bits are not allowed")


def _counted_size(st: os.stat_result) -> int:
    """What an entry counts against the byte quota: a regular file its size, others nothing."""
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def sftp_factory(devfs: DeviceFS):
    """An asyncssh SFTP server class confined to the device filesystem (SCP uses it too).

    Every request is made as the logged-in user: it needs that user's access (see
    DeviceFS.authorize) to the root it touches, and writes count against the quota.
    """
    root = str(devfs.root)
    real_root = os.fsencode(os.path.realpath(root))
    devices = {os.fsencode(d): d for d in DEVICES}

    class DeviceSFTPServer(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=root)
            self._user = chan.get_extra_info("username")
            self._roots: dict[object, str] = {}  # open file -> its root
            self._replacing: dict[object, tuple[bytes, bytes]] = {}  # open file -> (its temp file, the target)
            self._failed: set[object] = set()  # replacements a write failed in

        def map_path(self, path: bytes) -> bytes:
            return self._locate(path)[0]

        def _locate(self, path: bytes, follow: bool = True) -> tuple[bytes, str | None, bool]:
            """The local path, the root it is on (None for the top, which lists the
            roots) and whether it is that root itself. With follow false the last
            component is taken as it is: the entry a remove or rename acts on."""
            mapped = super().map_path(path)  # the chroot joined with a normalized path
            if follow:
                real = os.path.realpath(mapped)
            elif mapped.rstrip(b"/") == real_root:
                real = real_root
            else:
                parent, name = os.path.split(mapped)
                real = os.path.join(os.path.realpath(parent), name)
            if real == real_root:
                return mapped, None, True
            if not real.startswith(real_root + b"/"):
                raise asyncssh.SFTPPermissionDenied("path leads out of the device filesystem")
            first, _, rest = real[len(real_root) + 1:].partition(b"/")
            if first not in devices:
                raise asyncssh.SFTPNoSuchFile(f"not on a device ({', '.join(DEVICES)})")
            return mapped, devices[first], not rest

        def _allow(self, device: str, op: str) -> None:
            try:
                devfs.check_access(self._user, device, op)
            except DevFSError as exc:
                other = {"create": "update", "update": "create"}.get(op)
                if other and not devfs.authorize(self._user, device, other):
                    # neither: say so without telling whether the file exists
                    raise asyncssh.SFTPPermissionDenied(f"write access to the files of {device} is denied") from None
                raise _sftp_error(exc) from None

        def _checked(self, path: bytes, op: str) -> bytes:
            """A path to read or write through, once the user may."""
            mapped, device, _ = self._locate(path)
            if device is None:
                if op != "read":
                    raise asyncssh.SFTPPermissionDenied("the top of the device filesystem cannot be changed")
            else:
                self._allow(device, op)
            return mapped

        def _entry(self, path: bytes, op: str) -> bytes:
            """A path whose entry itself is created, changed or removed: never a root."""
            mapped, device, is_root = self._locate(path, follow=False)
            if is_root:
                raise asyncssh.SFTPPermissionDenied("the device roots cannot be created, changed, renamed or removed")
            self._allow(device, op)
            return mapped

        def _charge(self, size: int, files: int = 0) -> None:
            try:
                devfs.charge(size, files)
            except DevFSError as exc:
                raise _sftp_error(exc) from None

        # -- files
        def open(self, path, pflags, attrs):
            _refuse_attrs(attrs)
            if not pflags & _WRITE_FLAGS:
                self._checked(path, "read")
                return self._opened(super().open(path, pflags, attrs), path)
            mapped = self._locate(path)[0]
            exists = os.path.lexists(mapped)
            if pflags & asyncssh.FXF_READ:
                self._checked(path, "read")
            self._checked(path, "update" if exists else "create")
            if exists and pflags & asyncssh.FXF_TRUNC and not pflags & asyncssh.FXF_EXCL and os.path.isfile(mapped):
                return self._open_replacement(path, mapped, pflags, attrs)
            new = int(not exists and bool(pflags & asyncssh.FXF_CREAT))
            self._charge(0, new)
            try:
                f = super().open(path, pflags, attrs)
            except BaseException:
                devfs.adjust(0, -new)
                raise
            return self._opened(f, path)

        def _open_replacement(self, path: bytes, target: bytes, pflags: int, attrs):
            """Truncating an existing file writes a new one beside it, which replaces it at
            close unless a write failed: a refused or failed upload leaves the old file."""
            temp = posixpath.join(posixpath.dirname(path), b".%s.part" % secrets.token_hex(8).encode())
            self._charge(0, 1)
            try:
                f = super().open(temp, pflags | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL, attrs)
            except BaseException:
                devfs.adjust(0, -1)
                raise
            self._replacing[f] = (self._locate(temp)[0], target)
            return self._opened(f, path)

        def open56(self, path, desired_access, flags, attrs):
            # only SFTP v5 and v6 open this way; the server speaks v3 (asyncssh's default)
            raise asyncssh.SFTPOpUnsupported("SFTP v5 and v6 opens are not supported")

        def _opened(self, f, path: bytes):
            self._roots[f] = self._locate(path)[1]
            return f

        def close(self, file_obj):
            self._roots.pop(file_obj, None)
            super().close(file_obj)
            temp, target = self._replacing.pop(file_obj, (None, None))
            if temp is None:
                return
            if file_obj in self._failed:
                self._failed.discard(file_obj)
                size = os.lstat(temp).st_size
                os.remove(temp)
                devfs.adjust(-size, -1)
            else:
                replaced = os.lstat(target) if os.path.lexists(target) else None
                os.replace(temp, target)
                if replaced is not None:
                    devfs.adjust(-_counted_size(replaced), -1)

        def write(self, file_obj, offset, data):
            try:
                return self._write(file_obj, offset, data)
            except BaseException:
                if file_obj in self._replacing:
                    self._failed.add(file_obj)
                raise

        def _write(self, file_obj, offset, data):
            fd = file_obj.fileno()
            size = os.fstat(fd).st_size
            grow = max(0, (size if file_obj.mode.startswith("a") else offset) + len(data) - size)
            self._charge(grow)
            try:
                written = super().write(file_obj, offset, data)
            except BaseException:
                devfs.adjust(os.fstat(fd).st_size - size - grow)
                raise
            if written != len(data):  # short: count what the file grew by
                devfs.adjust(os.fstat(fd).st_size - size - grow)
            return written

        def fsetstat(self, file_obj, attrs):
            _refuse_attrs(attrs)
            self._allow(self._roots[file_obj], "update")
            self._resized(os.fstat(file_obj.fileno()).st_size, attrs,
                          lambda: super(DeviceSFTPServer, self).fsetstat(file_obj, attrs))

        def setstat(self, path, attrs):
            self._set(path, attrs, follow=True)

        def lsetstat(self, path, attrs):
            self._set(path, attrs, follow=False)

        def _set(self, path, attrs, follow: bool):
            _refuse_attrs(attrs)
            mapped = self._entry(path, "update")
            change = super().setstat if follow else super().lsetstat
            self._resized(os.stat(mapped, follow_symlinks=follow).st_size, attrs, lambda: change(path, attrs))

        def _resized(self, size: int, attrs, change) -> None:
            """change() with attrs.size, if any, counted against the quota."""
            grow = 0 if attrs.size is None else attrs.size - size
            self._charge(grow)
            try:
                change()
            except BaseException:
                devfs.adjust(-grow)
                raise

        def stat(self, path):
            return os.stat(self._checked(path, "read"))

        def lstat(self, path):
            return os.lstat(self._checked(path, "read"))

        async def scandir(self, path):
            self._checked(path, "read")
            async for name in super().scandir(path):
                yield name

        def readlink(self, path):
            self._checked(path, "read")
            return super().readlink(path)

        def statvfs(self, path):
            self._checked(path, "read")
            return super().statvfs(path)

        # -- directory entries
        def remove(self, path):
            mapped = self._entry(path, "delete")
            size = _counted_size(os.lstat(mapped))
            os.remove(mapped)
            devfs.adjust(-size, -1)

        def mkdir(self, path, attrs):
            _refuse_attrs(attrs)
            mapped = self._entry(path, "create")
            self._charge(0, 1)
            try:
                os.mkdir(mapped, 0o777 if attrs.permissions is None else attrs.permissions)
            except BaseException:
                devfs.adjust(0, -1)
                raise

        def rmdir(self, path):
            os.rmdir(self._entry(path, "delete"))
            devfs.adjust(0, -1)

        def rename(self, oldpath, newpath):
            old, new = self._entry(oldpath, "delete"), self._entry(newpath, "create")
            if os.path.lexists(new):
                raise asyncssh.SFTPFileAlreadyExists("file already exists")
            os.rename(old, new)

        def posix_rename(self, oldpath, newpath):
            old, new = self._entry(oldpath, "delete"), self._entry(newpath, "create")
            replaced = os.lstat(new) if os.path.lexists(new) else None
            if replaced is not None:
                self._entry(newpath, "update")
                moved = os.lstat(old)
                if (moved.st_dev, moved.st_ino) == (replaced.st_dev, replaced.st_ino):
                    return  # onto itself: nothing happens, nothing is freed
            os.replace(old, new)
            if replaced is not None:
                devfs.adjust(-_counted_size(replaced), -1)

        def symlink(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("symbolic links are not allowed")

        def link(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("hard links are not allowed")

    return DeviceSFTPServer
