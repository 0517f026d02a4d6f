"""The OpenPGP subset that RPM signatures need (RFC 4880): public keys (RSA,
EdDSA/Ed25519, ECDSA P-256/384/521) and version 4 signatures over a byte string.
Parsing is bounded by the input; the maths is cryptography's.
"""
from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from ..errors import EngineError

HASHES = {2: ("sha1", hashes.SHA1), 8: ("sha256", hashes.SHA256), 9: ("sha384", hashes.SHA384),
          10: ("sha512", hashes.SHA512), 11: ("sha224", hashes.SHA224)}
WEAK_HASHES = {2}  # SHA-1 signatures are refused
RSA_ALGOS, ECDSA, EDDSA = (1, 3), 19, 22
CURVES = {bytes.fromhex("2a8648ce3d030107"): ec.SECP256R1(), bytes.fromhex("2b81040022"): ec.SECP384R1(),
          bytes.fromhex("2b81040023"): ec.SECP521R1()}
ED25519_OID = bytes.fromhex("2b06010401da470f01")
MIN_RSA_BITS = 2048


class OpenPGPError(EngineError):
    def __init__(self, message: str):
        super().__init__("openpgp-invalid", message, "invalid-value")


@dataclass(frozen=True)
class PublicKey:
    key_id: str  # 16 lowercase hex digits
    fingerprint: str
    algo: int
    key: object  # a cryptography public key


@dataclass(frozen=True)
class Signature:
    issuer: str  # key id
    algo: int
    hash_algo: int
    left16: bytes
    hashed_part: bytes  # version .. hashed subpackets: the part the signer hashed after the data
    values: tuple[int, ...]


def dearmor(data: bytes) -> bytes:
    if b"-----BEGIN PGP" not in data:
        return data
    lines = data.decode("ascii", "replace").splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.startswith("-----BEGIN PGP"))
        end = next(i for i, l in enumerate(lines) if l.startswith("-----END PGP"))
        body_start = next(i for i in range(start + 1, end) if not lines[i].strip())
    except StopIteration:
        raise OpenPGPError("malformed ASCII armor") from None
    b64 = "".join(l.strip() for l in lines[body_start + 1:end] if not l.startswith("="))
    try:
        return base64.b64decode(b64, validate=True)
    except ValueError:
        raise OpenPGPError("malformed ASCII armor") from None


def packets(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        first = data[pos]
        if not first & 0x80:
            raise OpenPGPError("not an OpenPGP packet")
        if first & 0x40:  # new format
            tag, o = first & 0x3F, data[pos + 1] if pos + 1 < len(data) else 0
            if o < 192:
                head, length = 2, o
            elif o < 224:
                head, length = 3, ((o - 192) << 8) + data[pos + 2] + 192
            elif o == 255:
                head, length = 6, struct.unpack(">I", data[pos + 2:pos + 6])[0]
            else:
                raise OpenPGPError("partial-length packets are not supported")
        else:
            tag, ltype = (first >> 2) & 0x0F, first & 3
            if ltype == 3:
                raise OpenPGPError("indeterminate-length packets are not supported")
            width = 1 << ltype
            head, length = 1 + width, int.from_bytes(data[pos + 1:pos + 1 + width], "big")
        body = data[pos + head:pos + head + length]
        if len(body) != length:
            raise OpenPGPError("truncated OpenPGP packet")
        out.append((tag, body))
        pos += head + length
    return out


def _mpi(body: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(body):
        raise OpenPGPError("truncated MPI")
    nbytes = (struct.unpack(">H", body[pos:pos + 2])[0] + 7) // 8
    end = pos + 2 + nbytes
    if end > len(body):
        raise OpenPGPError("truncated MPI")
    return int.from_bytes(body[pos + 2:end], "big"), end


def _public_key(body: bytes) -> PublicKey:
    if len(body) < 6 or body[0] != 4:
        raise OpenPGPError("only version 4 keys are supported")
    algo = body[5]
    fp = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest()
    if algo in RSA_ALGOS:
        n, pos = _mpi(body, 6)
        e, _ = _mpi(body, pos)
        if n.bit_length() < MIN_RSA_BITS:
            raise OpenPGPError(f"RSA key of {n.bit_length()} bits is too weak (at least {MIN_RSA_BITS})")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    elif algo in (ECDSA, EDDSA):
        oid_len = body[6]
        oid = body[7:7 + oid_len]
        point, _ = _mpi(body, 7 + oid_len)
        raw = point.to_bytes((point.bit_length() + 7) // 8, "big")
        if algo == EDDSA and oid == ED25519_OID and raw[:1] == b"\x40":
            key = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])
        elif algo == ECDSA and oid in CURVES:
            key = ec.EllipticCurvePublicKey.from_encoded_point(CURVES[oid], raw)
        else:
            raise OpenPGPError("unsupported elliptic curve")
    else:
        raise OpenPGPError(f"public key algorithm {algo} is not supported")
    return PublicKey(fp[-16:], fp, algo, key)


def load_keys(data: bytes) -> list[PublicKey]:
    """Every primary key and subkey in a transferable public key (binary or armored)."""
    keys = [_public_key(body) for tag, body in packets(dearmor(data)) if tag in (6, 14)]
    if not keys:
        raise OpenPGPError("no public key in the file")
    return keys


def parse_signature(data: bytes) -> Signature:
    found = [body for tag, body in packets(data) if tag == 2]
    if len(found) != 1:
        raise OpenPGPError("expected one signature packet")
    body = found[0]
    if len(body) < 8:
        raise OpenPGPError("truncated signature")
    if body[0] == 3:
        raise OpenPGPError("version 3 signatures are not supported")
    if body[0] != 4:
        raise OpenPGPError(f"signature version {body[0]} is not supported")
    algo, hash_algo = body[2], body[3]
    hashed_len = struct.unpack(">H", body[4:6])[0]
    hashed_end = 6 + hashed_len
    unhashed_len = struct.unpack(">H", body[hashed_end:hashed_end + 2])[0]
    unhashed_end = hashed_end + 2 + unhashed_len
    if unhashed_end + 2 > len(body):
        raise OpenPGPError("truncated signature")
    issuer = (_issuer(body[6:hashed_end]) or _issuer(body[hashed_end + 2:unhashed_end]))
    if issuer is None:
        raise OpenPGPError("the signature names no issuer key")
    pos, values = unhashed_end + 2, []
    while pos < len(body):
        v, pos = _mpi(body, pos)
        values.append(v)
    return Signature(issuer, algo, hash_algo, body[unhashed_end:unhashed_end + 2], body[:hashed_end], tuple(values))


def _issuer(area: bytes) -> str | None:
    pos = 0
    while pos < len(area):
        length = area[pos]
        if length < 192:
            head = 1
        elif length < 255:
            length, head = ((length - 192) << 8) + area[pos + 1] + 192, 2
        else:
            length, head = int.from_bytes(area[pos + 1:pos + 5], "big"), 5
        if length == 0 or pos + head + length > len(area):
            raise OpenPGPError("malformed signature subpacket")
        ptype, data = area[pos + head] & 0x7F, area[pos + head + 1:pos + head + length]
        if ptype == 16 and len(data) == 8:
            return data.hex()
        if ptype == 33 and len(data) >= 9:  # issuer fingerprint (version byte, then the fingerprint)
            return data[-8:].hex()
        pos += head + length
    return None


def verify(sig: Signature, data: bytes, key: PublicKey) -> None:
    """Raise OpenPGPError unless sig is a valid signature by key over data."""
    if sig.hash_algo not in HASHES or sig.hash_algo in WEAK_HASHES:
        raise OpenPGPError(f"signature hash algorithm {sig.hash_algo} is not accepted")
    if sig.algo != key.algo and not (sig.algo in RSA_ALGOS and key.algo in RSA_ALGOS):
        raise OpenPGPError("the signature and key algorithms differ")
    name, hash_cls = HASHES[sig.hash_algo]
    h = hashlib.new(name, data)
    h.update(sig.hashed_part)
    h.update(b"\x04\xff" + len(sig.hashed_part).to_bytes(4, "big"))
    digest = h.digest()
    if digest[:2] != sig.left16:
        raise OpenPGPError("signature does not match (digest prefix)")
    prehashed = utils.Prehashed(hash_cls())
    try:
        if sig.algo in RSA_ALGOS and len(sig.values) == 1:
            size = (key.key.key_size + 7) // 8
            key.key.verify(sig.values[0].to_bytes(size, "big"), digest, padding.PKCS1v15(), prehashed)
        elif sig.algo == EDDSA and len(sig.values) == 2:
            key.key.verify(b"".join(v.to_bytes(32, "big") for v in sig.values), digest)
        elif sig.algo == ECDSA and len(sig.values) == 2:
            key.key.verify(utils.encode_dss_signature(*sig.values), digest, ec.ECDSA(prehashed))
        else:
            raise OpenPGPError("malformed signature values")
    except (InvalidSignature, OverflowError, ValueError):
        raise OpenPGPError("signature does not match") from None
