"""Device ownership: reading a voucher bundle, authenticating the owner certificate
against the pinned-domain-cert (RFC 8572 §5.4 step 2), and choosing the vouchers of
this device from a bundle.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Iterator

from cryptography import x509

from . import voucher
from .. import cms, decompress
from ..x509 import certcheck, pinnedpath
from ..errors import EngineError

MAX_MEMBERS = 10_000
MAX_MEMBER = 256 * 1024
MAX_BUNDLE = 64 * 1024 * 1024  # the file as given, and the tar it decompresses to
MAX_TAR_EXTENSION = 64 * 1024  # a pax or GNU long-name header, read whole into memory


class OwnershipError(EngineError):
    pass


class _Member(tarfile.TarInfo):
    """A tar header whose extension (pax records, a GNU long name) is refused when large,
    before tarfile reads it into memory."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENSIONS and info.size > MAX_TAR_EXTENSION:
            raise decompress.TooLarge(f"a tar header extension of {info.size} bytes is over "
                                      f"{MAX_TAR_EXTENSION} bytes")
        return info


_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)


def read_bundle(data: bytes, name: str = "bundle") -> Iterator[tuple[str, bytes]]:
    """The members of a tar, or a tar compressed with gzip, bzip2, xz or zstd, of vouchers
    (flat; directories are skipped), one at a time: each member is read as it is asked for,
    so a bundle is never held whole in memory decompressed. A single voucher (DER CMS, or
    PEM or base64 text of one) is taken as a bundle of one. The tar is read as it is
    decompressed, and never past MAX_BUNDLE bytes."""
    if len(data) > MAX_BUNDLE:
        raise OwnershipError("ov-bundle-too-large", f"{name} is over {MAX_BUNDLE} bytes", tag="invalid-value")
    compression = decompress.sniff(data[:6])
    if data[:1] == b"\x30" or (compression is None and _is_armored(data)):
        yield name, data
        return
    count, total = 0, 0
    try:
        raw = io.BytesIO(data)
        stream = decompress.Bounded(decompress.OPENERS[compression](raw) if compression else raw, MAX_BUNDLE)
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Member) as tar:
            for i, member in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise OwnershipError("ov-bundle-too-large", f"{name} has over {MAX_MEMBERS} members",
                                         tag="invalid-value")
                if member.isdir():
                    continue
                if not member.isfile() or member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
                    raise OwnershipError("ov-bundle-corrupt", f"{name}: {member.name} is not a regular file",
                                         tag="invalid-value")
                if member.size > MAX_MEMBER:
                    raise OwnershipError("ov-bundle-corrupt", f"{name}: {member.name} is over {MAX_MEMBER} bytes",
                                         tag="invalid-value")
                total += member.size
                if total > MAX_BUNDLE:
                    raise decompress.TooLarge(f"the members are over {MAX_BUNDLE} bytes in all")
                count += 1
                yield member.name, tar.extractfile(member).read(MAX_MEMBER + 1)
    except decompress.TooLarge as exc:
        raise OwnershipError("ov-bundle-too-large", f"{name}: {exc}", tag="invalid-value") from None
    except (tarfile.TarError, *decompress.ERRORS) as exc:
        raise OwnershipError("ov-bundle-corrupt", f"{name} is not a readable tar or compressed tar: {exc}",
                             tag="invalid-value") from None
    if not count:
        raise OwnershipError("ov-bundle-empty", f"{name} holds no vouchers", tag="invalid-value")


_BASE64_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n\t "


def _is_armored(data: bytes) -> bool:
    """Whether data is the PEM or base64 text of one CMS, which a tar never is."""
    return data.lstrip().startswith(b"-----BEGIN") or (bool(data.strip()) and not data.translate(None, _BASE64_TEXT))


def _owner_cert(sd: cms.SignedData) -> x509.Certificate:
    """The signer of a signed OC artifact, or, in a certs-only one, the certificate that issues none of the others."""
    if sd.signers:
        certs = cms.verify(sd)
        return certs[0]
    certs = [c for c in sd.certificates if certcheck.readable(c)]
    if not certs:
        raise OwnershipError("oc-malformed", "the owner certificate CMS holds no readable certificate", tag="invalid-value")
    leaves = [c for c in certs if not any(o is not c and o.issuer == c.subject and o.subject != c.subject
                                          for o in certs)]
    if len(leaves) != 1:
        raise OwnershipError("oc-malformed", "the owner certificate CMS holds no single end certificate",
                             tag="invalid-value")
    return leaves[0]


@dataclass
class OwnerCertificate:
    chain: list[x509.Certificate]  # OC first, PDC last
    crls: list = field(default_factory=list)

    @property
    def oc(self) -> x509.Certificate:
        return self.chain[0]


def verify_oc(data: bytes, pdc: x509.Certificate, *, at: datetime, partial_match: bool = False,
              crl_optional: bool = False, revocation_checks: bool | None = None,
              allow_sha1: bool = False, pdc_min_rsa_bits: int = 2048) -> OwnerCertificate:
    """Authenticate the owner certificate artifact with the PDC as the only trust anchor.

    partial_match: the PDC need not be self-signed (an intermediate, or the OC itself);
    without it the PDC must be a self-signed root. revocation_checks is the voucher's
    domain-cert-revocation-checks: True needs a current CRL for every certificate below
    the PDC unless crl_optional; False skips revocation; None uses CRLs when given.
    pdc_min_rsa_bits: the smallest RSA key accepted for the PDC itself."""
    try:
        sd = cms.load(data)
        oc = _owner_cert(sd)
    except cms.CmsError as exc:
        raise OwnershipError("oc-malformed", f"owner certificate: {exc.message}", tag="invalid-value") from None
    if not partial_match and pdc.issuer != pdc.subject:
        raise OwnershipError("oc-partial-chain", "the pinned-domain-cert is not a root; "
                             "cert-chain-partial-match is needed to trust an intermediate")
    crls = []
    for der in sd.crls if revocation_checks is not False else ():
        try:
            crls.append(x509.load_der_x509_crl(der))
        except ValueError:
            raise OwnershipError("oc-malformed", "a CRL in the owner certificate CMS is unreadable",
                                 tag="invalid-value") from None
    try:
        path = pinnedpath.validate(oc, [pdc], sd.certificates, at=at, allow_sha1=allow_sha1, partial_chain=True,
                                   crls=crls, require_revocation=bool(revocation_checks) and not crl_optional,
                                   anchor_min_rsa_bits=pdc_min_rsa_bits)
        pinnedpath.check_key_usage_digital_signature(oc)
    except pinnedpath.PathError as exc:
        code = {"path-untrusted": "oc-untrusted", "path-signature-invalid": "oc-untrusted",
                "path-expired": "oc-expired", "path-revoked": "oc-revoked", "path-crl-missing": "oc-crl-missing",
                "oc-key-usage": "oc-key-usage"}.get(exc.code, "oc-invalid")
        raise OwnershipError(code, f"owner certificate {certcheck.subject_text(oc)}: {exc.message}") from None
    return OwnerCertificate(path, crls)


@dataclass
class Selection:
    chosen: dict[str, tuple[str, voucher.Voucher]]  # serial -> (member name, voucher)
    foreign: list[str]  # members for other devices
    rejected: list[tuple[str, str, str, str]]  # (member name, serial it names or "", error code, reason)
    names: list[str] = field(default_factory=list)  # every member, in bundle order


def select(members: Iterable[tuple[str, bytes]], serials: set[str], *, anchors: list[x509.Certificate],
           at: datetime, idevids: dict[str, x509.Certificate], nonces: Iterable[bytes] = (),
           device_anchors: list[x509.Certificate] = ()) -> Selection:
    """Pick, for each local serial, the first voucher in the bundle that verifies; later ones
    for the same serial are rejected as duplicates. Vouchers for other serials are reported.
    The members are taken one at a time and only their names are kept."""
    sel = Selection({}, [], [])
    nonces = list(nonces)
    for name, data in members:
        sel.names.append(name)
        try:
            claimed = _claimed_serial(data)
        except (cms.CmsError, voucher.VoucherError) as exc:
            sel.rejected.append((name, "", exc.code if exc.code == "ov-no-content" else "ov-malformed", exc.message))
            continue
        if claimed not in serials:
            sel.foreign.append(name)
            continue
        if claimed in sel.chosen:
            sel.rejected.append((name, claimed, "ov-duplicate",
                                 f"duplicate voucher for {claimed}: {sel.chosen[claimed][0]} is applied"))
            continue
        try:
            v = voucher.verify(data, anchors=anchors, serial=claimed, at=at, idevid=idevids.get(claimed),
                               nonces=nonces, device_anchors=device_anchors)
        except voucher.VoucherError as exc:
            sel.rejected.append((name, claimed, exc.code, exc.message))
            continue
        sel.chosen[claimed] = (name, v)
    return sel


def _claimed_serial(data: bytes) -> str:
    """The serial a voucher names, read without trusting or checking it: only to route it to a node."""
    content = cms.load(data).content
    if content is None:
        raise voucher.VoucherError("ov-no-content", voucher.NO_CONTENT)
    serial = voucher.members(content).get("serial-number")
    if not isinstance(serial, str):
        raise voucher.VoucherError("ov-malformed", "the voucher names no serial-number")
    return serial
