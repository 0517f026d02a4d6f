"""The ownership backend: installing ownership vouchers and the owner certificate,
customer key packages, consent-token clearing and reimage protection.

State lives in STATE_DIR/ownership/state.json. Every operation checks everything first
and then swaps in the new state whole: a failure leaves the state as it was.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from yangcore.backend import Backend, Services, read_device_file, register
from yangcore.datastore import atomic_write

from backends.device.profile import load_profile
from backends.engine.errors import EngineError
from backends.engine.onboarding import consent, keypackage, ownership, voucher
from . import policy

log = logging.getLogger(__name__)

ACT = "/Cisco-IOS-XR-ownership-act:"
CHASSIS = "chassis"
PROFILE_SETTINGS = {"strict": "enable", "default": "default", "relaxed": "disable"}
ESTABLISHED = "%SECURITY-OWNERSHIP-6-INFO : Device ownership established."
MAX_OC = 1024 * 1024
MAX_KPKG = 1024 * 1024


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _summary(cert: x509.Certificate) -> dict:
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "sha256-fingerprint": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "not-before": cert.not_valid_before_utc.isoformat(), "not-after": cert.not_valid_after_utc.isoformat()}


class OwnershipBackend(Backend):
    def __init__(self, services: Services):
        super().__init__(
            name="ownership",
            modules=("Cisco-IOS-XR-ownership-act", "Cisco-IOS-XR-ownership-oper", "Cisco-IOS-XR-key-package-act",
                     "trustplane-ownership"),
            state={"/Cisco-IOS-XR-ownership-oper:ownership": self.oper,
                   "/trustplane-ownership:ownership": self.detail},
            rpcs={ACT + "oshp-ovoc-apply": self.ovoc_apply,
                  ACT + "oshp-ct-session-terminate": self.session_terminate,
                  ACT + "oshp-reimage-protection-challenge": self.reimage_challenge,
                  ACT + "oshp-reimage-protection-response": self.reimage_response,
                  "/Cisco-IOS-XR-key-package-act:kpkg-apply": self.kpkg_apply,
                  "/trustplane-ownership:clear-device-ownership-challenge": self.clear_challenge,
                  "/trustplane-ownership:clear-device-ownership-response": self.clear_response},
        )
        self.services = services
        self.profile = load_profile(services.state_dir)
        self.serials = {n.serial_number: n.location for n in self.profile.nodes}
        self.serials[self.profile.chassis["serial-number"]] = CHASSIS
        for cert in self.profile.anchors_in_both_roles():
            log.warning("trust anchor %s is both a MASA anchor and a manufacturer anchor: every device identity "
                        "it issues can sign ownership vouchers", cert.subject.rfc4514_string())
        self.path = policy.state_path(services.state_dir)
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {
            "nodes": {}, "key-packages": None, "reimage-protection": "disabled"}
        self.tokens = consent.ConsentTokens()
        self.lock = asyncio.Lock()

    # -- state

    def oper(self) -> dict:
        prof = policy.security_profile(self.data)
        setting = PROFILE_SETTINGS.get(prof or "default")
        oper = {"security-profile": {"signed-rpm": setting, "signed-rpm-current": setting, "secure-ztp": setting,
                                     "secure-ztp-current": setting},
                "anti-theft": {"reimage-status": self.data["reimage-protection"]}}
        rec = self._device_record()
        if rec is not None:
            oc = _load(rec["oc-chain"][0])
            serial = rec["voucher"]["serial-number"]
            oper["device-ownership"] = {
                "ov-summary": {"serial-no": serial if serial.isdigit() and int(serial) < 2 ** 31 else None,
                               "pdc": rec["pdc"]},
                "oc-info": f"subject {oc.subject.rfc4514_string()}; issuer {oc.issuer.rfc4514_string()}; "
                           f"serial {oc.serial_number:x}; valid {oc.not_valid_before_utc.isoformat()} "
                           f"to {oc.not_valid_after_utc.isoformat()}"}
        return {"Cisco-IOS-XR-ownership-oper:ownership": oper}

    def _device_record(self) -> dict | None:
        """The ownership of the first node that has it: the device-wide view IOS XR models."""
        return next((self.data["nodes"][n.location] for n in self.profile.nodes
                     if n.location in self.data["nodes"]), None)

    def detail(self) -> dict:
        nodes = []
        for serial, location in self.serials.items():
            rec = self.data["nodes"].get(location)
            node = {"location": location, "serial-number": serial, "state": "established" if rec else "none"}
            if rec:
                v = rec["voucher"]
                node.update({
                    "voucher": {k: v.get(k) for k in ("serial-number", "created-on", "expires-on", "assertion", "issuer",
                                                      "content-type", "security-profile", "source")},
                    "pinned-domain-cert": _summary(_load(rec["pdc"])),
                    "owner-certificate-chain": [{"position": i, **_summary(_load(pem))}
                                                for i, pem in enumerate(rec["oc-chain"])],
                    "installed-at": rec["installed-at"], "installed-by": rec["installed-by"]})
            nodes.append(node)
        kp = self.data["key-packages"]
        packages = []
        for name, k in sorted((kp or {}).get("keys", {}).items()):
            key = keypackage.Key(name, k["key_type"], k["metadata"], k["value"])
            packages.append({"name": name,
                             "usage": "consent-token" if name == keypackage.CONSENT_TOKEN_KEY else k["metadata"],
                             "key-type": k["key_type"], "timestamp": kp["timestamp-text"],
                             "sha256-fingerprint": key.fingerprint()})
        return {"trustplane-ownership:ownership": {"node": nodes, "key-package": packages}}

    # -- helpers

    def _commit(self, state: dict) -> None:
        try:
            atomic_write(self.path, json.dumps(state, indent=1).encode(), mode=0o600)
        except OSError as exc:
            raise EngineError("storage-failed", f"cannot write the ownership state: {exc.strerror}") from None
        self.data = state

    def _commit_redeemed(self, state: dict, tokens_before: tuple) -> None:
        """_commit after a consent token was redeemed: when the write fails, the challenge
        is pending again, so the same response works once the state can be written."""
        try:
            self._commit(state)
        except EngineError:
            self.tokens.pending, self.tokens.spent = tokens_before
            raise

    def _tokens(self) -> tuple:
        return dict(self.tokens.pending), list(self.tokens.spent)

    def _notify(self, path: str, content: dict) -> None:
        if self.services.notify is not None:
            self.services.notify(path, content)

    # -- oshp-ovoc-apply

    async def ovoc_apply(self, session, params: dict) -> dict:
        try:
            ov_data, ov_source = read_device_file(self.services.devfs, params["ov-path"], ownership.MAX_BUNDLE,
                                                  session=session)
            oc_data, _ = read_device_file(self.services.devfs, params["oc-path"], MAX_OC, session=session)
            async with self.lock:
                loop = asyncio.get_running_loop()
                state, rows, established = await loop.run_in_executor(
                    None, self._check_apply, ov_data, ov_source, oc_data, params, session)
                self._commit(state)
        except EngineError as exc:
            log.warning("device ownership not established from %s: %s: %s", params["ov-path"], exc.code, exc.message)
            raise
        log.info("%s (%s)", ESTABLISHED, ", ".join(established))
        oc_subject = _load(state["nodes"][established[0]]["oc-chain"][0]).subject.rfc4514_string()
        self._notify("/trustplane-ownership:ownership-established",
                     {"location": established, "owner-certificate": oc_subject})
        return {"trustplane-ownership:voucher": rows}

    def _check_apply(self, ov_data: bytes, ov_source: str, oc_data: bytes, params: dict, session):
        now = self.services.clock()
        members = ownership.read_bundle(ov_data, ov_source)
        idevids = {n.serial_number: n.idevid_cert() for n in self.profile.nodes}
        sel = ownership.select(members, set(self.serials), anchors=self.profile.masa_anchors(), at=now,
                               idevids=idevids, device_anchors=self.profile.manufacturer_anchors())
        for node in self.profile.nodes:
            if node.serial_number not in sel.chosen:
                mine = [r for r in sel.rejected if r[1] == node.serial_number]
                if mine:
                    name, _serial, code, message = mine[0]
                    raise voucher.VoucherError(code, f"{node.location}: {name}: {message}")
                unread = [r for r in sel.rejected if not r[1]]  # it may be this node's voucher
                if unread:
                    name, _serial, code, message = unread[0]
                    raise voucher.VoucherError(code, f"{node.location}: no voucher names serial {node.serial_number}, "
                                               f"and {name} cannot be read: {message}")
                if sel.foreign:
                    others = ", ".join(sel.foreign[:3]) + (f" and {len(sel.foreign) - 3} more" if len(sel.foreign) > 3
                                                           else "")
                    raise ownership.OwnershipError("ov-serial-mismatch", f"no voucher names {node.location}'s serial "
                                                   f"{node.serial_number}; {others} name other serials",
                                                   tag="invalid-value")
                raise ownership.OwnershipError("ov-missing-node", f"the bundle has no voucher for {node.location} "
                                               f"(serial {node.serial_number})", tag="invalid-value")
        chosen = {self.serials[s]: (name, v) for s, (name, v) in sel.chosen.items()}
        for location, (name, v) in chosen.items():
            old = self.data["nodes"].get(location)
            if old and voucher.parse_datetime(old["voucher"]["created-on"], "created-on") > v.created_on:
                raise voucher.VoucherError("ov-older", f"{location}: {name} was created on {v.created_on.isoformat()}, "
                                           f"before the installed voucher ({old['voucher']['created-on']}); "
                                           "only the latest voucher is accepted")
        profiles = {v.security_profile for _n, v in chosen.values()}
        if len(profiles) > 1 and not params.get("allow-mixed-security-profiles"):
            raise voucher.VoucherError("ov-profile-mismatch", "the vouchers for this chassis carry different security "
                                       f"profiles ({', '.join(sorted(profiles))}); give "
                                       "allow-mixed-security-profiles to install anyway")
        state = copy.deepcopy(self.data)
        user = getattr(session, "username", None) or "unknown"
        for location, (name, v) in chosen.items():
            oc = ownership.verify_oc(oc_data, v.pinned_domain_cert, at=now,
                                     partial_match=params.get("cert-chain-partial-match") == "true",
                                     crl_optional=params.get("crl-optional") == "true",
                                     revocation_checks=v.revocation_checks,
                                     allow_sha1=v.security_profile == "relaxed",
                                     pdc_min_rsa_bits=2048 if v.security_profile == "strict" else 1024)
            state["nodes"][location] = {
                "voucher": {"serial-number": v.serial_number, "created-on": v.created_on.isoformat(),
                            "expires-on": v.expires_on.isoformat() if v.expires_on else None,
                            "assertion": v.assertion, "issuer": v.signer.subject.rfc4514_string(),
                            "content-type": v.content_type, "security-profile": v.security_profile,
                            "source": f"{ov_source}:{name}" if name != ov_source else ov_source},
                "pdc": _pem(v.pinned_domain_cert), "oc-chain": [_pem(c) for c in oc.chain],
                "installed-at": now.isoformat(), "installed-by": user}
        applied = {name: loc for loc, (name, _v) in chosen.items()}
        foreign = set(sel.foreign)
        rows: dict[str, dict] = {}  # member -> row; a name repeated in the tar is reported once
        for name in sel.names:
            if name in applied:
                rows.setdefault(name, {"result": "applied", "location": applied[name]})
            elif name in foreign:
                rows.setdefault(name, {"result": "other-device"})
        for name, serial, code, message in sel.rejected:
            rows.setdefault(name, {"serial-number": serial or None, "result": "rejected",
                                   "reason": f"{code}: {message}"})
        # one line however many members: a bulk bundle names thousands of other devices
        first = f" (first: {sel.rejected[0][0]}: {sel.rejected[0][2]}: {sel.rejected[0][3]})" if sel.rejected else ""
        log.info("device ownership: %s: %d of %d vouchers applied, %d for other devices ignored, %d rejected%s",
                 ov_source, len(applied), len(sel.names), len(sel.foreign), len(sel.rejected), first)
        rows = [{"member": name, **row} for name, row in rows.items()]
        return state, rows, sorted(chosen)

    # -- key packages

    async def kpkg_apply(self, session, params: dict) -> None:
        data, source = read_device_file(self.services.devfs, params["keypackage-file"], MAX_KPKG, session=session)
        async with self.lock:  # one state change at a time: ovoc-apply copies the state off the loop
            self._kpkg_apply(data, source)

    def _kpkg_apply(self, data: bytes, source: str) -> None:
        rec = next((r for r in self.data["nodes"].values()), None)
        if rec is None:
            raise EngineError("kpkg-no-ownership",
                              "no device ownership: establish it before applying a customer key package",
                              "operation-failed")
        now = self.services.clock()
        pkg = keypackage.verify(data, _load(rec["oc-chain"][0]), now)
        current = self.data["key-packages"]
        if current and datetime.fromisoformat(current["timestamp"]) >= pkg.timestamp:
            raise keypackage.KeyPackageError("kpkg-stale", f"the key package timestamp {pkg.timestamp_text} is not "
                                             f"newer than the applied one ({current['timestamp-text']})")
        old = {n: keypackage.Key(n, k["key_type"], k["metadata"], k["value"])
               for n, k in (current or {}).get("keys", {}).items()}
        keys = keypackage.apply(old, pkg)
        state = copy.deepcopy(self.data)
        state["key-packages"] = {"timestamp": pkg.timestamp.isoformat(), "timestamp-text": pkg.timestamp_text,
                                 "source": source, "keys": {n: {"key_type": k.key_type, "metadata": k.metadata,
                                                                "value": k.value} for n, k in keys.items()}}
        self._commit(state)
        log.info("customer key package %s applied: %s", source, ", ".join(sorted(keys)) or "no keys")

    def _consent_key(self):
        kp = self.data["key-packages"] or {}
        k = kp.get("keys", {}).get(keypackage.CONSENT_TOKEN_KEY)
        if k is None:
            raise EngineError("ct-key-missing", "no customer consent-token key: apply a key package with the "
                              f"{keypackage.CONSENT_TOKEN_KEY} key first", "operation-failed")
        return keypackage.Key(keypackage.CONSENT_TOKEN_KEY, k["key_type"], k["metadata"], k["value"]).signing_key()

    def _node_serial(self, location: str) -> str:
        node = self.profile.node(location)
        if node is None:
            raise EngineError("unknown-node", f"no node {location!r}", "invalid-value")
        return node.serial_number

    # -- clear device ownership

    async def clear_challenge(self, session, params: dict) -> dict:
        location = params["location"]
        serial = self._node_serial(location)
        if location not in self.data["nodes"]:
            raise EngineError("no-ownership", f"{location}: no platform ownership information found", "data-missing")
        self._consent_key()
        c = self.tokens.issue(serial, location, "clear-device-ownership", self.services.clock())
        return {"challenge-string": c.text(), "expires-at": c.expires_at.isoformat()}

    async def clear_response(self, session, params: dict) -> None:
        async with self.lock:
            self._clear_response(session, params)

    def _clear_response(self, session, params: dict) -> None:
        location = params["location"]
        self._node_serial(location)
        key = self._consent_key()
        before = self._tokens()
        self.tokens.redeem(location, "clear-device-ownership", params["challenge-response"], key,
                           self.services.clock())
        state = copy.deepcopy(self.data)
        state["nodes"].pop(location, None)
        if not any(loc in state["nodes"] for loc in self.serials.values() if loc != CHASSIS):
            state["nodes"].clear()  # the chassis voucher goes with the last node
            state["key-packages"] = None
        self._commit_redeemed(state, before)
        log.warning("device ownership cleared on %s by %s", location, getattr(session, "username", "unknown"))
        self._notify("/trustplane-ownership:ownership-cleared", {"location": location})

    # -- reimage protection

    def _active_location(self) -> str:
        node = next((n for n in self.profile.nodes if n.role == "active"), self.profile.nodes[0])
        return node.location

    async def reimage_challenge(self, session, params: dict) -> dict:
        if params["signer"] != "customer":
            raise EngineError("ct-signer-unavailable",
                              "this device has no vendor consent-token service; use signer customer",
                              "operation-not-supported")
        self._consent_key()
        location = self._active_location()
        c = self.tokens.issue(self._node_serial(location), location,
                              f"reimage-protection-{params['reimage-protection']}", self.services.clock())
        return {"challenge-string": c.text()}

    async def reimage_response(self, session, params: dict) -> None:
        async with self.lock:
            self._reimage_response(params)

    def _reimage_response(self, params: dict) -> None:
        action = params["reimage-protection"]
        key = self._consent_key()
        before = self._tokens()
        self.tokens.redeem(self._active_location(), f"reimage-protection-{action}",
                           params["challenge-response"], key, self.services.clock())
        state = copy.deepcopy(self.data)
        state["reimage-protection"] = "enabled" if action == "enable" else "disabled"
        self._commit_redeemed(state, before)
        log.info("reimage protection %sd", action)

    async def session_terminate(self, session, params: dict) -> None:
        self.tokens.clear()
        return None


register("ownership")(OwnershipBackend)
