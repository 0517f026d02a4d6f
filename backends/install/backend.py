"""The install backend: IOS XR install actions and package state, RPM
fingerprints, and verification against known-good values.

Install operations and fingerprint collections take one lock and run in a
worker thread, so sessions keep answering while a package is read, extracted
or hashed. Readers see the last committed state.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime

from yangcore.backend import Backend, ConfigDiff, Services, read_device_file, register
from yangcore.datastore import atomic_write

from backends.device.profile import load_profile
from backends.engine.errors import EngineError
from backends.ownership import policy
from . import kgv
from .packages import InstallError, PackageStore

log = logging.getLogger(__name__)

OPER_MODULES = ("Cisco-IOS-XR-spirit-install-instmgr-oper", "Cisco-IOS-XR-install-oper")
ACT = "/Cisco-IOS-XR-spirit-install-act:"
FINGERPRINTS = "/Cisco-IOS-XR-install-cfg:install/fingerprints"
MAX_KGV_FILE = 16 * 1024 * 1024
LABEL = "trustplane-1.0"


class InstallBackend(Backend):
    HOUR = 3600.0  # seconds in a configured "hour"

    def __init__(self, services: Services):
        super().__init__(
            name="install",
            modules=(*OPER_MODULES, "Cisco-IOS-XR-spirit-install-act", "Cisco-IOS-XR-install-cfg",
                     "trustplane-install"),
            state={**{f"/{m}:install": (lambda m=m: self.packages(m)) for m in OPER_MODULES},
                   "/trustplane-install:install-integrity": self.integrity},
            config=(FINGERPRINTS,),
            rpcs={ACT + "install-add": self.install_add,
                  ACT + "install-activate": self.install_activate,
                  ACT + "install-deactivate": self.install_deactivate,
                  ACT + "install-commit": self.install_commit,
                  ACT + "install-remove": self.install_remove,
                  ACT + "install-verify": self.install_verify,
                  "/trustplane-install:load-known-good-values": self.load_kgv,
                  "/trustplane-install:verify-packages": self.verify_packages},
        )
        self.services = services
        profile = load_profile(services.state_dir)
        self.nodes = [n.location for n in profile.nodes]
        base = services.state_dir / "install"
        self.store = PackageStore(base, profile.package_keys, lambda: policy.read(services.state_dir))
        self.kgv_path = base / "kgv.json"
        self.kgv_info, self.kgv = self._load_kgv_store()
        self.lock = asyncio.Lock()
        self.collecting = False
        self.drifted: set[str] = set()
        self.frequency: int | None = None
        self._config_changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._spawn(self._periodic())
        if any(n not in self.store.state["run-time"] for n in self.store.state["active"]):
            self._spawn(self.collect())

    # -- state

    def packages(self, module: str) -> dict:
        sets = {}
        for which in ("active", "committed"):
            body = self._set(self.store.state[which])
            sets[which] = {"nodes": {"node": [{"node": n, **body} for n in self.nodes]}, "summary": body}
        return {f"{module}:install": {"packages": sets}}

    def _set(self, nvras: list[str]) -> dict:
        st = self.store.state
        at = st["run-time-at"]
        packages = []
        for n in nvras:
            p = st["packages"][n]
            packages.append({
                "rpm-fingerprint": {"rpm-fingerprint-install-time": p["install-time"],
                                    "rpm-fingerprint-run-time": st["run-time"].get(n, "0")},
                "name": p["name"], "architecture": p["arch"], "version": p["version"], "release": p["release"],
                "epoch": p["epoch"], "origin": p["origin"], "gpg-key-id": p["gpg-key-id"]})
        return {"rpm-fingerprint-status": "generation-in-progress" if self.collecting else "generation-up-to-date",
                "rpm-fingerprint-timestamp": datetime.fromisoformat(at).strftime("%a %b %d %H:%M:%S %Y") if at else None,
                "label": LABEL, "xr-packages-hash": self._set_hash(nvras, "xr"),
                "full-packages-hash": self._set_hash(nvras, None), "package": packages}

    def _set_hash(self, nvras: list[str], origin: str | None) -> str:
        """SHA-256 over `<nvra> <install-time fingerprint>\\n` lines of the set, sorted by nvra."""
        h = hashlib.sha256()
        for n in sorted(nvras):
            p = self.store.state["packages"][n]
            if origin is None or p["origin"] == origin:
                h.update(f"{n} {p['install-time']}\n".encode())
        return h.hexdigest()

    def integrity(self) -> dict:
        info = self.kgv_info
        return {"trustplane-install:install-integrity": {"known-good-values": None if info is None else {
            "source": info["source"], "loaded-at": info["loaded-at"], "entries": len(self.kgv)}}}

    # -- install actions

    async def _run(self, fn, *args):
        async with self.lock:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @staticmethod
    def _op(op: int) -> dict:
        return {"op-id": op}

    async def install_add(self, session, params: dict) -> dict:
        base = params.get("packagepath")
        if base is None:
            raise EngineError("no-packagepath", "install-add needs packagepath (a device directory or .rpm file)",
                              "missing-element")
        names = params.get("packagename") or []
        devpaths = [base.rstrip("/") + "/" + n for n in names] if names else [base]
        paths = []
        for p in devpaths:
            real = self.services.devfs.resolve(p, must_exist=True, user=session.username)
            if not real.is_file():
                raise EngineError("not-a-file", f"{p!r} is not a file", "invalid-value")
            paths.append(real)
        op, _nvras = await self._run(self.store.add, paths)
        return self._op(op)

    def _selected(self, params: dict, default: list[str] | None = None) -> list[str]:
        names = (params.get("packages") or {}).get("packagename") or []
        ids = (params.get("ids") or {}).get("id-no") or []
        chosen = [self.store.lookup(n) for n in names]
        for i in ids:
            if not i.isascii() or not i.isdigit():
                raise EngineError("invalid-install-id", f"install ID {i!r} is not a number", "invalid-value")
            chosen += self.store.operation(int(i))
        if not chosen and default is None:
            raise EngineError("no-packages", "name packages (packages/packagename) or install IDs (ids/id-no)",
                              "missing-element")
        return list(dict.fromkeys(chosen)) or default

    async def install_activate(self, session, params: dict) -> dict:
        op = await self._run(self.store.activate, self._selected(params))
        self._spawn(self.collect())
        return self._op(op)

    async def install_deactivate(self, session, params: dict) -> dict:
        op = await self._run(self.store.deactivate, self._selected(params))
        return self._op(op)

    async def install_commit(self, session, params: dict) -> dict:
        return self._op(await self._run(self.store.commit))

    async def install_remove(self, session, params: dict) -> dict:
        if "inactive" in params:
            chosen = self._selected(params, default=self.store.inactive())
            if not chosen:
                raise EngineError("no-packages", "no inactive packages to remove", "data-missing")
        else:
            chosen = self._selected(params)
        return self._op(await self._run(self.store.remove, chosen))

    async def install_verify(self, session, params: dict) -> None:
        unknown = [loc for loc in params.get("location") or [] if loc not in self.nodes]
        if unknown:
            raise EngineError("unknown-node", f"no node {unknown[0]!r}", "invalid-value")
        await self.collect(for_rpc=True)
        return None

    # -- run-time fingerprints

    async def collect(self, nvras: list[str] | None = None, announce: bool = True,
                      for_rpc: bool = False) -> dict[str, str]:
        """Recompute run-time fingerprints and record them; a new drift raises a
        notification unless the caller reports it itself (announce=False). A failure is
        logged, and raised as an EngineError when an RPC asked for the collection."""
        async with self.lock:
            chosen = list(self.store.state["active"]) if nvras is None else nvras
            self.collecting = True
            try:
                loop = asyncio.get_running_loop()
                fps = await loop.run_in_executor(None, self.store.run_time, chosen)
                await loop.run_in_executor(None, self.store.record_run_time, fps, self.services.clock())
            except Exception as exc:  # the next collection tries again
                log.error("run-time fingerprint collection failed: %s", exc)
                if not for_rpc:
                    return {}
                if isinstance(exc, InstallError):
                    raise
                raise EngineError("fingerprint-failed",
                                  f"the run-time fingerprints could not be computed: {exc}") from None
            finally:
                self.collecting = False
        for n, fp in fps.items():
            p = self.store.state["packages"].get(n)
            if p is None:
                continue
            if fp == p["install-time"]:
                self.drifted.discard(n)
            elif n not in self.drifted:
                self.drifted.add(n)
                if not announce:
                    continue
                log.warning("%s: run-time fingerprint %s differs from the install-time fingerprint %s",
                            n, fp, p["install-time"])
                self._notify(n, "run-time-drift", fp, "collection")
        return fps

    async def _periodic(self) -> None:
        while True:
            if self.frequency is None:
                await self._config_changed.wait()
                self._config_changed.clear()
                continue
            try:
                await asyncio.wait_for(self._config_changed.wait(),
                                       self.services.real_seconds(self.frequency * self.HOUR))
                self._config_changed.clear()
            except asyncio.TimeoutError:
                await self.collect()

    def apply(self, diff: ConfigDiff) -> None:
        node = diff.new.find_path(FINGERPRINTS) if diff.new is not None else None
        freq = None
        if node is not None:
            leaf = diff.new.find_path(FINGERPRINTS + "/frequency")
            freq = int(leaf.value()) if leaf is not None else 1
        if freq != self.frequency:
            self.frequency = freq
            self._config_changed.set()
            log.info("run-time fingerprints: %s", f"every {freq} hour(s)" if freq else "at activation and on demand")

    # -- known-good values

    def _load_kgv_store(self):
        if not self.kgv_path.exists():
            return None, {}
        doc = json.loads(self.kgv_path.read_text())
        return doc["info"], kgv.parse(json.dumps({"packages": doc["packages"]}).encode())

    async def load_kgv(self, session, params: dict) -> dict:
        path = params["path"]
        data, source = read_device_file(self.services.devfs, path, MAX_KGV_FILE, session=session)
        try:
            entries = kgv.parse(data)
        except kgv.KgvError as exc:
            raise EngineError("kgv-malformed", f"{path}: {exc}", "invalid-value") from None
        info = {"source": source, "loaded-at": self.services.clock().isoformat()}
        doc = {"info": info, "packages": [
            {"name": k[0], "version": k[1], "release": k[2], "fingerprint": fp, **({"architecture": k[3]} if k[3] else {})}
            for k, fp in entries.items()]}
        try:
            atomic_write(self.kgv_path, json.dumps(doc).encode(), mode=0o600)
        except OSError as exc:
            raise EngineError("storage-failed", f"cannot write the known-good values: {exc.strerror}") from None
        self.kgv_info, self.kgv = info, entries
        log.info("known-good values loaded from %s: %d package(s)", source, len(entries))
        return {"entries": len(entries)}

    async def verify_packages(self, session, params: dict) -> dict:
        active = self.store.state["active"]
        chosen = list(active)
        if params.get("package"):
            chosen = list(dict.fromkeys(self.store.lookup(n) for n in params["package"]))
            idle = [n for n in chosen if n not in active]
            if idle:
                raise EngineError("package-not-active", f"{idle[0]} is not active", "data-missing")
        fps = await self.collect(chosen, announce=False, for_rpc=True)
        out = []
        for n in chosen:
            p = self.store.state["packages"][n]
            known = kgv.lookup(self.kgv, p["name"], p["version"], p["release"], p["arch"])
            result = kgv.verdict(known, p["install-time"], fps[n])
            if result in ("install-time-mismatch", "run-time-drift"):
                log.warning("%s: verification failed: %s", n, result)
                self._notify(n, result, fps[n], "verify", known)
            out.append(self._verdict(n, result, fps[n], known))
        return {"package": out}

    def _verdict(self, nvra: str, result: str, run_time: str, known: str | None) -> dict:
        p = self.store.state["packages"][nvra]
        return {"name": p["name"], "version": p["version"], "release": p["release"], "architecture": p["arch"],
                "result": result, "known-good-value": known, "install-time": p["install-time"],
                "run-time": run_time}

    def _notify(self, nvra: str, result: str, run_time: str, by: str, known: str | None = None) -> None:
        if self.services.notify is not None:
            self.services.notify("/trustplane-install:package-fingerprint-mismatch",
                                 {**self._verdict(nvra, result, run_time, known), "detected-by": by})

    # -- lifecycle

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


register("install")(InstallBackend)
