"""The PKI state as the data of its modules: trustpoints (Cisco-IOS-XR-crypto-cepki-oper), key pairs
(Cisco-IOS-XR-crypto-cepki-new-oper, Ed25519 in trustplane-pki) and certificate summaries. Nodes that
trustplane-pki adds to another module's tree are named with this prefix."""
from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from backends.engine.x509 import expiry

P = "trustplane-pki:"
ROUTER_CONTAINERS = {"general": "router-certificate", "signature": "router-signature-certificate",
                     "encryption": "router-encryption-certificate"}


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode())


def utc(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def sha1(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()


def sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def certificate_info(cert: x509.Certificate, sha1_text: str | None = None) -> dict:
    """trustplane-pki's certificate-info grouping (sha1_text: the SHA-1 fingerprint, when known)."""
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial-number": expiry.serial_text(cert.serial_number),
            "sha1-fingerprint": sha1_text or sha1(cert), "sha256-fingerprint": sha256(cert),
            "not-before": utc(cert.not_valid_before_utc), "not-after": utc(cert.not_valid_after_utc)}


def _cdps(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [n.value for dp in points for n in (dp.full_name or []) if isinstance(n, x509.UniformResourceIdentifier)]


def cepki_certificate(cert: x509.Certificate) -> dict:
    """Cisco-IOS-XR-crypto-cepki-oper's certificate grouping."""
    return {"crl-distribution-points": {"crl-distribution-point": [
                {"index": i, "cdp-content": u} for i, u in enumerate(_cdps(cert), 1)]},
            "subject": cert.subject.rfc4514_string(), "serial-num": expiry.serial_text(cert.serial_number),
            "finger-print": sha1(cert), "issuer": cert.issuer.rfc4514_string(), "certificate-data": pem(cert),
            "certificate-valid-from": int(cert.not_valid_before_utc.timestamp()),
            "certificate-expires-on": int(cert.not_valid_after_utc.timestamp())}


def trustpoint(name: str, ca: x509.Certificate | None, routers: dict[str, x509.Certificate],
               state: str, router_status: str | None) -> dict:
    tp = {"name": name}
    for usage, cert in routers.items():
        tp[ROUTER_CONTAINERS[usage]] = cepki_certificate(cert)
    if ca is not None:
        tp["certificate-authority-certificate"] = cepki_certificate(ca)
    tp[P + "enrollment-state"] = state
    tp[P + "router-certificate-status"] = router_status or None
    return tp


def ownership_trustpoint(pems: list[str]) -> dict:
    """device_ownership: IOS XR shows the PDC as its CA certificate; the trustplane-ownership
    augment lists every CA certificate it holds (the PDC, then the OC chain)."""
    return {"name": "device_ownership", "certificate-authority-certificate": cepki_certificate(load(pems[0])),
            "trustplane-ownership:ca-certificate-data": pems}


def key_entry(info, name_leaf: str, name: str) -> dict:
    return {name_leaf: name, "key-label": info.label, "key-type": info.type_text(), "key-size": info.size,
            "key-creation-time": int(info.created.timestamp()), "key-data": info.data_hex()}


def rsa_key_name(info) -> str:
    return info.label if info.usage == "general" else f"{info.label} ({info.usage})"


def mypubkey(keys) -> dict:
    rsa = [k for k in keys if k.family == "rsa"]
    auth = [k for k in keys if k.family == "rsa-authentication"]
    ecdsa = {c: [k for k in keys if k.family == "ecdsa" and k.curve == c] for c in ("nistp256", "nistp384", "nistp521")}
    ed = [k for k in keys if k.family == "ed25519"]
    mine = {}
    if auth:
        mine["auth-ssh-keys"] = {"auth-ssh-key": [key_entry(k, "authentication-key-name", k.label) for k in auth]}
    if rsa:
        mine["rsa-keys"] = {"rsa-key": [key_entry(k, "rsa-key-name", rsa_key_name(k)) for k in rsa]}
    if any(ecdsa.values()):
        mine["ecdsa"] = {f"{c}-keys": {f"{c}-key": [key_entry(k, "key-name", k.label) for k in ks]}
                         for c, ks in ecdsa.items() if ks}
    if ed:
        mine[P + "ed25519-keys"] = {"ed25519-key": [key_entry(k, "key-name", k.label) for k in ed]}
    return {"Cisco-IOS-XR-crypto-cepki-new-oper:crypto-cepki": {"mypubkey": mine}}


def generated_keys(keys) -> dict:
    return {P + "key": [{"label": k.label, "usage": k.usage, "key-type": k.type_text(), "key-size": k.size,
                         "key-data": k.public_der.hex().upper()} for k in keys]}
