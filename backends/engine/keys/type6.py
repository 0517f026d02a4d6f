"""Type 6 passwords, as IOS XR calls them: configured secrets the device itself must use in
clear (a SCEP challenge password), kept encrypted under a device master key.

The stored form is `t6:` and base64url (no padding) of a 12-byte nonce and the AES-256-GCM
ciphertext with its tag. The master key is 32 random bytes in a 0600 file of the state
directory, made on first use; a value made under another key does not decrypt.
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EngineError

PREFIX = "t6:"
MAX_CLEAR = 128  # bytes of UTF-8
_AAD = b"trustplane type 6 password"
_NONCE = 12
_KEY = 32


class Type6Error(EngineError):
    default_tag = "invalid-value"


def is_stored_form(value: str) -> bool:
    return value.startswith(PREFIX)


class Type6:
    def __init__(self, key_path: Path):
        self.key_path = Path(key_path)
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_or_make_key())
        return self._aead

    def _load_or_make_key(self) -> bytes:
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            key = self._make_key()
        if len(key) != _KEY:
            raise Type6Error("type6-key-invalid", f"the type 6 master key {self.key_path.name} is damaged",
                             tag="operation-failed")
        return key

    def _make_key(self) -> bytes:
        key = secrets.token_bytes(_KEY)
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise Type6Error("storage-failed", f"cannot write the type 6 master key: {exc.strerror}",
                             tag="operation-failed") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self.key_path.unlink(missing_ok=True)  # a partial key would make every value undecryptable
            raise Type6Error("storage-failed", f"cannot write the type 6 master key: {exc.strerror}",
                             tag="operation-failed") from None
        return key

    def encrypt(self, clear: str) -> str:
        data = clear.encode()
        if not 1 <= len(data) <= MAX_CLEAR:
            raise Type6Error("password-too-long" if data else "password-empty",
                             f"a type 6 password must be 1 to {MAX_CLEAR} bytes")
        nonce = secrets.token_bytes(_NONCE)
        blob = nonce + self._cipher().encrypt(nonce, data, _AAD)
        return PREFIX + base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def decrypt(self, stored: str) -> str:
        if not is_stored_form(stored):
            raise Type6Error("type6-invalid", "not a type 6 password")
        text = stored[len(PREFIX):]
        try:
            blob = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            if len(blob) <= _NONCE:
                raise ValueError
            return self._cipher().decrypt(blob[:_NONCE], blob[_NONCE:], _AAD).decode()
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            raise Type6Error("type6-invalid", "the type 6 password was not made by this device's master key "
                             "(configure it again in clear)") from None
