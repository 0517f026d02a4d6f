"""Certificate path validation against a trust point, then the trust pool, with CRL checks.
certcheck says how this differs, on purpose, from pinnedpath.

The path itself is built and checked by cryptography.x509.verification (a client verifier):
signatures, validity at `at`, basicConstraints cA and pathLenConstraint on CAs, name
constraints, X.509 v3 only, RSA signing keys of certcheck.MIN_KEY_BITS or more, no SHA-1 or MD5
signatures, and refusal of unknown critical extensions. The end-entity extension policy
permits everything, so a router certificate without subjectAltName or extendedKeyUsage still
validates; the CA policy requires basicConstraints with cA set. The leaf's own key signs
nothing in the path, so it is checked here (certcheck.key_weakness). Not checked:
certificate policies and the end entity's key usage (the caller checks what its protocol
needs).

Precedence follows IOS XR: the trust point's CAs and CRL policy are tried first; the trust
pool and its CRL policy only when the trust point gives no path at all. A path that exists
but fails (expired, revoked, CRL unavailable) is final.

Revocation, when the policy requires it: every certificate of the path but the anchor is
looked up in its issuer's CRL, taken from its distribution point URIs in order until one
gives a valid, current CRL. A certificate without a distribution point passes; one whose
every distribution point fails is refused (crl-unavailable: fail closed).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

from cryptography import x509
from cryptography.x509.verification import (
    Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError)

from .certcheck import MAX_PATH_CERTS, key_weakness, readable, subject_text, utc_text
from .crl import CrlCache, CrlError
from ..errors import EngineError
from .expiry import serial_text

UNTRUSTED = "cert-untrusted"
EXPIRED = "cert-expired"
REVOKED = "cert-revoked"
CRL_UNAVAILABLE = "crl-unavailable"
CA_EXPIRED = "ca-expired"

MAX_DEPTH = MAX_PATH_CERTS - 2  # intermediate CAs in a path
MAX_INTERMEDIATES = 64
MAX_ANCHORS = 4096          # a trust pool of MAX_BUNDLE_CERTS plus the built-in ones fits
MAX_DP_URIS = 8             # distribution point URIs tried per certificate
MAX_DIAGNOSE_STEPS = 512    # signature checks spent explaining a failure
MAX_REASON = 300


class TrustpointPathError(EngineError):
    default_tag = "invalid-value"


@dataclass
class Verified:
    chain: list[x509.Certificate]   # leaf first, trust anchor last
    source: str                     # "trustpoint" or "trustpool"


def _require_ca(_policy, cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    if not bc.ca:
        raise ValueError(f"{cert.subject.rfc4514_string()} is not a CA (basicConstraints cA is false)")


_EE_POLICY = ExtensionPolicy.permit_all()
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)


def _who(cert: x509.Certificate) -> str:
    return f"{subject_text(cert)} (serial {serial_text(cert.serial_number)})"


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def is_expired_anchor(cert: x509.Certificate, at: datetime) -> bool:
    """Whether a trust point or trust pool CA is outside its validity at `at`: paths ending at
    it fail with ca-expired, not cert-untrusted."""
    return not _valid_at(cert, at)


def _validity_error(path: list[x509.Certificate], at: datetime) -> TrustpointPathError | None:
    """The first certificate of `path` outside its validity at `at`, in RFC 5280 processing
    order (anchor first, then down to the leaf)."""
    for i in range(len(path) - 1, -1, -1):
        cert = path[i]
        if _valid_at(cert, at):
            continue
        state = "not yet valid" if at < cert.not_valid_before_utc else "expired"
        span = f"notBefore {utc_text(cert.not_valid_before_utc)}, notAfter {utc_text(cert.not_valid_after_utc)}"
        if i == len(path) - 1 and len(path) > 1:
            return TrustpointPathError(CA_EXPIRED, f"CA certificate {_who(cert)} is {state} at {utc_text(at)} ({span})")
        role = "certificate" if i == 0 else "intermediate CA certificate"
        return TrustpointPathError(EXPIRED, f"{role} {_who(cert)} is {state} at {utc_text(at)} ({span})")
    return None


def _linked_paths(leaf, intermediates, anchors) -> Iterator[list[x509.Certificate]]:
    """Paths from the leaf to an anchor in which each certificate's issuer name matches and
    its signature verifies, ignoring time and policy: what the verifier could have meant.
    Depth-first, bounded by MAX_DEPTH and MAX_DIAGNOSE_STEPS."""
    anchor_set = set(anchors)
    by_subject: dict[x509.Name, list[x509.Certificate]] = {}
    for c in (*anchors, *intermediates):
        by_subject.setdefault(c.subject, []).append(c)
    steps = 0

    def walk(path):
        nonlocal steps
        cert = path[-1]
        if cert in anchor_set:
            yield list(path)
            return
        if len(path) > MAX_DEPTH + 1:
            return
        for cand in by_subject.get(cert.issuer, ()):
            if cand in path:
                continue
            steps += 1
            if steps > MAX_DIAGNOSE_STEPS:
                return
            try:
                cert.verify_directly_issued_by(cand)
            except Exception:   # wrong key, unsupported algorithm: not a link either way
                continue
            path.append(cand)
            yield from walk(path)
            path.pop()

    yield from walk([leaf])


def _diagnose(leaf, intermediates, anchors, at, reason: str, where: str) -> TrustpointPathError:
    """Turns a verifier failure into the most useful error: the expired certificate of an
    otherwise linked path, else cert-untrusted with the verifier's reason."""
    first_time_error = None
    policy_failure = False
    for n, path in enumerate(_linked_paths(leaf, intermediates, anchors)):
        if n >= 16:
            break
        err = _validity_error(path, at)
        if err is None:
            policy_failure = True
            break
        first_time_error = first_time_error or err
    if first_time_error is not None and not policy_failure:
        return first_time_error
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON - 3] + "..."
    if policy_failure:
        return TrustpointPathError(UNTRUSTED, f"certificate {_who(leaf)} chains to a CA of the {where} but "
                                       f"the path is not acceptable: {reason}")
    message = f"certificate {_who(leaf)} does not chain to a CA of the {where}"
    if "with no interior errors" not in reason:
        # A candidate issuer was found but refused (say, a forbidden signature algorithm).
        message += f": {reason}"
    return TrustpointPathError(UNTRUSTED, message)


def _build(leaf, intermediates, anchors, at, where: str) -> list[x509.Certificate]:
    verifier = (PolicyBuilder().store(Store(anchors)).time(at).max_chain_depth(MAX_DEPTH)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        chain = list(verifier.verify(leaf, intermediates).chain)
    except VerificationError as e:
        raise _diagnose(leaf, intermediates, anchors, at, str(e), where) from None
    except x509.UnsupportedGeneralNameType:
        # The path is valid but its leaf's subjectAltName holds a name type the verified-client
        # result cannot express; the chain is then one of the linked, in-date paths.
        chain = next((p for p in _linked_paths(leaf, intermediates, anchors)
                      if _validity_error(p, at) is None), None)
        if chain is None:
            raise TrustpointPathError(UNTRUSTED, f"certificate {_who(leaf)}: path found but not recoverable") from None
    # The anchor's own dates are checked here whatever the verifier did with them.
    err = _validity_error(chain, at)
    if err is not None:
        raise err
    return chain


def _dp_uris(cert: x509.Certificate) -> list[str] | None:
    """URIs of the certificate's CRL distribution points; None when it has no such extension."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:
        raise TrustpointPathError(UNTRUSTED, f"certificate {_who(cert)} has malformed extensions: {e}") from None
    uris = []
    for dp in cdp:
        for name in dp.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value not in uris:
                uris.append(name.value)
    return uris


def _check_revocation(chain, at, crls: CrlCache | None, where: str) -> None:
    for i, cert in enumerate(chain[:-1]):
        issuer = chain[i + 1]
        uris = _dp_uris(cert)
        if uris is None:
            continue
        if crls is None:
            raise TrustpointPathError(CRL_UNAVAILABLE, f"revocation check of {_who(cert)} is required by the "
                                                f"{where} policy but no CRL cache is set up",
                               tag="operation-failed")
        failures = []
        for url in uris[:MAX_DP_URIS]:
            try:
                crl = crls.get(url, issuer, at)
            except CrlError as e:
                failures.append(e.message)
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise TrustpointPathError(REVOKED, f"certificate {_who(cert)} was revoked on "
                                            f"{utc_text(entry.revocation_date_utc)} (CRL {url})")
            # Distribution points of one certificate are mirrors of its issuer's complete
            # CRL: the first one obtained decides, and dead mirrors after it cost nothing.
            break
        else:
            detail = "; ".join(failures) if failures else "no usable distribution point URI"
            if len(detail) > 4 * MAX_REASON:
                detail = detail[:4 * MAX_REASON - 3] + "..."
            raise TrustpointPathError(CRL_UNAVAILABLE, f"no CRL available for {_who(cert)} and the {where} "
                                                f"policy requires one: {detail}", tag="operation-failed")


def _bounded(name: str, certs, limit: int) -> list[x509.Certificate]:
    certs = list(certs)
    if len(certs) > limit:
        raise TrustpointPathError(UNTRUSTED, f"{len(certs)} {name} given, over the limit of {limit}")
    return certs


def verify(leaf: x509.Certificate, *, intermediates: list[x509.Certificate],
           trustpoint_cas: list[x509.Certificate], trustpool: list[x509.Certificate], at: datetime,
           trustpoint_crl_optional: bool, trustpool_crl_optional: bool,
           crls: CrlCache | None) -> Verified:
    """Validates `leaf` at time `at` (timezone-aware).

    Tries the trust point's CAs as trust anchors first, with the trust point's CRL policy;
    only if that gives no path (cert-untrusted), tries the trust pool with the pool's CRL
    policy. Raises TrustpointPathError: cert-untrusted, cert-expired, ca-expired, cert-revoked or
    crl-unavailable.
    """
    if at.tzinfo is None:
        raise ValueError("verify() needs a timezone-aware time")
    at = at.astimezone(timezone.utc)
    intermediates = [c for c in _bounded("intermediate certificates", intermediates, MAX_INTERMEDIATES)
                     if readable(c)]
    if not readable(leaf):
        raise TrustpointPathError(UNTRUSTED, f"certificate {_who(leaf)} has a malformed name or malformed extensions")
    weak = key_weakness(leaf)
    if weak is not None:
        raise TrustpointPathError(UNTRUSTED, f"certificate {_who(leaf)} is refused: {weak}")
    attempts = (("trust point", "trustpoint", trustpoint_cas, trustpoint_crl_optional),
                ("trust pool", "trustpool", trustpool, trustpool_crl_optional))
    untrusted: list[str] = []
    for where, source, anchors, crl_optional in attempts:
        anchors = [a for a in _bounded(f"{where} CA certificates", anchors, MAX_ANCHORS) if readable(a)]
        if not anchors:
            continue
        try:
            chain = _build(leaf, intermediates, anchors, at, where)
        except TrustpointPathError as e:
            if e.code != UNTRUSTED:
                raise
            untrusted.append(e.message)
            continue
        if not crl_optional:
            _check_revocation(chain, at, crls, where)
        return Verified(chain=chain, source=source)
    if not untrusted:
        raise TrustpointPathError(UNTRUSTED, f"certificate {_who(leaf)} cannot be verified: "
                                      "the trust point and the trust pool hold no usable CA certificate")
    raise TrustpointPathError(UNTRUSTED, "; ".join(untrusted))
