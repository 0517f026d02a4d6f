"""The package store: the repository of added RPMs, the package root they are
activated into, and which packages are active and committed.

Layout under STATE_DIR/install/: `repo/<nvra>.rpm` (added packages),
`root/` (the package root), `state.json`. Every operation runs off the event
loop, checks everything before it changes anything, and swaps in a new state
only once that state is persisted.
"""
from __future__ import annotations

import copy
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

from backends.engine import fingerprint, openpgp, rpm
from backends.engine.errors import EngineError
from backends.ownership.policy import Policy
from nc_server.datastore import atomic_write

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
        """Check every package completely, then copy them into the repository and record them."""
        checked = []
        for path in rpm_paths:
            try:
                with open(path, "rb") as f:
                    pkg = rpm.read_package(f)
                    origin = self._origin(pkg)
                    checked.append((path, pkg, origin, _install_fingerprint(f, pkg)))
            except rpm.RpmError as exc:
                tag = "operation-failed" if exc.code == "owner-signature-required" else "invalid-value"
                raise InstallError(exc.code, f"{path.name}: {exc.message}", tag=tag) from None
        state = copy.deepcopy(self.state)
        op = state["next-op"]
        nvras = []
        for _path, pkg, _origin, _fp in checked:
            if pkg.nvra in state["packages"] or pkg.nvra in nvras:
                raise InstallError("package-exists", f"{pkg.nvra} is already added", tag="data-exists")
            nvras.append(pkg.nvra)
        copied = []
        try:
            for path, pkg, origin, install_fp in checked:
                dest = self.repo / f"{pkg.nvra}.rpm"
                copied.append(dest)
                shutil.copyfile(path, dest)
                os.chmod(dest, 0o644)
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
        except OSError:
            for dest in copied:
                dest.unlink(missing_ok=True)
            raise
        for _path, pkg, _origin, install_fp in checked:
            log.info("install add: %s (op %d, install-time fingerprint %s)", pkg.nvra, op, install_fp)
        return op, nvras

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
        staged = [self._stage(n) for n in todo]  # everything is read and checked before the root changes
        try:
            for old in replaced:
                self._remove_files(old, keep + todo)
            for n, tmp in zip(todo, staged):
                self._place(n, tmp)
        finally:
            for tmp in staged:
                shutil.rmtree(tmp, ignore_errors=True)
        state["active"] = keep + todo
        op = state["next-op"]
        state["next-op"] = op + 1
        state["operations"][str(op)] = todo
        for n in todo + replaced:
            state["run-time"].pop(n, None)
        self._commit(state)
        log.info("install activate: %s (op %d)", ", ".join(todo), op)
        return op

    def deactivate(self, nvras: list[str]) -> int:
        state = copy.deepcopy(self.state)
        todo = list(dict.fromkeys(nvras))
        inactive = [n for n in todo if n not in state["active"]]
        if inactive:
            raise InstallError("package-not-active", f"{', '.join(inactive)}: not active", tag="data-missing")
        rest = [a for a in state["active"] if a not in todo]
        for n in todo:
            self._remove_files(n, rest)
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
        atomic_write(self.path, json.dumps(state, indent=1).encode(), mode=0o600)
        self.state = state

    def _stage(self, nvra: str) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.base))
        try:
            with open(self.repo / f"{nvra}.rpm", "rb") as f:
                pkg = rpm.read_package(f)
                for item in rpm.payload(f, pkg):
                    _extract(tmp, item)
        except rpm.RpmError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InstallError(exc.code, f"{nvra}: the repository copy is damaged: {exc.message}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _place(self, nvra: str, tmp: Path) -> None:
        p = self.package(nvra)
        for d in sorted(p["dirs"], key=len):
            dest = _under(self.root, d)
            dest.mkdir(parents=True, exist_ok=True)
            os.chmod(dest, stat.S_IMODE(os.lstat(_under(tmp, d)).st_mode))
        for f in p["files"]:
            dest = _under(self.root, f)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_under(tmp, f), dest)

    def _remove_files(self, nvra: str, others: list[str]) -> None:
        p = self.package(nvra)
        still = self.owned_paths(others)
        for f in p["files"]:
            if f not in still:
                _under(self.root, f).unlink(missing_ok=True)
        for d in sorted(p["dirs"], key=len, reverse=True):
            if d not in still:
                try:
                    _under(self.root, d).rmdir()
                except OSError:
                    pass  # not empty: something else lives there


def _under(base: Path, path: str) -> Path:
    """base/path, refused when a symbolic link on the way leads out of base."""
    dest = base / path.lstrip("/")
    real_base = os.path.realpath(base)
    parent = os.path.realpath(dest.parent)
    if parent != real_base and not parent.startswith(real_base + os.sep):
        raise InstallError("path-escape", f"{path} would be written outside the package root")
    return dest


def _extract(tmp: Path, item: rpm.PayloadItem) -> None:
    e = item.entry
    dest = _under(tmp, e.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISDIR(e.mode):
        dest.mkdir(exist_ok=True)
    elif stat.S_ISLNK(e.mode):
        os.symlink(e.link_to, dest)
    elif stat.S_ISREG(e.mode):
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in item.chunks:
                out.write(chunk)
    else:
        raise rpm.RpmError("rpm-unsupported", f"{e.path}: device and fifo files are not installed")
    if not stat.S_ISLNK(e.mode):
        os.chmod(dest, stat.S_IMODE(e.mode))


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
