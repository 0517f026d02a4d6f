"""Consent tokens: a challenge the device issues for one privileged action on one node,
answered by the customer consent-token key's signature over the challenge bytes.

Challenge (base64 on the wire):
    magic "TPCT", version 1, then TLVs of (1-byte type, 2-byte big-endian length, value):
    1 serial number, 2 node location, 3 nonce (16 random bytes), 4 action, 5 issued-at
    (8-byte big-endian Unix seconds).
Response (base64): the signature over the challenge bytes by the key: Ed25519; ECDSA with
SHA-256 (DER); RSA PKCS#1 v1.5 with SHA-256.
Each challenge is valid once, for its node and action, for 30 minutes.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ..errors import EngineError

MAGIC = b"TPCT\x01"
LIFETIME = timedelta(minutes=30)
ACTIONS = ("clear-device-ownership", "reimage-protection-enable", "reimage-protection-disable")
MAX_PENDING = 64


class ConsentError(EngineError):
    default_tag = "access-denied"


@dataclass
class Challenge:
    serial: str
    location: str
    action: str
    nonce: bytes
    issued_at: datetime

    def encode(self) -> bytes:
        def tlv(t: int, v: bytes) -> bytes:
            return struct.pack(">BH", t, len(v)) + v
        return (MAGIC + tlv(1, self.serial.encode()) + tlv(2, self.location.encode()) + tlv(3, self.nonce)
                + tlv(4, self.action.encode()) + tlv(5, struct.pack(">Q", int(self.issued_at.timestamp()))))

    def text(self) -> str:
        return base64.b64encode(self.encode()).decode()

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + LIFETIME


def sign(key, challenge_text: str) -> str:
    """The response a consent-token key holder gives (the lab tool uses this)."""
    data = base64.b64decode(challenge_text)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(data)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ConsentError("ct-key-unsupported", "unsupported consent-token key type", tag="invalid-value")
    return base64.b64encode(sig).decode()


def check_signature(public_key, data: bytes, sig: bytes) -> None:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(sig, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise ConsentError("ct-key-unsupported", "unsupported consent-token key type", tag="invalid-value")
    except (InvalidSignature, ValueError):
        raise ConsentError("ct-response-invalid", "the response is not a valid signature over the challenge "
                           "by the customer consent-token key") from None


def _verifies(public_key, data: bytes, sig: bytes) -> bool:
    try:
        check_signature(public_key, data, sig)
        return True
    except ConsentError:
        return False


class ConsentTokens:
    """The pending challenges of a device. One per node and action; a new one replaces the old."""

    def __init__(self):
        self.pending: dict[tuple[str, str], Challenge] = {}
        self.spent: list[bytes] = []  # signatures already used, newest last (bounded)

    def issue(self, serial: str, location: str, action: str, now: datetime) -> Challenge:
        if action not in ACTIONS:
            raise ConsentError("ct-bad-action", f"unknown action {action}", tag="invalid-value")
        if len(self.pending) >= MAX_PENDING and (location, action) not in self.pending:
            self.pending.pop(next(iter(self.pending)))
        c = Challenge(serial, location, action, secrets.token_bytes(16), now.astimezone(timezone.utc))
        self.pending[(location, action)] = c
        return c

    def redeem(self, location: str, action: str, response: str, public_key, now: datetime) -> Challenge:
        """Check a response; on success the challenge is spent. A failure spends nothing."""
        try:
            sig = base64.b64decode("".join(response.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConsentError("ct-response-malformed", "the response is not base64", tag="invalid-value") from None
        if sig in self.spent:
            raise ConsentError("ct-response-replayed", "this response was already used; a response is valid once")
        c = self.pending.get((location, action))
        if c is None:
            raise ConsentError("ct-no-challenge", f"no pending {action} challenge for {location} "
                               "(issued challenges are valid once)")
        if now >= c.expires_at:
            del self.pending[(location, action)]
            raise ConsentError("ct-challenge-expired", f"the challenge for {location} expired at "
                               f"{c.expires_at.isoformat()}; request a new one")
        try:
            check_signature(public_key, c.encode(), sig)
        except ConsentError:
            for (loc, act), other in self.pending.items():
                if loc != location and act == action and _verifies(public_key, other.encode(), sig):
                    raise ConsentError("ct-wrong-node", f"the response answers the challenge for {loc}, "
                                       f"not {location}") from None
            raise
        del self.pending[(location, action)]
        self.spent = (self.spent + [sig])[-MAX_PENDING:]
        return c

    def clear(self) -> None:
        self.pending.clear()
