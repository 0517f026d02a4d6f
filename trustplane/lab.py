"""`trustplane lab …`: the lab MASA and owner CA, writing files a device accepts.

    lab owner-ca        --out DIR                         pdc.pem, pdc.key (the owner root: the PDC)
    lab owner-cert      --pdc-dir DIR [--intermediate]    oc.pem, oc.key, oc.cms (certs-only, OC up to the PDC)
    lab voucher         --lab-dir LAB --pdc PDC --serial S ... --out DIR   S.vcj for each serial,
                        signed by LAB/masa.pem, an end-entity certificate under LAB/masa-root.pem
    lab bundle          --out FILE.tar.gz VCJ ...
    lab consent-key     --out DIR                         ct.key, ct.pub.pem (customer consent-token key)
    lab key-package     --pdc-dir DIR [--consent-key ct.pub.pem] [--package-key KEY.asc ...] --out FILE.cms
    lab consent-response --key ct.key --challenge STRING
"""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from backends.engine import cms
from backends.engine.onboarding import consent, keypackage, voucher
from backends.engine.onboarding.identity import (MASA_ROOT, IdentityError, cert_pem, key_pem, load_cert_pem,
                                                 load_key_pem, make_root_ca)
from yangcore.datastore import atomic_write

from . import lab_artifacts as lab


def add_parser(sub) -> None:
    p = sub.add_parser("lab", help="lab MASA and owner CA: vouchers, owner certificates, key packages")
    lsub = p.add_subparsers(dest="lab_command", required=True)

    q = lsub.add_parser("owner-ca", help="create the owner root CA; its certificate is the PDC")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--name", default="trustplane Lab Owner Root")

    q = lsub.add_parser("owner-cert", help="create an owner certificate chained to the PDC, and its CMS")
    q.add_argument("--pdc-dir", type=Path, required=True, help="the owner-ca output directory")
    q.add_argument("--out", type=Path, help="default: the PDC directory")
    q.add_argument("--intermediate", action="store_true", help="issue it through an intermediate CA")
    q.add_argument("--name", default="Lab Owner Certificate")

    q = lsub.add_parser("voucher", help="issue ownership vouchers (.vcj), signed by the lab MASA")
    q.add_argument("--lab-dir", type=Path, required=True, help="the device's lab directory (MASA root)")
    q.add_argument("--pdc", type=Path, required=True, help="the pinned-domain-cert (PEM)")
    q.add_argument("--serial", action="append", required=True)
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--expires-days", type=float, default=365.0)
    q.add_argument("--assertion", default="logged")
    q.add_argument("--security-profile", choices=voucher.SECURITY_PROFILES)
    q.add_argument("--nonce", help="base64; a nonced voucher has no expires-on")
    q.add_argument("--anima-content-type", action="store_true",
                   help="eContentType id-ct-animaJSONVoucher instead of id-data")
    q.add_argument("--created", help="created-on (RFC 3339); default now")

    q = lsub.add_parser("bundle", help="tar.gz vouchers for oshp-ovoc-apply")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("vouchers", type=Path, nargs="+")

    q = lsub.add_parser("consent-key", help="create a customer consent-token key pair (Ed25519)")
    q.add_argument("--out", type=Path, required=True)

    q = lsub.add_parser("key-package", help="a customer key package signed by the OC: the consent-token key "
                                            "and owner package signing keys")
    q.add_argument("--pdc-dir", type=Path, required=True, help="where oc.pem and oc.key are")
    q.add_argument("--consent-key", type=Path, help="the consent-token public key (PEM)")
    q.add_argument("--package-key", type=Path, action="append", default=[],
                   help="an owner RPM signing key (OpenPGP, armored), named OWN1, OWN2, ...")
    q.add_argument("--out", type=Path, required=True)

    q = lsub.add_parser("consent-response", help="sign a consent-token challenge")
    q.add_argument("--key", type=Path, required=True)
    q.add_argument("--challenge", required=True)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=mode)
    print(path)


def _masa(lab_dir: Path, now: datetime):
    """The lab MASA signer: an end-entity certificate issued once by the lab's MASA root.
    A lab made before the MASA had a root of its own gets one, and a new signer under it."""
    root_key_path, root_path = lab_dir / "masa-root.key", lab_dir / "masa-root.pem"
    if not (root_key_path.exists() and root_path.exists()):
        root_key, root = make_root_ca(now, MASA_ROOT)
        lab_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(root_key_path, key_pem(root_key), mode=0o600)
        atomic_write(root_path, cert_pem(root).encode(), mode=0o644)
        print(f"trustplane lab: made the MASA root {root_path}; a device verifies vouchers with it once it is "
              'in the device\'s "masa-anchors"', file=sys.stderr)
    root_key, root = load_key_pem(root_key_path.read_bytes()), load_cert_pem(root_path.read_bytes())
    key_path, cert_path = lab_dir / "masa.key", lab_dir / "masa.pem"
    if key_path.exists() and cert_path.exists():
        cert = load_cert_pem(cert_path.read_bytes())
        if cert.issuer == root.subject:
            return load_key_pem(key_path.read_bytes()), cert, root
    key, cert = lab.make_masa(root_key, root, now)
    atomic_write(key_path, key_pem(key), mode=0o600)
    atomic_write(cert_path, cert_pem(cert).encode(), mode=0o644)
    return key, cert, root


def _voucher_file(serial: str) -> str:
    """A file name for a serial: any printable text, so path separators are replaced."""
    name = serial.replace("/", "_").replace("\\", "_")
    return f"_{name}.vcj" if name.startswith(".") else f"{name}.vcj"


def run(args) -> int:
    now = datetime.now(timezone.utc)
    try:
        return _run(args, now)
    except (OSError, IdentityError, ValueError) as exc:
        print(f"trustplane lab: {exc}", file=sys.stderr)
        return 2


def _run(args, now: datetime) -> int:
    cmd = args.lab_command
    if cmd == "owner-ca":
        key, cert = lab.make_owner_ca(now, args.name)
        _write(args.out / "pdc.key", key_pem(key), 0o600)
        _write(args.out / "pdc.pem", cert_pem(cert).encode())
    elif cmd == "owner-cert":
        out = args.out or args.pdc_dir
        pdc_key = load_key_pem((args.pdc_dir / "pdc.key").read_bytes())
        pdc = load_cert_pem((args.pdc_dir / "pdc.pem").read_bytes())
        key, cert, chain = lab.make_owner_cert(pdc_key, pdc, now, name=args.name, intermediate=args.intermediate)
        _write(out / "oc.key", key_pem(key), 0o600)
        _write(out / "oc.pem", (cert_pem(cert) + "".join(cert_pem(c) for c in chain)).encode())
        _write(out / "oc.cms", lab.owner_cert_cms(cert, chain, pdc))
    elif cmd == "voucher":
        masa_key, masa_cert, masa_root = _masa(args.lab_dir, now)
        pdc = load_cert_pem(args.pdc.read_bytes())
        created = voucher.parse_datetime(args.created, "--created") if args.created else now
        nonce = voucher.parse_binary(args.nonce, "--nonce") if args.nonce else None
        for serial in args.serial:
            data = lab.make_voucher(masa_key, masa_cert, masa_root, serial, pdc, created,
                                    expires=created + timedelta(days=args.expires_days), assertion=args.assertion,
                                    security_profile=args.security_profile, nonce=nonce,
                                    content_type=cms.ID_CT_ANIMA_JSON_VOUCHER if args.anima_content_type
                                    else cms.ID_DATA)
            _write(args.out / _voucher_file(serial), data)
    elif cmd == "bundle":
        _write(args.out, lab.bundle([(p.name, p.read_bytes()) for p in args.vouchers]))
    elif cmd == "consent-key":
        key = ed25519.Ed25519PrivateKey.generate()
        _write(args.out / "ct.key", key_pem(key), 0o600)
        _write(args.out / "ct.pub.pem", key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    elif cmd == "key-package":
        oc_key = load_key_pem((args.pdc_dir / "oc.key").read_bytes())
        oc = load_cert_pem((args.pdc_dir / "oc.pem").read_bytes())
        keys = [keypackage.Key(f"OWN{i}", "GPGKEY", "owner-packages", p.read_text())
                for i, p in enumerate(args.package_key, 1)]
        if args.consent_key:
            keys.append(keypackage.Key(keypackage.CONSENT_TOKEN_KEY, "X509KEY", "consent-token",
                                       args.consent_key.read_text()))
        if not keys:
            raise ValueError("give --consent-key or --package-key")
        _write(args.out, lab.make_key_package(oc_key, oc, keys, now))
    elif cmd == "consent-response":
        print(consent.sign(load_key_pem(args.key.read_bytes()), args.challenge))
    return 0
