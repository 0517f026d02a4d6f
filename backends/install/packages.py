"""The package store: the repository of added RPMs, the package root they are
activated into, and which packages are active and committed.

Layout under STATE_DIR/install/: `repo/<nvra>.rpm` (added packages),
`root/` (the package root), `state.json`. Every operation runs off the event
loop, checks everything before it changes anything, and swaps in a new state
only once that state is persisted.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Callable

from backends.engine.software import fingerprint, openpgp, rootfs, rpm
from backends.engine.errors import EngineError
from backends.ownership.policy import Policy
from yangcore.datastore import atomic_write

log = logging.getLogger(__name__)

ORIGINS = ("xr", "partner", "owner")


class InstallError(EngineError):
    pass


def _empty_state() -> dict:
    return {"next-op": 1, "packages": {}, "active": [], "committed": [], "operations": {},
            "run-time": {}, "run-time-at": None}


class PackageStore:
    def __init__(self, base: Path, package_keys: dict[str, tuple[str, openpgp.PublicKey]],
                 policy: Callable[[], Policy] = Policy):
        self.base = base
        self.repo = base / "repo"
        self.root = base / "root"
        self.path = base / "state.json"
        self.package_keys = package_keys  # OpenPGP key id -> (origin, key)
        self.policy = policy  # what device ownership decides now
        for d in (self.repo, self.root):
            d.mkdir(parents=True, exist_ok=True)
        self.state = json.loads(self.path.read_text()) if self.path.exists() else _empty_state()

    # -- reading

    def package(self, nvra: str) -> dict:
        return self.state["packages"][nvra]

    def lookup(self, name: str) -> str:
        """The package a user's name means: name-version-release.arch, name-version-release or name."""
        pkgs = self.state["packages"]
        name = name.removesuffix(".rpm")
        if name in pkgs:
            return name
        hits = [k for k, p in pkgs.items()
                if name in (f"{p['name']}-{p['version']}-{p['release']}", p["name"])]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise InstallError("package-ambiguous", f"{name!r} matches {len(hits)} added packages: "
                               f"{', '.join(sorted(hits))}; give the full name", tag="invalid-value")
        raise InstallError("package-not-added", f"package {name!r} has not been added", tag="data-missing")

    def owned_paths(self, nvras, exclude: str | None = None) -> set[str]:
        out: set[str] = set()
        for n in nvras:
            if n != exclude:
                p = self.state["packages"][n]
                out.update(p["files"])
                out.update(p["dirs"])
        return out

    # -- operations (each runs in a worker thread, under the backend's lock)

    def add(self, rpm_paths: list[Path]) -> tuple[int, list[str]]:
        """Copy every package into the repository and check the copies completely (what is
        checked is what is kept: the user's file may change meanwhile), then record them."""
        made: list[Path] = []  # files this operation put in the repository
        try:
            return self._add(rpm_paths, made)
        except BaseException:
            for p in made:
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass  # the repository is not writable: nothing was copied there
            raise

    def _add(self, rpm_paths: list[Path], made: list[Path]) -> tuple[int, list[str]]:
        checked = []
        for path in rpm_paths:
            tmp = self._copy_in(path)
            made.append(tmp)
            try:
                with open(tmp, "rb") as f:
                    pkg = rpm.read_package(f)
                    origin = self._origin(pkg)
                    checked.append((tmp, pkg, origin, _install_fingerprint(f, pkg)))
            except rpm.RpmError as exc:
                tag = "operation-failed" if exc.code == "owner-signature-required" else "invalid-value"
                raise InstallError(exc.code, f"{path.name}: {exc.message}", tag=tag) from None
        state = copy.deepcopy(self.state)
        op = state["next-op"]
        nvras = []
        for _tmp, pkg, _origin, _fp in checked:
            if pkg.nvra in state["packages"] or pkg.nvra in nvras:
                raise InstallError("package-exists", f"{pkg.nvra} is already added", tag="data-exists")
            nvras.append(pkg.nvra)
        for tmp, pkg, origin, install_fp in checked:
            dest = self.repo / f"{pkg.nvra}.rpm"
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                raise _storage_error("the package repository", exc) from None
            made.append(dest)
            state["packages"][pkg.nvra] = {
                "name": pkg.name, "version": pkg.version, "release": pkg.release, "epoch": pkg.epoch,
                "arch": pkg.arch, "gpg-key-id": pkg.gpg_key_id,
                "origin": origin,
                "install-time": install_fp, "added-op": op,
                "files": [e.path for e in pkg.files if not e.ghost and not stat.S_ISDIR(e.mode)],
                "dirs": [e.path for e in pkg.files if not e.ghost and stat.S_ISDIR(e.mode)],
            }
        state["operations"][str(op)] = nvras
        state["next-op"] = op + 1
        self._commit(state)
        made.clear()
        for _tmp, pkg, _origin, install_fp in checked:
            log.info("install add: %s (op %d, install-time fingerprint %s)", pkg.nvra, op, install_fp)
        return op, nvras

    def _copy_in(self, path: Path) -> Path:
        """A private copy of a user's file in the repository, under a temporary name."""
        try:
            src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise InstallError("file-not-found", f"{path.name}: {exc.strerror}", tag="data-missing") from None
        with open(src, "rb") as f:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise InstallError("not-a-file", f"{path.name} is not a regular file", tag="invalid-value")
            try:
                fd, tmp = tempfile.mkstemp(dir=self.repo, prefix=".add-")
            except OSError as exc:
                raise _storage_error("the package repository", exc) from None
            try:
                os.fchmod(fd, 0o644)
                with open(fd, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            except OSError as exc:
                os.unlink(tmp)
                raise _storage_error("the package repository", exc) from None
        return Path(tmp)

    def _origin(self, pkg: rpm.RpmPackage) -> str:
        """xr or partner when a profile key verifies the header signature; owner otherwise.
        A signature that a known key fails to verify is refused, and under the strict
        security profile an owner package must be signed by an onboarded owner key."""
        known = self.package_keys.get(pkg.gpg_key_id)
        if known is not None:
            origin, key = known
            self._check_signature(pkg, key)
            return origin
        policy = self.policy()
        owner_key = policy.owner_package_keys.get(pkg.gpg_key_id)
        if owner_key is not None:
            self._check_signature(pkg, owner_key)
        elif policy.security_profile == "strict":
            raise rpm.RpmError("owner-signature-required", f"{pkg.nvra}: the strict security profile needs owner "
                               "packages signed by a key from a customer key package (GPGKEY); "
                               + ("it is unsigned" if pkg.gpg_key_id == "0" else f"key {pkg.gpg_key_id} is unknown"))
        return "owner"

    @staticmethod
    def _check_signature(pkg: rpm.RpmPackage, key: openpgp.PublicKey) -> None:
        if pkg.header_signature is None:
            raise rpm.RpmError("signature-invalid", f"{pkg.nvra} has no header signature to check "
                               f"against key {pkg.gpg_key_id}")
        try:
            openpgp.verify(openpgp.parse_signature(pkg.header_signature), pkg.header_blob, key)
        except openpgp.OpenPGPError as exc:
            raise rpm.RpmError("signature-invalid", f"{pkg.nvra}: signature by key {pkg.gpg_key_id}: {exc}") from None

    def activate(self, nvras: list[str]) -> int:
        state = copy.deepcopy(self.state)
        todo = [n for n in dict.fromkeys(nvras) if n not in state["active"]]
        if not todo:
            raise InstallError("already-active", f"{', '.join(nvras)}: already active", tag="data-exists")
        names = {self.package(n)["name"] for n in todo}
        if len(names) < len(todo):
            raise InstallError("package-conflict", "two versions of one package cannot be active together")
        # a new version of an active package replaces it
        replaced = [a for a in state["active"] if self.package(a)["name"] in names]
        keep = [a for a in state["active"] if a not in replaced]
        taken = self.owned_paths(keep)
        for n in todo:
            clash = taken.intersection(self.package(n)["files"])
            if clash:
                raise InstallError("file-conflict", f"{n}: {min(clash)} belongs to another active package")
            taken.update(self.package(n)["files"])
        staged = []
        try:
            for n in todo:  # everything is read and checked before the root changes
                staged.append(self._stage(n))
            with self._root_changes() as changes:
                for old in replaced:
                    self._remove_files(changes, old, keep + todo)
                for n, tmp in zip(todo, staged):
                    self._place(changes, n, tmp)
                state["active"] = keep + todo
                op = state["next-op"]
                state["next-op"] = op + 1
                state["operations"][str(op)] = todo
                for n in todo + replaced:
                    state["run-time"].pop(n, None)
                self._commit(state)
        finally:
            for tmp in staged:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("install activate: %s (op %d)", ", ".join(todo), op)
        return op

    def deactivate(self, nvras: list[str]) -> int:
        state = copy.deepcopy(self.state)
        todo = list(dict.fromkeys(nvras))
        inactive = [n for n in todo if n not in state["active"]]
        if inactive:
            raise InstallError("package-not-active", f"{', '.join(inactive)}: not active", tag="data-missing")
        rest = [a for a in state["active"] if a not in todo]
        with self._root_changes() as changes:
            for n in todo:
                self._remove_files(changes, n, rest)
                state["run-time"].pop(n, None)
            state["active"] = rest
            op = state["next-op"]
            state["next-op"] = op + 1
            state["operations"][str(op)] = todo
            self._commit(state)
        log.info("install deactivate: %s (op %d)", ", ".join(todo), op)
        return op

    def commit(self) -> int:
        state = copy.deepcopy(self.state)
        state["committed"] = list(state["active"])
        op = state["next-op"]
        state["next-op"] = op + 1
        self._commit(state)
        log.info("install commit: %d package(s) committed (op %d)", len(state["committed"]), op)
        return op

    def remove(self, nvras: list[str]) -> int:
        state = copy.deepcopy(self.state)
        todo = list(dict.fromkeys(nvras))
        busy = [n for n in todo if n in state["active"] or n in state["committed"]]
        if busy:
            raise InstallError("package-in-use", f"{', '.join(busy)}: active or committed; deactivate "
                               "and commit first", tag="in-use")
        for n in todo:
            del state["packages"][n]
        op = state["next-op"]
        state["next-op"] = op + 1
        self._commit(state)
        for n in todo:
            (self.repo / f"{n}.rpm").unlink(missing_ok=True)
        log.info("install remove: %s (op %d)", ", ".join(todo), op)
        return op

    def inactive(self) -> list[str]:
        return [n for n in self.state["packages"]
                if n not in self.state["active"] and n not in self.state["committed"]]

    def operation(self, op_id: int) -> list[str]:
        nvras = self.state["operations"].get(str(op_id))
        if nvras is None:
            raise InstallError("unknown-install-id", f"no install operation {op_id} added or activated packages",
                               tag="data-missing")
        return [n for n in nvras if n in self.state["packages"]]

    def run_time(self, nvras: list[str]) -> dict[str, str]:
        """Recompute run-time fingerprints from the files on disk."""
        out = {}
        for n in nvras:
            p = self.package(n)
            foreign = self.owned_paths(self.state["active"], exclude=n)
            out[n] = fingerprint.run_time(self.root, p["files"] + p["dirs"], p["dirs"], foreign)
        return out

    def record_run_time(self, fps: dict[str, str], at: datetime) -> None:
        state = copy.deepcopy(self.state)
        current = {n: fp for n, fp in fps.items() if n in state["active"]}
        state["run-time"].update(current)
        state["run-time-at"] = at.isoformat()
        self._commit(state)

    # -- internals

    def _commit(self, state: dict) -> None:
        try:
            atomic_write(self.path, json.dumps(state, indent=1).encode(), mode=0o600)
        except OSError as exc:
            raise _storage_error("the install state", exc) from None
        self.state = state

    def _stage(self, nvra: str) -> Path:
        """The package's files extracted into a new directory beside the root."""
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.base))
        except OSError as exc:
            raise _storage_error(f"{nvra}'s files", exc) from None
        try:
            with _DirFd(tmp) as tmp_fd, open(self.repo / f"{nvra}.rpm", "rb") as f:
                pkg = rpm.read_package(f)
                for item in rpm.payload(f, pkg):
                    _extract(tmp_fd, item)
        except rpm.RpmError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InstallError(exc.code, f"{nvra}: the repository copy is damaged: {exc.message}") from None
        except rootfs.PathBlocked as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _blocked(nvra, exc) from None
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _storage_error(f"{nvra}'s files", exc) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    @contextlib.contextmanager
    def _root_changes(self):
        """Changes to the package root that are undone when the operation fails,
        its state write included."""
        try:
            aside = Path(tempfile.mkdtemp(prefix=".aside-", dir=self.base))
        except OSError as exc:
            raise _storage_error("the package root", exc) from None
        changes = _RootChanges(self.root, aside)
        try:
            yield changes
        except BaseException as exc:
            changes.undo()
            if isinstance(exc, rootfs.PathBlocked):
                raise _blocked("", exc) from None
            if isinstance(exc, OSError):
                raise _storage_error("the package root", exc) from None
            raise
        finally:
            changes.close()
            shutil.rmtree(aside, ignore_errors=True)

    def _place(self, changes: _RootChanges, nvra: str, tmp: Path) -> None:
        p = self.package(nvra)
        try:
            with _DirFd(tmp) as tmp_fd:
                for d in sorted(p["dirs"], key=len):
                    comps = rootfs.parts(d)
                    if comps:  # the root's own mode is not a package's to set
                        changes.make_dir(comps, stat.S_IMODE(rootfs.lstat(tmp_fd, comps).st_mode))
                for f in p["files"]:
                    changes.place(rootfs.parts(f), tmp_fd)
        except rootfs.PathBlocked as exc:
            raise _blocked(nvra, exc) from None
        except IsADirectoryError as exc:
            raise InstallError("file-conflict", f"{nvra}: {exc.filename} is a directory in the package root") from None

    def _remove_files(self, changes: _RootChanges, nvra: str, others: list[str]) -> None:
        p = self.package(nvra)
        still = self.owned_paths(others)
        for f in p["files"]:
            if f not in still:
                changes.remove(rootfs.parts(f))
        for d in sorted(p["dirs"], key=len, reverse=True):
            if d not in still and rootfs.parts(d):
                changes.remove_dir(rootfs.parts(d))


class _DirFd:
    """A descriptor of a directory of the server's own (the root or a staging directory)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


class _RootChanges:
    """Mkdirs, mode changes, placed files and removed files in the package root, each with
    its undo. Every path is walked from the root's descriptor without following a link.
    A removed or replaced file is moved aside (a rename: no space needed), so undoing
    restores it and nothing is lost until the new state is written."""

    def __init__(self, root: Path, aside: Path):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.aside_fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.undos: list[tuple[str, Callable[[], None]]] = []
        self.moved = 0

    def close(self) -> None:
        os.close(self.root_fd)
        os.close(self.aside_fd)

    def undo(self) -> None:
        for what, fn in reversed(self.undos):
            try:
                fn()
            except (OSError, rootfs.PathBlocked) as exc:
                log.error("package root: cannot undo %s: %s", what, exc)
        self.undos.clear()

    def _in_parent(self, comps: list[str], fn, create: bool = False):
        """fn(parent descriptor, name) for the path comps."""
        created: list[str] = []
        try:
            parent = rootfs.open_dir(self.root_fd, comps[:-1], 0o755 if create else None, created)
        finally:
            self._made(created)
        try:
            return fn(parent, comps[-1])
        finally:
            os.close(parent)

    def _made(self, created: list[str]) -> None:
        for d in created:
            self.undos.append((f"mkdir {d}", lambda d=d: self._in_parent(rootfs.parts(d), _rmdir)))

    def make_dir(self, comps: list[str], mode: int) -> None:
        created: list[str] = []
        try:
            fd = rootfs.open_dir(self.root_fd, comps, 0o755, created)
        finally:
            self._made(created)
        try:
            old = stat.S_IMODE(os.fstat(fd).st_mode)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        self.undos.append((f"chmod /{'/'.join(comps)}", lambda: self._chmod(comps, old)))

    def _chmod(self, comps: list[str], mode: int) -> None:
        fd = rootfs.open_dir(self.root_fd, comps)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _aside(self, parent: int, comps: list[str]) -> None:
        """Move the file at comps (in parent) aside, to be put back by undo."""
        slot = str(self.moved)
        self.moved += 1
        os.rename(comps[-1], slot, src_dir_fd=parent, dst_dir_fd=self.aside_fd)
        self.undos.append((f"remove /{'/'.join(comps)}", lambda: self._in_parent(
            comps, lambda p, n: os.rename(slot, n, src_dir_fd=self.aside_fd, dst_dir_fd=p))))

    def place(self, comps: list[str], tmp_fd: int) -> None:
        """Move the staged file at comps into the root, over anything but a directory."""
        def put(parent: int, name: str) -> None:
            st = _lstat_at(parent, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", "/" + "/".join(comps))
            if st is not None:
                self._aside(parent, comps)
            src = rootfs.open_dir(tmp_fd, comps[:-1])
            try:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=parent)
            finally:
                os.close(src)
            self.undos.append((f"place /{'/'.join(comps)}",
                               lambda: self._in_parent(comps, lambda p, n: os.unlink(n, dir_fd=p))))
        self._in_parent(comps, put, create=True)

    def remove(self, comps: list[str]) -> None:
        """Move the file at comps aside; a path through a link or to a directory is left alone."""
        def take(parent: int, name: str) -> None:
            st = _lstat_at(parent, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._aside(parent, comps)
        try:
            self._in_parent(comps, take)
        except (FileNotFoundError, rootfs.PathBlocked):
            pass  # nothing of the package's is there: never follow a link to find it

    def remove_dir(self, comps: list[str]) -> None:
        def take(parent: int, name: str) -> None:
            st = _lstat_at(parent, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                return  # not empty: something else lives there
            mode = stat.S_IMODE(st.st_mode)
            self.undos.append((f"rmdir /{'/'.join(comps)}", lambda: self._remake(comps, mode)))
        try:
            self._in_parent(comps, take)
        except (FileNotFoundError, rootfs.PathBlocked):
            pass

    def _remake(self, comps: list[str], mode: int) -> None:
        self._in_parent(comps, lambda p, n: os.mkdir(n, 0o700, dir_fd=p))
        self._chmod(comps, mode)


def _rmdir(parent: int, name: str) -> None:
    os.rmdir(name, dir_fd=parent)


def _lstat_at(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return None


def _storage_error(what: str, exc: OSError) -> InstallError:
    return InstallError("storage-failed", f"cannot write {what}: {exc.strerror or exc}")


def _blocked(nvra: str, exc: rootfs.PathBlocked) -> InstallError:
    who = f"{nvra}: " if nvra else ""
    if exc.kind == "link":
        return InstallError("path-escape", f"{who}{exc.path} is a symbolic link; the package root's paths are "
                            "never followed through links")
    return InstallError("file-conflict", f"{who}{exc.path} is a file where a directory is needed")


def _extract(tmp_fd: int, item: rpm.PayloadItem) -> None:
    e = item.entry
    comps = rootfs.parts(e.path)
    if not comps:
        return  # the root itself
    parent = rootfs.open_dir(tmp_fd, comps[:-1], 0o700)
    name = comps[-1]
    try:
        if stat.S_ISDIR(e.mode):
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                pass  # made earlier as the parent of an entry before it
            fd = rootfs.open_dir(parent, [name])
        elif stat.S_ISLNK(e.mode):
            os.symlink(e.link_to, name, dir_fd=parent)
            return
        elif stat.S_ISREG(e.mode):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
        else:
            raise rpm.RpmError("rpm-unsupported", f"{e.path}: device and fifo files are not installed")
        try:
            if item.chunks is not None:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    for chunk in item.chunks:
                        out.write(chunk)
            os.fchmod(fd, stat.S_IMODE(e.mode))
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def _install_fingerprint(f, pkg: rpm.RpmPackage) -> str:
    """The fingerprint of the files as the payload installs them; reading the payload checks it whole."""
    records = []
    for item in rpm.payload(f, pkg):
        e = item.entry
        if item.chunks is not None:
            h = hashlib.sha256()
            for chunk in item.chunks:
                h.update(chunk)
            records.append((e.path, e.mode, h.hexdigest()))
        elif stat.S_ISLNK(e.mode):
            records.append((e.path, e.mode, hashlib.sha256(e.link_to.encode()).hexdigest()))
        elif stat.S_ISDIR(e.mode) or stat.S_ISREG(e.mode):
            records.append((e.path, e.mode, fingerprint.EMPTY))
        else:
            raise rpm.RpmError("rpm-unsupported", f"{e.path}: device and fifo files are not installed")
    return fingerprint.combine(records)
