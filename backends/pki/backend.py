"""The PKI backend: key pairs, trustpoints, CA authentication and enrollment (SCEP, terminal,
self), router certificates, the trust pool, CRLs and certificate expiry alerts.

Keys live in STATE_DIR/pki/keys (the engine's key store); certificates and the trust pool in
STATE_DIR/pki/state.json. Every operation checks everything first and then swaps in the new
state whole: a failure leaves the state as it was.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from _libyang import lib
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from yangcore.backend import Backend, ConfigDiff, Services, read_device_file, register
from yangcore.datastore import atomic_write
from yangcore.libyang_abi import change_term

from backends.device.profile import load_profile
from backends.engine.keys import keystore, type6
from backends.engine.x509 import certcheck, certissue, crl, download, expiry, scep, trustpointpath, trustpool
from backends.engine.errors import EngineError
from backends.ownership import policy as ownership_policy
from . import config, render
from .store import PkiStore

log = logging.getLogger(__name__)

ACT = "/Cisco-IOS-XR-crypto-act:"
MAX_CERT_FILE = 256 * 1024
ECDSA_CURVES = ("nistp256", "nistp384", "nistp521")
HOUR = 3600.0


def _load_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        cert = None
    if cert is None or not certcheck.readable(cert):
        raise EngineError("certificate-invalid", f"{what} is not an X.509 certificate (PEM or DER)", "invalid-value")
    return cert


def _normal_fingerprint(text: str) -> str:
    return "".join(c for c in text if c not in ": ").upper()


class PkiBackend(Backend):
    def __init__(self, services: Services):
        super().__init__(
            name="pki",
            modules=("Cisco-IOS-XR-crypto-act", "Cisco-IOS-XR-um-crypto-cfg", "Cisco-IOS-XR-crypto-cepki-oper",
                     "Cisco-IOS-XR-crypto-cepki-new-oper", "trustplane-pki"),
            state={"/Cisco-IOS-XR-crypto-cepki-oper:crypto-certificate-authority": self.trustpoints,
                   "/Cisco-IOS-XR-crypto-cepki-new-oper:crypto-cepki": self.key_pairs,
                   "/trustplane-pki:pki": self.pki},
            config=(config.CRYPTO,),
            rpcs={ACT + "key-generate-rsa": self.key_generate_rsa,
                  ACT + "key-generate-rsa-general-keys": self.key_generate_rsa,
                  ACT + "key-generate-rsa-usage-keys": self.key_generate_rsa_usage,
                  ACT + "key-generate-dsa": self.key_generate_dsa,
                  ACT + "key-generate-ecdsa": self.key_generate_ecdsa,
                  ACT + "key-generate-ed25519": self.key_generate_ed25519,
                  ACT + "key-zeroize-rsa": self.zeroize("rsa"),
                  ACT + "key-zeroize-dsa": self.zeroize("dsa"),
                  ACT + "key-zeroize-ecdsa": self.zeroize("ecdsa"),
                  ACT + "key-zeroize-ed25519": self.zeroize("ed25519"),
                  ACT + "key-zeroize-authentication-rsa": self.zeroize("rsa-authentication"),
                  ACT + "key-import-authentication-rsa": self.key_import,
                  ACT + "ca-authenticate": self.ca_authenticate,
                  ACT + "ca-enroll": self.ca_enroll,
                  ACT + "ca-import-certificate": self.ca_import_certificate,
                  ACT + "ca-clear-certificates": self.ca_clear_certificates,
                  ACT + "ca-cancel-enroll": self.ca_cancel_enroll,
                  ACT + "ca-crl-request": self.ca_crl_request,
                  ACT + "ca-trustpool-import-url": self.trustpool_import,
                  ACT + "ca-trustpool-import-url-clean": self.trustpool_clean,
                  "/trustplane-pki:verify-certificate": self.verify_certificate},
        )
        self.services = services
        base = services.state_dir / "pki"
        base.mkdir(mode=0o700, exist_ok=True)
        try:
            self.keys = keystore.Keystore(base / "keys")
        except keystore.KeystoreError as exc:
            raise RuntimeError(exc.message) from None
        self.store = PkiStore(base / "state.json")
        self.type6 = type6.Type6(services.state_dir / "type6.key")
        self.builtin = self._builtin_pool(base / "trustpool-builtin.pem")
        self._parsed_pool: tuple[list | None, list[x509.Certificate]] = (None, [])
        self.crls = crl.CrlCache(base / "crl-cache")
        self.cfg = config.PkiConfig()
        self.lock = asyncio.Lock()
        self._pollers: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wakes = {"expiry": asyncio.Event(), "trustpool": asyncio.Event()}
        # key generation keeps one core for the event loop: sessions answer while RSA-4096 keys are made
        self._keygen = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="keygen")
        self._spawn(self._expiry_loop())
        self._spawn(self._trustpool_loop())

    # -- the built-in trust pool

    @staticmethod
    def _builtin_pool(path) -> list[x509.Certificate]:
        """The system CA bundle, recorded at first start: later changes to the host's bundle
        do not change the device's built-in pool."""
        if not path.exists():
            certs = trustpool.system_bundle()
            atomic_write(path, "".join(render.pem(c) for c in certs).encode(), mode=0o644)
            log.info("trustpool: recorded %d built-in CA certificates", len(certs))
            return certs
        data = path.read_bytes()
        return trustpool.parse_bundle(data) if data.strip() else []

    def _downloaded(self) -> list[x509.Certificate]:
        """The downloaded pool, parsed once for each state it has (reads and timers ask often)."""
        pems = self.store.data["trustpool"]["downloaded"]
        if self._parsed_pool[0] is not pems:
            self._parsed_pool = (pems, [render.load(p) for p in pems])
        return self._parsed_pool[1]

    def _pool(self) -> list[x509.Certificate]:
        return trustpool.active(self.builtin, self._downloaded())

    # -- configuration

    def _key_exists(self, ref: config.KeyRef) -> bool:
        return bool(self.keys.find(ref.family, ref.label, curve=ref.curve))

    def protect_secrets(self, tree) -> None:
        """A challenge password is configured in clear and kept only in its type 6 form; a
        type 6 form is taken only if this device's master key made it."""
        if tree is None:
            return
        for node in list(tree.find_all(config.CHALLENGE_PASSWORDS)):
            value = str(node.value())
            try:
                if type6.is_stored_form(value):
                    self.type6.decrypt(value)
                    continue
                # Cisco's Type6-password marks clear text with a leading '!'
                stored = self.type6.encrypt(value[1:] if value.startswith("!") else value)
            except type6.Type6Error as exc:
                raise EngineError(exc.code, exc.message, exc.tag, node.path()) from None
            if change_term(node.cdata, stored) not in (lib.LY_SUCCESS, lib.LY_EEXIST):
                raise EngineError("type6-invalid", "cannot store the type 6 password", "operation-failed", node.path())

    def _challenge_password(self, tp: config.Trustpoint, params: dict) -> str | None:
        """The RPC's password, else the configured one in clear."""
        if params.get("challenge-password") or tp.challenge_password is None:
            return params.get("challenge-password")
        try:
            return self.type6.decrypt(tp.challenge_password)
        except type6.Type6Error as exc:
            raise EngineError(exc.code, f"trustpoint {tp.name}: {exc.message}", "operation-failed",
                              tp.path + "/challenge-password/password6") from None

    def validate(self, diff: ConfigDiff) -> None:
        config.check(config.parse(diff.new), self._key_exists)

    def apply(self, diff: ConfigDiff) -> None:
        self.cfg = config.parse(diff.new)
        self.crls.timeout = self.cfg.crl_timeout
        self._changed()

    def _tp(self, name: str) -> config.Trustpoint:
        tp = self.cfg.trustpoints.get(name)
        if tp is None:
            raise EngineError("unknown-trustpoint", f"trustpoint {name!r} is not configured", "invalid-value")
        return tp

    # -- state

    def _router_keys(self, tp: config.Trustpoint) -> list[keystore.KeyInfo]:
        return self.keys.find(tp.key.family, tp.key.label, curve=tp.key.curve)

    def _router_status(self, tp: config.Trustpoint, routers: dict[str, x509.Certificate]) -> str | None:
        if not routers:
            return None
        keys = {k.usage: k for k in self._router_keys(tp)}
        usable = all(u in keys and certissue.matches_key(c, keys[u].public_key()) for u, c in routers.items())
        return "available" if usable else "unusable"

    def _enrollment_state(self, rec: dict) -> str:
        if not rec.get("ca"):
            return "not-authenticated"
        if rec.get("router"):
            return "enrolled"
        if rec.get("pending"):
            return "pending"
        if rec.get("requests"):
            return "request-written"
        return "authenticated"

    def trustpoints(self) -> dict:
        tps = []
        for name, tp in sorted(self.cfg.trustpoints.items()):
            rec = self.store.trustpoint(name)
            ca = render.load(rec["ca"][0]) if rec.get("ca") else None
            routers = {u: render.load(r["pem"]) for u, r in (rec.get("router") or {}).items()}
            tps.append(render.trustpoint(name, ca, routers, self._enrollment_state(rec),
                                         self._router_status(tp, routers)))
        owned = ownership_policy.trustpoint_certificates(self.services.state_dir)
        if owned:
            tps.append(render.ownership_trustpoint(owned))
        return {"Cisco-IOS-XR-crypto-cepki-oper:crypto-certificate-authority": {"trustpoints": {"trustpoint": tps}}}

    def key_pairs(self) -> dict:
        return render.mypubkey(self.keys.keys())

    def pki(self) -> dict:
        pool = self.store.data["trustpool"]
        downloaded = self._downloaded()
        inactive = {render.sha1(c) for c in trustpool.inactive(self.builtin, downloaded)}
        certs = {}
        for origin, found in (("downloaded", downloaded), ("built-in", self.builtin)):
            for c in found:
                fp = render.sha1(c)
                if fp not in certs:
                    certs[fp] = {"sha1-fingerprint": fp, "origin": origin, "active": fp not in inactive,
                                 **render.certificate_info(c, fp)}
        return {"trustplane-pki:pki": {"trustpool": {
            "last-update": pool["last-update"], "source": pool["source"],
            "next-update-attempt": self._next_pool_update_text(), "last-update-error": pool["last-error"],
            **self._pool_counts(), "certificate": list(certs.values())}}}

    def _pool_counts(self, prefix: str = "") -> dict:
        downloaded = self._downloaded()
        off = len(trustpool.inactive(self.builtin, downloaded))
        return {prefix + "downloaded": len(downloaded), prefix + "built-in-active": len(self.builtin) - off,
                prefix + "built-in-inactive": off}

    # -- helpers

    async def _run(self, fn, *args):
        """Engine work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self, path: str, content: dict) -> None:
        if self.services.notify is not None:
            self.services.notify(path, content)

    def _device_names(self) -> tuple[str | None, str]:
        """The FQDN certificates carry (hostname.domain, as IOS XR builds it) and the serial number."""
        profile = load_profile(self.services.state_dir)
        fqdn = profile.hostname + (f".{profile.domain_name}" if profile.domain_name else "")
        return fqdn, profile.chassis["serial-number"]

    # -- keys

    async def _generate(self, fn, *args) -> dict:
        infos = await asyncio.get_running_loop().run_in_executor(self._keygen,
                                                                 lambda: fn(*args, now=self.services.clock()))
        infos = infos if isinstance(infos, list) else [infos]
        log.info("Generating %s keys ... Done w/ crypto generate keypair [OK] (%s)", infos[0].type_text(),
                 infos[0].label)
        self._changed()  # a regenerated key changes which certificates are usable
        return render.generated_keys(infos)

    async def key_generate_rsa(self, session, params: dict) -> dict:
        return await self._generate(self.keys.generate_rsa, params.get("key-label") or keystore.DEFAULT_LABEL,
                                    int(params.get("key-modulus", 2048)))

    async def key_generate_rsa_usage(self, session, params: dict) -> dict:
        label = params.get("key-label") or keystore.DEFAULT_LABEL
        bits = int(params.get("key-modulus", 2048))
        return await self._generate(lambda *, now: self.keys.generate_rsa(label, bits, usage_keys=True, now=now))

    async def key_generate_dsa(self, session, params: dict) -> dict:
        return await self._generate(self.keys.generate_dsa, params.get("key-label") or keystore.DEFAULT_LABEL,
                                    int(params["key-modulus"]))

    async def key_generate_ecdsa(self, session, params: dict) -> dict:
        return await self._generate(self.keys.generate_ecdsa, params.get("key-label") or keystore.DEFAULT_LABEL,
                                    params["key-modulus"])

    async def key_generate_ed25519(self, session, params: dict) -> dict:
        return await self._generate(self.keys.generate_ed25519, params.get("key-label") or keystore.DEFAULT_LABEL)

    def zeroize(self, family: str):
        def handler(session, params: dict) -> None:
            if family == "dsa":
                raise EngineError("key-not-found", "there are no DSA keys: this device never generates them",
                                  "data-missing")
            label = (params.get("key-num") or "first") if family == "rsa-authentication" else params.get("key-label")
            gone = self.keys.zeroize(family, label, curve=params.get("key-modulus"))
            for k in gone:
                log.warning("crypto key zeroize: %s key %r erased", k.type_text(), k.label)
            return None
        return handler

    async def key_import(self, session, params: dict) -> None:
        data, source = read_device_file(self.services.devfs, params["path"], MAX_CERT_FILE, session=session)
        info = self.keys.import_authentication_rsa(data, params.get("key-num") or "first",
                                                   now=self.services.clock())
        log.info("authentication key %s imported from %s (%d bits)", info.label, source, info.size)
        return None

    # -- CA authentication

    async def ca_authenticate(self, session, params: dict) -> dict:
        tp = self._tp(params["server-name"])
        async with self.lock:
            if self.store.trustpoint(tp.name).get("ca"):
                raise EngineError("ca-already-authenticated",
                                  f"trustpoint {tp.name} already has a CA certificate; clear it first "
                                  "(ca-clear-certificates)", "data-exists")
            caps: list[str] = []
            ra: list[x509.Certificate] = []
            if params.get("file-path"):
                data, source = read_device_file(self.services.devfs, params["file-path"], MAX_CERT_FILE,
                                                session=session)
                ca, how = _load_certificate(data, source), "file"
            elif tp.enrollment == "url":
                caps_set, cacerts = await self._run(self._scep_ca, tp.url)
                caps, ca, how = sorted(caps_set), cacerts.ca, "scep"
                ra = [c for c in cacerts.certificates if c != cacerts.ca]
            elif tp.enrollment == "self":
                ca, how = await self._run(self._self_root, tp), "self"
            elif tp.enrollment == "terminal":
                raise EngineError("file-path-required",
                                  f"trustpoint {tp.name} enrolls by terminal: give file-path, the CA certificate "
                                  "file on the device", "missing-element")
            else:
                raise EngineError("no-enrollment", f"trustpoint {tp.name} has no enrollment method configured",
                                  "operation-failed")
            self._check_ca(tp, ca, params.get("expected-fingerprint"))
            state = self.store.copy()
            state["trustpoints"][tp.name] = {"ca": [render.pem(ca)], "ra": [render.pem(c) for c in ra],
                                             "ca-source": how, "caps": caps}
            self.store.commit(state)
        log.info("trustpoint %s: CA certificate %s installed (serial %s, SHA1 fingerprint %s)", tp.name,
                 ca.subject.rfc4514_string(), expiry.serial_text(ca.serial_number), render.sha1(ca))
        return {render.P + "ca-certificate": render.certificate_info(ca), render.P + "capability": list(caps)}

    def _scep_ca(self, url: str):
        caps = scep.get_ca_caps(url)
        return caps, scep.get_ca_cert(url)

    def _check_ca(self, tp: config.Trustpoint, ca: x509.Certificate, expected: str | None) -> None:
        if expected:
            want = _normal_fingerprint(expected)
            have = render.sha1(ca) if len(want) == 40 else render.sha256(ca)
            if want != have:
                raise EngineError("fingerprint-mismatch",
                                  f"trustpoint {tp.name}: the CA certificate's fingerprint is {have}, not the "
                                  f"expected {want}; nothing was installed", "operation-failed")
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise EngineError("not-a-ca",
                              f"{ca.subject.rfc4514_string()} is not a CA certificate (no basicConstraints CA)",
                              "invalid-value")
        now = self.services.clock()
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise EngineError("ca-expired", f"the CA certificate {ca.subject.rfc4514_string()} is valid from "
                              f"{ca.not_valid_before_utc.isoformat()} to {ca.not_valid_after_utc.isoformat()}, "
                              f"not now ({now.isoformat()})", "operation-failed")

    def _self_root(self, tp: config.Trustpoint) -> x509.Certificate:
        if tp.ca_key is None:
            raise EngineError("no-ca-keypair", f"trustpoint {tp.name}: enrollment url self needs a ca-keypair",
                              "operation-failed", tp.path + "/ca-keypair")
        key = self.keys.private_key(tp.ca_key.family, tp.ca_key.label, curve=tp.ca_key.curve)
        fqdn, serial = self._device_names()
        base = certissue.parse_subject(tp.ca_subject_name) if tp.ca_subject_name else None
        subject = certissue.device_subject(base, fqdn, serial if tp.serial_number is not False else None, None)
        return certissue.self_signed_ca(key, subject, lifetime_days=tp.lifetime_ca,
                                        key_usage=tp.key_usage_ca or None, digest_name=tp.digest,
                                        serial=certissue.new_serial(), now=self.services.clock())

    # -- enrollment

    def _subject(self, tp: config.Trustpoint, params: dict) -> x509.Name:
        fqdn, serial = self._device_names()
        base = certissue.parse_subject(tp.subject_name) if tp.subject_name else None
        with_serial = tp.serial_number if tp.serial_number is not None else bool(params.get("include-serial-number"))
        ip = None if tp.ip_address == "none" else tp.ip_address or params.get("include-ip-address")
        return certissue.device_subject(base, fqdn, serial if with_serial else None, ip)

    def _enroll_keys(self, tp: config.Trustpoint) -> list[keystore.KeyInfo]:
        keys = self._router_keys(tp)
        if not keys:
            raise EngineError("key-not-found",
                              f"trustpoint {tp.name} uses {tp.key.text()}, which does not exist; generate it first",
                              "operation-failed", f"{tp.path}/{tp.key_leaf}")
        return keys

    async def ca_enroll(self, session, params: dict) -> dict:
        tp = self._tp(params["server-name"])
        async with self.lock:
            rec = self.store.trustpoint(tp.name)
            if not rec.get("ca"):
                raise EngineError("ca-not-authenticated",
                                  f"trustpoint {tp.name} has no CA certificate: authenticate the CA first "
                                  "(ca-authenticate)", "operation-failed")
            if rec.get("router"):
                raise EngineError("already-enrolled",
                                  f"trustpoint {tp.name} already has a router certificate; clear it first "
                                  "(ca-clear-certificates)", "data-exists")
            if rec.get("pending"):
                raise EngineError("enrollment-pending",
                                  f"trustpoint {tp.name} has an enrollment pending at the CA; cancel it first "
                                  "(ca-cancel-enroll)", "operation-failed")
            keys = self._enroll_keys(tp)
            subject = self._subject(tp, params)
            if rec.get("ca-source") == "self" or tp.enrollment == "self":
                return await self._enroll_self(tp, rec, keys, subject)
            if params.get("file-path") or tp.enrollment == "terminal":
                return await self._enroll_terminal(tp, keys, subject, params, session)
            if tp.enrollment == "url":
                return await self._enroll_scep(tp, rec, keys, subject, params)
            raise EngineError("no-enrollment", f"trustpoint {tp.name} has no enrollment method configured",
                              "operation-failed")

    async def _enroll_self(self, tp, rec, keys, subject) -> dict:
        if tp.ca_key is None:
            raise EngineError("no-ca-keypair", f"trustpoint {tp.name}: enrollment url self needs a ca-keypair",
                              "operation-failed", tp.path + "/ca-keypair")
        ca = render.load(rec["ca"][0])

        def issue():
            ca_key = self.keys.private_key(tp.ca_key.family, tp.ca_key.label, curve=tp.ca_key.curve)
            if not certissue.matches_key(ca, ca_key.public_key()):
                raise EngineError("cert-key-mismatch",
                                  f"trustpoint {tp.name}: the ca-keypair no longer matches the CA certificate; "
                                  "clear the certificates and authenticate again", "operation-failed")
            return {k.usage: certissue.issue(ca_key, ca, k.public_key(), subject, lifetime_days=tp.lifetime_cert,
                                             key_usage=tp.key_usage_cert or None, digest_name=tp.digest,
                                             serial=certissue.new_serial(), now=self.services.clock())
                    for k in keys}
        certs = await self._run(issue)
        self._install(tp, certs, keys)
        return self._issued(certs)

    async def _enroll_terminal(self, tp, keys, subject, params, session) -> dict:
        password = self._challenge_password(tp, params)

        def requests():
            out = {}
            for k in keys:
                key = self.keys.private_key(k.family, k.label, usage=k.usage, curve=k.curve)
                out[k.usage] = certissue.csr_pem(certissue.make_csr(key, subject, challenge_password=password,
                                                                    digest_name=tp.digest))
            return out
        csrs = await self._run(requests)
        files = {}
        if params.get("file-path"):
            path = params["file-path"]
            for usage, pem in csrs.items():
                target = path if usage == "general" else f"{path}.{usage}"
                self.services.devfs.write_bytes(target, pem.encode(), user=session.username)
                files[usage] = self.services.devfs.device_path(self.services.devfs.resolve(target))
        state = self.store.copy()
        # what is outstanding, not the requests: they carry the challenge password
        state["trustpoints"][tp.name]["requests"] = {u: {"file": files.get(u)} for u in csrs}
        self.store.commit(state)
        log.info("trustpoint %s: certificate request(s) written%s", tp.name,
                 f" to {', '.join(files.values())}" if files else "")
        return {render.P + "status": "request-written", render.P + "request": [
            {"usage": u, "file-path": files.get(u), "csr": pem} for u, pem in csrs.items()]}

    def _cacerts(self, rec: dict) -> scep.CACerts:
        ca = render.load(rec["ca"][0])
        ra = [render.load(p) for p in rec.get("ra") or []]
        return scep.CACerts(ca=ca, recipient=ra[0] if ra else ca, certificates=[ca, *ra])

    async def _enroll_scep(self, tp, rec, keys, subject, params) -> dict:
        if tp.key.family != "rsa":
            raise EngineError("scep-key-unsupported",
                              f"trustpoint {tp.name}: SCEP needs an RSA key to decrypt the CA's reply, and "
                              f"{tp.key.text()} is not one", "invalid-value")
        password = self._challenge_password(tp, params)
        cacerts = self._cacerts(rec)
        caps = set(rec.get("caps") or [])

        def request(k):
            key = self.keys.private_key(k.family, k.label, usage=k.usage)
            csr = certissue.make_csr(key, subject, challenge_password=password, digest_name=tp.digest)
            return scep.pkcs_req(tp.url, cacerts, key, csr, caps=caps, now=self.services.clock())
        issued, pending = {}, {}
        for k in keys:
            result, tx = await self._run(request, k)
            if result.status == "FAILURE":
                raise EngineError("scep-failed",
                                  f"trustpoint {tp.name}: the CA refused the request ({result.fail_info})",
                                  "operation-failed")
            if result.status == "PENDING":
                # the signer certificate carries the request's subject; the request itself (with the
                # challenge password) is not kept
                pending[k.usage] = {"transaction-id": tx.transaction_id, "signer": render.pem(tx.signer_cert)}
            else:
                issued[k.usage] = result.certificate
        if issued:
            await self._run(self._check_issued, tp, cacerts.ca, issued, keys)
        if pending:
            state = self.store.copy()
            state["trustpoints"][tp.name]["pending"] = pending
            if issued:
                state["trustpoints"][tp.name]["issued"] = {u: render.pem(c) for u, c in issued.items()}
            self.store.commit(state)
            self._start_poll(tp.name)
            log.info("trustpoint %s: enrollment pending at the CA (transaction %s)", tp.name,
                     ", ".join(p["transaction-id"] for p in pending.values()))
            return {render.P + "status": "pending",
                    render.P + "transaction-id": next(iter(pending.values()))["transaction-id"]}
        self._install(tp, issued, keys)
        return self._issued(issued)

    def _check_issued(self, tp, ca: x509.Certificate, certs: dict[str, x509.Certificate], keys) -> None:
        """An issued certificate must be for our key and chain to the authenticated CA."""
        wanted = {k.usage: k for k in keys}
        for usage, cert in certs.items():
            if usage not in wanted or not certissue.matches_key(cert, wanted[usage].public_key()):
                raise EngineError("cert-key-mismatch",
                                  f"trustpoint {tp.name}: the issued certificate {cert.subject.rfc4514_string()} is "
                                  "not for this router's key", "operation-failed")
            trustpointpath.verify(cert, intermediates=[], trustpoint_cas=[ca], trustpool=[], at=self.services.clock(),
                                  trustpoint_crl_optional=tp.crl_optional, trustpool_crl_optional=True, crls=self.crls)

    def _install(self, tp, certs: dict[str, x509.Certificate], keys) -> None:
        state = self.store.copy()
        rec = state["trustpoints"][tp.name]
        key_of = {k.usage: k for k in keys}
        rec["router"] = {u: {"pem": render.pem(c), "key": [key_of[u].family, key_of[u].label, key_of[u].curve]}
                         for u, c in certs.items()}
        for k in ("pending", "requests", "issued"):
            rec.pop(k, None)
        self.store.commit(state)
        self._changed()
        for usage, c in certs.items():
            log.info("trustpoint %s: router certificate installed (%s, serial %s, %s)", tp.name, usage,
                     expiry.serial_text(c.serial_number), c.subject.rfc4514_string())

    def _issued(self, certs: dict[str, x509.Certificate]) -> dict:
        return {render.P + "status": "issued", render.P + "certificate": [
            {"usage": u, **render.certificate_info(c)} for u, c in certs.items()]}

    # -- SCEP polling

    def _start_poll(self, name: str) -> None:
        old = self._pollers.pop(name, None)
        if old:
            old.cancel()
        self._pollers[name] = self._spawn(self._poll(name))

    async def _poll(self, name: str) -> None:
        tp = self.cfg.trustpoints.get(name)
        if tp is None:
            return
        for attempt in range(1, tp.retry_count + 1):
            await asyncio.sleep(self.services.real_seconds(tp.retry_period * 60))
            rec = self.store.trustpoint(name)
            pending = dict(rec.get("pending") or {})
            if not pending:
                return
            try:
                done = await self._poll_once(tp, rec, pending)
            except EngineError as exc:
                log.error("trustpoint %s: enrollment failed: %s", name, exc.message)
                await self._abandon(name)
                return
            if done:
                return
            log.info("trustpoint %s: still pending at the CA (poll %d of %d)", name, attempt, tp.retry_count)
        log.error("trustpoint %s: the CA did not issue the certificate after %d polls; enrollment abandoned", name,
                  tp.retry_count)
        await self._abandon(name)

    async def _abandon(self, name: str) -> None:
        """Drop a pending enrollment from the background, where a failure can only be logged."""
        try:
            await self._drop_pending(name)
        except EngineError as exc:
            log.error("trustpoint %s: %s; the pending enrollment stays recorded", name, exc.message)

    async def _poll_once(self, tp, rec, pending: dict) -> bool:
        cacerts = self._cacerts(rec)
        caps = set(rec.get("caps") or [])
        issued = {u: render.load(p) for u, p in (rec.get("issued") or {}).items()}
        keys = self._enroll_keys(tp)
        for usage, p in list(pending.items()):
            k = next(k for k in keys if k.usage == usage)

            def poll(k=k, p=p):
                key = self.keys.private_key(k.family, k.label, usage=k.usage)
                signer = render.load(p["signer"])
                tx = scep.Transaction(p["transaction-id"], signer, signer.subject)
                return scep.cert_poll(tp.url, cacerts, key, tx, caps=caps, now=self.services.clock())
            result = await self._run(poll)
            if result.status == "FAILURE":
                raise EngineError("scep-failed", f"the CA refused the request ({result.fail_info})")
            if result.status == "SUCCESS":
                issued[usage] = result.certificate
                del pending[usage]
        async with self.lock:
            if pending:
                state = self.store.copy()
                state["trustpoints"][tp.name]["pending"] = pending
                state["trustpoints"][tp.name]["issued"] = {u: render.pem(c) for u, c in issued.items()}
                self.store.commit(state)
                return False
            await self._run(self._check_issued, tp, cacerts.ca, issued, keys)
            self._install(tp, issued, keys)
        return True

    async def _drop_pending(self, name: str) -> None:
        async with self.lock:
            state = self.store.copy()
            rec = state["trustpoints"].get(name) or {}
            rec.pop("pending", None)
            rec.pop("issued", None)
            self.store.commit(state)

    async def ca_cancel_enroll(self, session, params: dict) -> None:
        tp = self._tp(params["server-name"])
        if not self.store.trustpoint(tp.name).get("pending"):
            raise EngineError("no-pending-enrollment", f"trustpoint {tp.name} has no pending enrollment",
                              "data-missing")
        task = self._pollers.pop(tp.name, None)
        if task:
            task.cancel()
        await self._drop_pending(tp.name)
        log.info("trustpoint %s: pending enrollment cancelled", tp.name)
        return None

    # -- import and clear

    async def ca_import_certificate(self, session, params: dict) -> dict:
        tp = self._tp(params["server-name"])
        if params.get("certificate"):
            cert = _load_certificate(params["certificate"].encode(), "certificate")
        elif params.get("file-path"):
            data, source = read_device_file(self.services.devfs, params["file-path"], MAX_CERT_FILE, session=session)
            cert = _load_certificate(data, source)
        else:
            raise EngineError("certificate-missing", "give the certificate: file-path or certificate",
                              "missing-element")
        async with self.lock:
            rec = self.store.trustpoint(tp.name)
            if not rec.get("ca"):
                raise EngineError("ca-not-authenticated",
                                  f"trustpoint {tp.name} has no CA certificate: authenticate the CA first",
                                  "operation-failed")
            keys = self._enroll_keys(tp)
            key = next((k for k in keys if certissue.matches_key(cert, k.public_key())), None)
            if key is None:
                raise EngineError("cert-key-mismatch",
                                  f"trustpoint {tp.name}: the certificate {cert.subject.rfc4514_string()} does not "
                                  f"match {tp.key.text()}", "invalid-value")
            await self._run(self._check_issued, tp, render.load(rec["ca"][0]), {key.usage: cert}, keys)
            state = self.store.copy()
            rec = state["trustpoints"][tp.name]
            routers = dict(rec.get("router") or {})
            routers[key.usage] = {"pem": render.pem(cert), "key": [key.family, key.label, key.curve]}
            rec["router"] = routers
            requests = rec.get("requests") or {}
            requests.pop(key.usage, None)
            if not requests:
                rec.pop("requests", None)
            self.store.commit(state)
        self._changed()
        log.info("trustpoint %s: router certificate imported (%s, serial %s)", tp.name, key.usage,
                 expiry.serial_text(cert.serial_number))
        return {render.P + k: v for k, v in {"usage": key.usage, **render.certificate_info(cert)}.items()}

    async def ca_clear_certificates(self, session, params: dict) -> None:
        tp = self._tp(params["server-name"])
        async with self.lock:
            task = self._pollers.pop(tp.name, None)
            if task:
                task.cancel()
            state = self.store.copy()
            state["trustpoints"].pop(tp.name, None)
            state["alerts"] = {k: v for k, v in state["alerts"].items() if not k.startswith(tp.name + "|")}
            self.store.commit(state)
        log.info("trustpoint %s: certificates cleared", tp.name)
        return None

    # -- CRLs

    def _known_cas(self) -> list[x509.Certificate]:
        cas = [render.load(p) for rec in self.store.data["trustpoints"].values() for p in rec.get("ca") or []]
        return cas + self._pool()

    async def ca_crl_request(self, session, params: dict) -> dict:
        uri = params["uri"]

        def fetch():
            found = crl.parse_crl(crl.http_get(uri, self.crls.timeout, self.crls.max_size), uri)
            issuer = next((c for c in self._known_cas() if c.subject == found.issuer), None)
            if issuer is None:
                raise EngineError("crl-issuer-unknown",
                                  f"the CRL's issuer {found.issuer.rfc4514_string()} is not a CA of any trustpoint "
                                  "or of the trust pool", "operation-failed")
            crl.check_crl(found, issuer, uri)
            return found
        found = await self._run(fetch)
        return {"certificate": found.public_bytes(serialization.Encoding.PEM).decode()}

    # -- path validation

    async def verify_certificate(self, session, params: dict) -> dict:
        if params.get("certificate"):
            leaf = _load_certificate(params["certificate"].encode(), "certificate")
        else:
            data, source = read_device_file(self.services.devfs, params["file-path"], MAX_CERT_FILE, session=session)
            leaf = _load_certificate(data, source)
        intermediates = [_load_certificate(p.encode(), "intermediate") for p in params.get("intermediate") or []]
        verified, by = await self._run(self._verify, leaf, intermediates)
        return {"trusted-by": by, "chain": [{"position": i, **render.certificate_info(c)}
                                             for i, c in enumerate(verified.chain)]}

    def _verify(self, leaf, intermediates):
        """Each trustpoint's CA with its own CRL policy first (seed: a trustpoint's CA and policy
        come before the pool's), then the pool."""
        now = self.services.clock()
        for name in sorted(self.cfg.trustpoints):
            rec = self.store.trustpoint(name)
            if not rec.get("ca"):
                continue
            cas = [render.load(p) for p in rec["ca"]]
            try:
                v = trustpointpath.verify(leaf, intermediates=intermediates, trustpoint_cas=cas, trustpool=[], at=now,
                                          trustpoint_crl_optional=self.cfg.trustpoints[name].crl_optional,
                                          trustpool_crl_optional=True, crls=self.crls)
                return v, name
            except trustpointpath.TrustpointPathError as exc:
                if exc.code != "cert-untrusted":  # this trustpoint anchors the path: its verdict stands
                    raise
        policy = self.cfg.trustpool
        v = trustpointpath.verify(leaf, intermediates=intermediates, trustpoint_cas=[], trustpool=self._pool(), at=now,
                                  trustpoint_crl_optional=True, trustpool_crl_optional=bool(policy and policy.crl_optional),
                                  crls=self.crls)
        return v, "trustpool"

    # -- trust pool

    async def trustpool_import(self, session, params: dict) -> dict:
        if not params.get("url"):
            raise EngineError("url-missing", "give the url of the CA bundle", "missing-element")
        async with self.lock:
            await self._import_pool(params["url"], session)
        return self._pool_counts(render.P)

    async def trustpool_clean(self, session, params: dict) -> dict:
        async with self.lock:
            if params.get("url"):
                await self._import_pool(params["url"], session)  # replaces the downloaded set as a unit
            else:
                state = self.store.copy()
                state["trustpool"].update({"downloaded": [], "source": None, "last-update": None})
                self.store.commit(state)
                log.info("trustpool: downloaded CA certificates removed")
        self._changed()
        return self._pool_counts(render.P)

    async def _import_pool(self, url: str, session) -> None:
        if url.lower().startswith(("http://", "https://")):
            data = await self._run(lambda: download.fetch(url, timeout=30, max_size=trustpool.MAX_BUNDLE_BYTES,
                                                          what="CA bundle", code="trustpool-download-failed"))
            source = url
        else:
            data, source = read_device_file(self.services.devfs, url, trustpool.MAX_BUNDLE_BYTES, session=session)
        certs = trustpool.parse_bundle(data)
        now = self.services.clock()
        state = self.store.copy()
        # the automatic-update timer restarts from now on the new pool's earliest expiry
        state["trustpool"].update({"downloaded": [render.pem(c) for c in certs], "source": source,
                                   "last-update": render.utc(now), "last-error": None,
                                   "last-attempt": now.isoformat()})
        self.store.commit(state)
        self._changed()
        log.info("trustpool: %d CA certificates imported from %s; %d built-in certificates inactive", len(certs),
                 source, len(trustpool.inactive(self.builtin, certs)))

    def _next_pool_update(self) -> datetime | None:
        earliest = trustpool.earliest_expiry(self._pool())
        if earliest is None:
            return None
        last = self.store.data["trustpool"].get("last-attempt")
        return trustpool.next_update(earliest, self.services.clock(),
                                     datetime.fromisoformat(last) if last else None)

    def _next_pool_update_text(self) -> str | None:
        when = self._next_pool_update()
        return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None

    async def _trustpool_loop(self) -> None:
        while True:
            self._wakes["trustpool"].clear()
            due = self._next_pool_update()
            now = self.services.clock()
            if due is not None and due <= now:
                await self._auto_update(now)
                continue
            delay = HOUR if due is None else min(HOUR, (due - now).total_seconds())
            await self._sleep("trustpool", delay)

    async def _auto_update(self, now: datetime) -> None:
        policy = self.cfg.trustpool
        url = policy.cabundle_url if policy else None
        error = None
        if url is None:
            error = "no cabundle url is configured"
            log.warning("trustpool: the earliest CA certificate expiry is %s and %s for the automatic update; "
                        "configure crypto ca trustpool policy cabundle url",
                        render.utc(trustpool.earliest_expiry(self._pool())), error)
        else:
            try:
                async with self.lock:
                    await self._import_pool(url, None)  # as the server: the configured url
                log.info("trustpool: automatic update from %s done", url)
                return
            except EngineError as exc:
                error = exc.message
                log.warning("trustpool: automatic update from %s failed: %s", url, error)
        async with self.lock:
            state = self.store.copy()
            state["trustpool"].update({"last-attempt": now.isoformat(), "last-error": error})
            try:
                self.store.commit(state)
                return
            except EngineError as exc:
                log.error("trustpool: %s", exc.message)
        # the attempt is not recorded, and the loop would try again at once
        await self._sleep("trustpool", HOUR)

    def _changed(self) -> None:
        """Configuration, keys or certificates changed: the timers look again."""
        for event in self._wakes.values():
            event.set()

    async def _sleep(self, timer: str, seconds: float) -> None:
        """Sleep, or wake early when something changed since this timer last looked."""
        try:
            await asyncio.wait_for(self._wakes[timer].wait(), max(self.services.real_seconds(seconds), 0.05))
        except asyncio.TimeoutError:
            pass

    # -- expiry alerts

    def _alert_candidates(self):
        """(trustpoint, type, certificate) for each certificate the seed's alerts cover."""
        for name, tp in self.cfg.trustpoints.items():
            rec = self.store.trustpoint(name)
            routers = rec.get("router") or {}
            usage_keys = any(u != "general" for u in routers)
            for usage, r in routers.items():
                if expiry.eligible("id", is_sudi=False, in_trustpool=False, has_router_cert=True,
                                   usage_keys=usage_keys):
                    yield name, "id", render.load(r["pem"])
            if rec.get("ca") and expiry.eligible("ca", is_sudi=False, in_trustpool=False,
                                                 has_router_cert=bool(routers), usage_keys=usage_keys):
                yield name, "ca", render.load(rec["ca"][0])

    def _check_expiry(self, now: datetime) -> datetime | None:
        """Raise the alerts that are due; return when the next one may be."""
        alerts = dict(self.store.data["alerts"])
        raised = []
        nxt = None
        for name, kind, cert in self._alert_candidates():
            key = f"{name}|{kind}|{cert.serial_number:x}"
            last = alerts.get(key)
            a = expiry.alert_due(cert.not_valid_after_utc, now, datetime.fromisoformat(last) if last else None)
            if a is not None:
                alerts[key] = a.due.isoformat()
                raised.append((name, kind, cert, a))
            p = expiry.next_point(cert.not_valid_after_utc, now)
            if p is not None and (nxt is None or p < nxt):
                nxt = p
        if raised:
            state = self.store.copy()
            state["alerts"] = alerts
            self.store.commit(state)
        for name, kind, cert, a in raised:
            left = cert.not_valid_after_utc - now
            line = expiry.log_line(a.level, name, kind.upper() if kind == "ca" else "ID", cert.serial_number,
                                   cert.issuer, cert.subject, left)
            (log.critical if a.level == expiry.ALERT else log.warning)("%s", line)
            self._notify("/trustplane-pki:certificate-expiring", {
                "level": a.level, "trustpoint": name, "certificate-type": kind,
                "serial-number": expiry.serial_text(cert.serial_number), "issuer": cert.issuer.rfc4514_string(),
                "subject": cert.subject.rfc4514_string(), "not-after": render.utc(cert.not_valid_after_utc),
                "time-left": max(0, int(left.total_seconds())), "time-left-text": expiry.time_left_text(left)})
        return nxt

    async def _expiry_loop(self) -> None:
        while True:
            self._wakes["expiry"].clear()
            now = self.services.clock()
            try:
                nxt = self._check_expiry(now)
            except EngineError as exc:
                log.error("expiry check: %s", exc.message)
                nxt = None
            await self._sleep("expiry", HOUR if nxt is None else min(HOUR, (nxt - now).total_seconds()))

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._keygen.shutdown(wait=False, cancel_futures=True)


register("pki")(PkiBackend)
