"""The PKI state as the XML of its modules: trustpoints (Cisco-IOS-XR-crypto-cepki-oper), key pairs
(Cisco-IOS-XR-crypto-cepki-new-oper, Ed25519 in trustplane-pki) and certificate summaries."""
from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from yangcore.backend import xml_leaf, xml_text

from backends.engine import expiry

CEPKI_NS = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-oper"
NEW_OPER_NS = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-new-oper"
NS = "urn:trustplane:yang:trustplane-pki"
OWNERSHIP_NS = "urn:trustplane:yang:trustplane-ownership"
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


def leaves(values: dict, ns: str | None = None) -> str:
    """Leaves in order; with ns, each carries it (leaves an augment adds at the top of an RPC's output)."""
    attr = f' xmlns="{ns}"' if ns else ""
    return "".join(f"<{k}{attr}>{xml_text(str(v))}</{k}>" for k, v in values.items() if v is not None)


def certificate_info(cert: x509.Certificate, ns: str | None = None, *, with_sha1: bool = True) -> str:
    """trustplane-pki's certificate-info grouping."""
    return leaves({"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
                   "serial-number": expiry.serial_text(cert.serial_number),
                   "sha1-fingerprint": sha1(cert) if with_sha1 else None, "sha256-fingerprint": sha256(cert),
                   "not-before": utc(cert.not_valid_before_utc), "not-after": utc(cert.not_valid_after_utc)}, ns)


def _cdps(cert: x509.Certificate) -> list[str]:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [n.value for dp in points for n in (dp.full_name or []) if isinstance(n, x509.UniformResourceIdentifier)]


def cepki_certificate(cert: x509.Certificate) -> str:
    """Cisco-IOS-XR-crypto-cepki-oper's certificate grouping."""
    return ("<crl-distribution-points>"
            + "".join(f"<crl-distribution-point><index>{i}</index>{xml_leaf('cdp-content', u)}</crl-distribution-point>"
                      for i, u in enumerate(_cdps(cert), 1))
            + "</crl-distribution-points>"
            + xml_leaf("subject", cert.subject.rfc4514_string())
            + xml_leaf("serial-num", expiry.serial_text(cert.serial_number))
            + xml_leaf("finger-print", sha1(cert)) + xml_leaf("issuer", cert.issuer.rfc4514_string())
            + xml_leaf("certificate-data", pem(cert))
            + xml_leaf("certificate-valid-from", int(cert.not_valid_before_utc.timestamp()))
            + xml_leaf("certificate-expires-on", int(cert.not_valid_after_utc.timestamp())))


def trustpoint(name: str, ca: x509.Certificate | None, routers: dict[str, x509.Certificate],
               state: str, router_status: str | None) -> str:
    parts = [f"<trustpoint>{xml_leaf('name', name)}"]
    for usage, cert in routers.items():
        parts.append(f"<{ROUTER_CONTAINERS[usage]}>{cepki_certificate(cert)}</{ROUTER_CONTAINERS[usage]}>")
    if ca is not None:
        parts.append(f"<certificate-authority-certificate>{cepki_certificate(ca)}</certificate-authority-certificate>")
    parts.append(f'<enrollment-state xmlns="{NS}">{state}</enrollment-state>')
    if router_status:
        parts.append(f'<router-certificate-status xmlns="{NS}">{router_status}</router-certificate-status>')
    parts.append("</trustpoint>")
    return "".join(parts)


def ownership_trustpoint(pems: list[str]) -> str:
    """device_ownership: IOS XR shows the PDC as its CA certificate; the trustplane-ownership
    augment lists every CA certificate it holds (the PDC, then the OC chain)."""
    return (f"<trustpoint><name>device_ownership</name><certificate-authority-certificate>"
            f"{cepki_certificate(load(pems[0]))}</certificate-authority-certificate>"
            + "".join(f'<ca-certificate-data xmlns="{OWNERSHIP_NS}">{xml_text(p)}</ca-certificate-data>'
                      for p in pems)
            + "</trustpoint>")


def key_entry(info, name_leaf: str, name: str) -> str:
    return (f"{xml_leaf(name_leaf, name)}{xml_leaf('key-label', info.label)}{xml_leaf('key-type', info.type_text())}"
            f"{xml_leaf('key-size', info.size)}{xml_leaf('key-creation-time', int(info.created.timestamp()))}"
            f"{xml_leaf('key-data', info.data_hex())}")


def rsa_key_name(info) -> str:
    return info.label if info.usage == "general" else f"{info.label} ({info.usage})"


def mypubkey(keys) -> str:
    rsa = [k for k in keys if k.family == "rsa"]
    auth = [k for k in keys if k.family == "rsa-authentication"]
    ecdsa = {c: [k for k in keys if k.family == "ecdsa" and k.curve == c] for c in ("nistp256", "nistp384", "nistp521")}
    ed = [k for k in keys if k.family == "ed25519"]
    parts = [f'<crypto-cepki xmlns="{NEW_OPER_NS}"><mypubkey>']
    if auth:
        parts.append("<auth-ssh-keys>" + "".join(f"<auth-ssh-key>{key_entry(k, 'authentication-key-name', k.label)}"
                                                 "</auth-ssh-key>" for k in auth) + "</auth-ssh-keys>")
    if rsa:
        parts.append("<rsa-keys>" + "".join(f"<rsa-key>{key_entry(k, 'rsa-key-name', rsa_key_name(k))}</rsa-key>"
                                            for k in rsa) + "</rsa-keys>")
    if any(ecdsa.values()):
        parts.append("<ecdsa>" + "".join(
            f"<{c}-keys>" + "".join(f"<{c}-key>{key_entry(k, 'key-name', k.label)}</{c}-key>" for k in ks)
            + f"</{c}-keys>" for c, ks in ecdsa.items() if ks) + "</ecdsa>")
    if ed:
        parts.append(f'<ed25519-keys xmlns="{NS}">' + "".join(f"<ed25519-key>{key_entry(k, 'key-name', k.label)}"
                                                             "</ed25519-key>" for k in ed) + "</ed25519-keys>")
    parts.append("</mypubkey></crypto-cepki>")
    return "".join(parts)


def generated_keys(keys) -> str:
    return "".join(f'<key xmlns="{NS}">{xml_leaf("label", k.label)}{xml_leaf("usage", k.usage)}'
                   f'{xml_leaf("key-type", k.type_text())}{xml_leaf("key-size", k.size)}'
                   f'{xml_leaf("key-data", k.public_der.hex().upper())}</key>' for k in keys)
