"""X.509 certification paths to pinned anchors (a practical subset of RFC 5280 §6): the
MASA anchors of a voucher signer, the pinned-domain-cert of an owner certificate, the owner
certificate of a key package signer (RFC 8572 / RFC 8366). certcheck says how this differs,
on purpose, from trustpointpath. So:
- the clock is injected (`at`); nothing here reads the system time;
- trust anchors may be intermediates or the leaf itself (`partial_chain`), like a
  pinned-domain-cert;
- there is no extended-key-usage / TLS-purpose check: voucher signers often carry
  serverAuth/clientAuth EKUs;
- not implemented: certificate policies, name constraints, unknown critical
  extensions, delta/indirect CRLs and CRL distribution-point scoping.

Failures are PathError with a stable `code`, used as a NETCONF error-app-tag.
"""
from __future__ import annotations

import functools
import threading
from datetime import datetime, timezone
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from .certcheck import MAX_PATH_CERTS, MIN_KEY_BITS, ext, key_weakness, readable, subject_text, unique, utc_text
from ..errors import EngineError

MAX_DEPTH = MAX_PATH_CERTS
MAX_CANDIDATES = 64     # anchors + intermediates considered
MAX_STEPS = 2048        # issuer links evaluated in one search: bounds backtracking
MIN_RSA_BITS = MIN_KEY_BITS

UNTRUSTED = "path-untrusted"
EXPIRED = "path-expired"
SIGNATURE_INVALID = "path-signature-invalid"
NOT_CA = "path-not-ca"
WEAK_ALGORITHM = "path-weak-algorithm"
REVOKED = "path-revoked"
CRL_MISSING = "path-crl-missing"

# When a path fails for several reasons, report the first of these that applies:
# a broken signature means the path is not real, revocation is an explicit verdict,
# and a missing CRL is the least about the certificates themselves.
_PRIORITY = (SIGNATURE_INVALID, REVOKED, NOT_CA, WEAK_ALGORITHM, EXPIRED, CRL_MISSING)


class PathError(EngineError):
    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _spki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (UnsupportedAlgorithm, ValueError):
        return None


def _verify_raw(key, signature: bytes, data: bytes, hash_alg, params) -> bool:
    """Verify by hand, requiring the signature algorithm to fit the key type (no algorithm confusion)."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(params, (padding.PKCS1v15, padding.PSS)) or hash_alg is None:
                return False
            key.verify(signature, data, params, hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            key.verify(signature, data, params)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            if hash_alg is not None or params is not None:
                return False
            key.verify(signature, data)
        elif isinstance(key, dsa.DSAPublicKey):
            if hash_alg is None:
                return False
            key.verify(signature, data, hash_alg)
        else:
            return False
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
        return False
    return True


def _signed_by(obj, key, tbs: bytes) -> bool:
    """Signature of a certificate or CRL (`obj`, with its `tbs` bytes) checked with `key`."""
    try:
        hash_alg = obj.signature_hash_algorithm
        params = obj.signature_algorithm_parameters
    except (UnsupportedAlgorithm, ValueError):
        return False
    if params is None and hash_alg is not None:
        # cryptography gives no parameters for algorithms it will not verify itself (SHA-1)
        if isinstance(key, ec.EllipticCurvePublicKey):
            params = ec.ECDSA(hash_alg)
        elif isinstance(key, rsa.RSAPublicKey):
            params = padding.PKCS1v15()
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        wanted = (x509.SignatureAlgorithmOID.ED25519 if isinstance(key, ed25519.Ed25519PublicKey)
                  else x509.SignatureAlgorithmOID.ED448)
        if obj.signature_algorithm_oid != wanted:
            return False
    return _verify_raw(key, obj.signature, tbs, hash_alg, params)


@functools.lru_cache(maxsize=1024)
def _cert_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Memoized: the answer depends only on the two certificates (hashed by their DER), and
    bulk voucher checks see the same signer chain again and again."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Unsupported key/algorithm combination for the built-in check: do it by hand.
        pass
    if cert.issuer != issuer.subject:
        return False
    try:
        key = issuer.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return False
    return _signed_by(cert, key, cert.tbs_certificate_bytes)


def _weak_signature(obj, allow_sha1: bool) -> str | None:
    """Why the signature algorithm of a certificate or CRL is refused, or None."""
    try:
        hash_alg = obj.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"unsupported signature algorithm {obj.signature_algorithm_oid.dotted_string}"
    if isinstance(hash_alg, hashes.MD5):
        return "MD5"
    if isinstance(hash_alg, hashes.SHA1) and not allow_sha1:
        return "SHA-1"
    return None


def _validity_error(cert: x509.Certificate, at: datetime, role: str) -> PathError | None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if nb <= at <= na:
        return None
    state = "not yet valid" if at < nb else "expired"
    return PathError(EXPIRED, f"{role} certificate {subject_text(cert)} is {state} at {utc_text(at)} "
                              f"(notBefore {utc_text(nb)}, notAfter {utc_text(na)})")


class _Search:
    """Depth-first path building from the leaf with backtracking; keeps the best failed path."""

    def __init__(self, anchors, intermediates, crls, at, allow_sha1, partial_chain, require_revocation,
                 anchor_min_rsa_bits=MIN_RSA_BITS):
        self.anchor_min_rsa_bits = anchor_min_rsa_bits
        self.anchors = anchors
        self.intermediates = intermediates
        self.crls = crls
        self.at = at
        self.allow_sha1 = allow_sha1
        self.partial_chain = partial_chain
        self.require_revocation = require_revocation
        keys = ((a.subject.public_bytes(), _spki(a)) for a in anchors)
        self.anchor_keys = {k for k in keys if k[1] is not None}
        self.steps = 0
        self.found: list[x509.Certificate] | None = None
        self.best: tuple[tuple, list, list] | None = None   # (rank, path, failures)
        self._sig_cache: dict[tuple[x509.Certificate, x509.Certificate], bool] = {}
        self._crl_cache: dict[x509.Certificate, list[x509.CertificateRevocationList]] = {}

    # --- trust anchors -------------------------------------------------------------

    def is_anchor(self, cert: x509.Certificate) -> bool:
        if cert in self.anchors:
            return True
        # A re-issued anchor (same subject and key, other serial or dates) is the same anchor.
        return (cert.subject.public_bytes(), _spki(cert)) in self.anchor_keys

    def signed_by(self, cert, issuer) -> bool:
        k = (cert, issuer)
        if k not in self._sig_cache:
            self._sig_cache[k] = _cert_signed_by(cert, issuer)
        return self._sig_cache[k]

    def terminates(self, cert) -> bool:
        """A path ends at an anchor; without partial_chain only at a self-signed one."""
        if not self.is_anchor(cert):
            return False
        return self.partial_chain or (cert.subject == cert.issuer and self.signed_by(cert, cert))

    # --- issuers and links -----------------------------------------------------------

    def issuers(self, cert: x509.Certificate, path: list) -> list[x509.Certificate]:
        aki = ext(cert, x509.AuthorityKeyIdentifier)
        aki_id = aki.key_identifier if aki is not None else None
        out = []
        for cand in (*self.anchors, *self.intermediates):
            if cand in path or cand.subject != cert.issuer:
                continue
            if aki_id is not None:
                ski = ext(cand, x509.SubjectKeyIdentifier)
                if ski is not None and ski.digest != aki_id:
                    continue
            out.append(cand)
        return out

    def usable_crls(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs by this issuer that are signed by its key and current at `at`."""
        if issuer in self._crl_cache:
            return self._crl_cache[issuer]
        ku = ext(issuer, x509.KeyUsage)
        out = []
        if ku is None or ku.crl_sign:
            try:
                key = issuer.public_key()
            except (UnsupportedAlgorithm, ValueError):
                key = None
            for crl in self.crls:
                if key is None or crl.issuer != issuer.subject:
                    continue
                if crl.next_update_utc is None or not (crl.last_update_utc <= self.at <= crl.next_update_utc):
                    continue
                if self._crl_signed_by(crl, key):
                    out.append(crl)
        self._crl_cache[issuer] = out
        return out

    @staticmethod
    def _crl_signed_by(crl, key) -> bool:
        try:
            return crl.is_signature_valid(key)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            return _signed_by(crl, key, crl.tbs_certlist_bytes)

    def link_failures(self, path: list, issuer: x509.Certificate, is_anchor: bool) -> list[PathError]:
        """Everything wrong with putting `issuer` above path[-1]."""
        cert = path[-1]
        fails = []
        weak = _weak_signature(cert, self.allow_sha1)
        if weak:
            fails.append(PathError(WEAK_ALGORITHM, f"{subject_text(cert)} is signed with {weak}"))
        # MD5 and unknown algorithms are refused outright and cryptography won't verify them:
        # a failed verification would only hide that reason.
        if weak in (None, "SHA-1") and not self.signed_by(cert, issuer):
            fails.append(PathError(SIGNATURE_INVALID, f"signature of {subject_text(cert)} does not verify "
                                                      f"with the key of {subject_text(issuer)}"))
        weak = key_weakness(issuer, self.anchor_min_rsa_bits if is_anchor else MIN_RSA_BITS)
        if weak:
            fails.append(PathError(WEAK_ALGORITHM, f"issuer {subject_text(issuer)} has a {weak}"))
        fails += self.ca_failures(path, issuer)
        expired = _validity_error(issuer, self.at, "trust anchor" if is_anchor else "intermediate")
        if expired:
            fails.append(expired)
        fails += self.revocation_failures(cert, issuer)
        return fails

    @staticmethod
    def ca_failures(path: list, issuer: x509.Certificate) -> list[PathError]:
        bc = ext(issuer, x509.BasicConstraints)
        if bc is None or not bc.ca:
            return [PathError(NOT_CA, f"issuer {subject_text(issuer)} is not a CA (basicConstraints cA is not TRUE)")]
        fails = []
        ku = ext(issuer, x509.KeyUsage)
        if ku is not None and not ku.key_cert_sign:
            fails.append(PathError(NOT_CA, f"issuer {subject_text(issuer)} keyUsage lacks keyCertSign"))
        # pathLenConstraint counts the non-self-issued intermediates below the issuer (not the leaf).
        below = sum(1 for c in path[1:] if c.subject != c.issuer)
        if bc.path_length is not None and below > bc.path_length:
            fails.append(PathError(NOT_CA, f"issuer {subject_text(issuer)} pathLenConstraint {bc.path_length} "
                                           f"exceeded by {below} intermediate(s) below it"))
        return fails

    def revocation_failures(self, cert, issuer) -> list[PathError]:
        crls = self.usable_crls(issuer)
        for crl in crls:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                return [PathError(REVOKED, f"{subject_text(cert)} (serial {cert.serial_number:#x}) is revoked "
                                           f"by {subject_text(issuer)} since {utc_text(entry.revocation_date_utc)}")]
        if self.require_revocation and not crls:
            return [PathError(CRL_MISSING, f"no current CRL from {subject_text(issuer)} with a valid signature "
                                           f"to check {subject_text(cert)}")]
        return []

    # --- search ----------------------------------------------------------------------

    def record(self, path: list, fails: list, anchored: bool) -> None:
        # An anchored path beats a dead end; then fewer failures; dead ends prefer going further.
        rank = (anchored, -len(fails), 0 if anchored else len(path))
        if self.best is None or rank > self.best[0]:
            self.best = (rank, list(path), list(fails))

    def cannot_improve(self, fails: list) -> bool:
        return self.best is not None and self.best[0][0] and len(fails) >= -self.best[0][1]

    def extend(self, path: list, fails: list) -> None:
        if len(path) >= MAX_DEPTH:
            self.record(path, fails + [PathError(UNTRUSTED, f"path longer than {MAX_DEPTH} certificates")], False)
            return
        options = []
        for cand in self.issuers(path[-1], path):
            self.steps += 1
            if self.steps > MAX_STEPS:
                return
            anchored = self.terminates(cand)
            options.append((cand, anchored, self.link_failures(path, cand, anchored)))
        if not options:
            self.record(path, fails, False)
            return
        # Try clean links first (stable, so anchors still come before intermediates).
        options.sort(key=lambda o: len(o[2]) > 0)
        for cand, anchored, link_fails in options:
            new_fails = fails + link_fails
            if self.cannot_improve(new_fails):
                continue
            if anchored:
                self.record(path + [cand], new_fails, True)
                if not new_fails:
                    self.found = path + [cand]
                    return
            else:
                self.extend(path + [cand], new_fails)
                if self.found is not None or self.steps > MAX_STEPS:
                    return

    def error(self, leaf: x509.Certificate) -> PathError:
        if self.best is None:
            return PathError(UNTRUSTED, f"no path from {subject_text(leaf)} to a trust anchor (search limit reached)")
        (anchored, _, _), path, fails = self.best
        if not anchored:
            top = path[-1]
            why = next((f.message for f in fails if f.code == UNTRUSTED), None)
            return PathError(UNTRUSTED, f"no path from {subject_text(leaf)} to a trust anchor: "
                             + (why or f"no trusted or intermediate certificate issued {subject_text(top)} "
                                       f"(issuer {top.issuer.rfc4514_string()})"))
        return min(fails, key=lambda f: _PRIORITY.index(f.code))


def validate(leaf: x509.Certificate, anchors: Iterable[x509.Certificate],
             intermediates: Iterable[x509.Certificate] = (), *,
             at: datetime, allow_sha1: bool = False, partial_chain: bool = True,
             crls: Iterable[x509.CertificateRevocationList] = (),
             require_revocation: bool = False, anchor_min_rsa_bits: int = MIN_RSA_BITS) -> list[x509.Certificate]:
    """Build and validate a path from `leaf` to a trust anchor; return [leaf, ..., anchor].

    anchor_min_rsa_bits relaxes the RSA size rule for the trust anchor alone (a pinned
    anchor is trusted as given, not verified); every other key needs MIN_RSA_BITS.

    Raises PathError for the most specific failure of the best candidate path.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be a timezone-aware datetime")
    at = at.astimezone(timezone.utc)
    anchors, intermediates, crls = list(anchors), list(intermediates), list(crls)
    key = None
    if not crls and not require_revocation:
        key = (id(leaf), tuple(map(id, anchors)), tuple(map(id, intermediates)), allow_sha1, partial_chain,
               anchor_min_rsa_bits)
        found = _paths.get(key)
        if found is not None and found[2] <= at <= found[3]:
            return list(found[1])
    path = _search_path(leaf, anchors, intermediates, at, allow_sha1, partial_chain, crls, require_revocation,
                        anchor_min_rsa_bits)
    if key is not None:
        # the path holds while every certificate on it is within its validity dates
        window = (max(c.not_valid_before_utc for c in path), min(c.not_valid_after_utc for c in path))
        with _paths_lock:
            if len(_paths) >= _PATHS_KEPT:
                _paths.pop(next(iter(_paths)))
            _paths[key] = ((leaf, anchors, intermediates), tuple(path), *window)
    return path


# Paths validated without revocation data, keyed by all the inputs but the time. Only the
# validity dates depend on the time, so a path found earlier still holds when each of its
# certificates is current now; a bulk install checks the same signer chain once.
# The certificates are keyed by identity, since hashing one costs more than a hit; each
# entry holds its inputs, so their ids name no other objects while it exists. Equal
# certificates loaded apart miss and are searched again (cms.certificate shares them).
_PATHS_KEPT = 256
_paths: dict[tuple, tuple[tuple, tuple[x509.Certificate, ...], datetime, datetime]] = {}
_paths_lock = threading.Lock()


def _search_path(leaf, anchors, intermediates, at, allow_sha1, partial_chain, crls, require_revocation,
                 anchor_min_rsa_bits) -> list[x509.Certificate]:
    anchors = unique(anchors)
    anchor_set = set(anchors)
    intermediates = [c for c in unique(intermediates) if c not in anchor_set and readable(c)]
    anchors = [a for a in anchors if readable(a)]
    if len(anchors) + len(intermediates) > MAX_CANDIDATES:
        raise PathError(UNTRUSTED, f"too many candidate certificates "
                                   f"({len(anchors) + len(intermediates)} > {MAX_CANDIDATES})")
    if not readable(leaf):
        raise PathError(UNTRUSTED, f"{subject_text(leaf)} has a malformed name or malformed extensions")

    search = _Search(anchors, intermediates, crls, at, allow_sha1, partial_chain, require_revocation,
                     anchor_min_rsa_bits)
    # The leaf pinned as an anchor is trusted as it is: only its validity matters.
    if search.terminates(leaf):
        expired = _validity_error(leaf, at, "trust anchor")
        if expired:
            raise expired
        return [leaf]

    fails = []
    expired = _validity_error(leaf, at, "leaf")
    if expired:
        fails.append(expired)
    weak = key_weakness(leaf)
    if weak:
        fails.append(PathError(WEAK_ALGORITHM, f"leaf {subject_text(leaf)} has a {weak}"))
    search.extend([leaf], fails)
    if search.found is not None:
        return search.found
    raise search.error(leaf)


def check_key_usage_digital_signature(cert: x509.Certificate) -> None:
    """RFC 8572 owner certificate rule: keyUsage, when present, must include digitalSignature."""
    try:
        ku = ext(cert, x509.KeyUsage)
    except ValueError as e:
        raise PathError("oc-key-usage", f"{subject_text(cert)} has malformed extensions: {e}") from None
    if ku is not None and not ku.digital_signature:
        raise PathError("oc-key-usage", f"{subject_text(cert)} keyUsage does not include digitalSignature")
