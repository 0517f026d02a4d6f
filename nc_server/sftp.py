"""The SFTP/SCP view of the device filesystem, for the SSH server."""
from __future__ import annotations

import os
import posixpath
import secrets
import stat

import asyncssh

from yangcore.devfs import DEVICES, DeviceFS, DevFSError, counted_size

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
                    devfs.adjust(-counted_size(replaced), -1)

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
            size = counted_size(os.lstat(mapped))
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
                devfs.adjust(-counted_size(replaced), -1)

        def symlink(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("symbolic links are not allowed")

        def link(self, oldpath, newpath):
            raise asyncssh.SFTPPermissionDenied("hard links are not allowed")

    return DeviceSFTPServer
