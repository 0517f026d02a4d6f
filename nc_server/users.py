"""Local users for SSH login: password hashes, authorized keys, and a bound on
failed logins per connection and per source address."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from pathlib import Path

import asyncssh

from .datastore import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")
_SCRYPT = dict(n=1 << 15, r=8, p=1)
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """`$scrypt$ln=15,r=8,p=1$SALT$HASH` (base64 without padding)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=_SCRYPT_MAXMEM, dklen=32, **_SCRYPT)
    return f"$scrypt$ln=15,r={_SCRYPT['r']},p={_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check against our scrypt form or a SHA-crypt `$5$`/`$6$` hash (RFC 7317 crypt-hash).
    A malformed stored value never matches."""
    if not isinstance(stored, str):
        return False
    try:
        if stored.startswith("$scrypt$"):
            _, _, params, salt, digest = stored.split("$")
            opts = dict(kv.split("=") for kv in params.split(","))
            ln, r, p = int(opts["ln"]), int(opts["r"]), int(opts["p"])
            if not (1 <= ln <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
                return False
            want = _unb64(digest)
            got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=1 << ln, r=r, p=p,
                                 maxmem=_SCRYPT_MAXMEM, dklen=len(want))
            return hmac.compare_digest(got, want)
        if stored.startswith(("$5$", "$6$")):
            return hmac.compare_digest(sha_crypt(password, stored).encode(), stored.encode())
    except (ValueError, KeyError, TypeError):
        return False
    return False


# -- SHA-crypt (the published "Unix crypt using SHA-256 and SHA-512" algorithm) -------

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ROUNDS_DEFAULT, _ROUNDS_MIN, _ROUNDS_MAX = 5000, 1000, 1_000_000  # the spec allows 999999999: too slow to accept
_PERM = {
    "5": [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
          (27, 7, 17), (18, 28, 8), (9, 19, 29), (None, 31, 30)],
    "6": [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
          (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
          (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
          (None, None, 63)],
}


def _encode_triplet(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ITOA64[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha_crypt(password: str, setting: str) -> str:
    """Compute the SHA-crypt string for password with the salt (and rounds) of setting,
    e.g. `$5$rounds=10000$saltstring`. Raises ValueError on a bad setting."""
    parts = setting.split("$")
    if len(parts) < 3 or parts[1] not in ("5", "6"):
        raise ValueError("not a SHA-crypt setting")
    variant = parts[1]
    h = hashlib.sha256 if variant == "5" else hashlib.sha512
    rest = parts[2:]
    rounds, explicit = _ROUNDS_DEFAULT, False
    if rest[0].startswith("rounds="):
        rounds = min(max(int(rest[0][7:]), _ROUNDS_MIN), 999_999_999)
        if rounds > _ROUNDS_MAX:
            raise ValueError("too many rounds")
        explicit = True
        rest = rest[1:]
    if not rest:
        raise ValueError("no salt")
    salt = rest[0][:16].encode()
    pw = password.encode()
    size = h().digest_size

    b = h(pw + salt + pw).digest()
    a = h(pw + salt)
    a.update((b * (len(pw) // size + 1))[:len(pw)])
    n = len(pw)
    while n:
        a.update(b if n & 1 else pw)
        n >>= 1
    a_digest = a.digest()
    dp = h(pw * len(pw)).digest()
    p = (dp * (len(pw) // size + 1))[:len(pw)]
    ds = h(salt * (16 + a_digest[0])).digest()
    s = (ds * (len(salt) // size + 1))[:len(salt)]
    c = a_digest
    for i in range(rounds):
        step = h(p if i & 1 else c)
        if i % 3:
            step.update(s)
        if i % 7:
            step.update(p)
        step.update(c if i & 1 else p)
        c = step.digest()

    encoded = []
    for i, j, k in _PERM[variant]:
        if i is None and j is None:
            encoded.append(_encode_triplet(0, 0, c[k], 2))
        elif i is None:
            encoded.append(_encode_triplet(0, c[j], c[k], 3))
        else:
            encoded.append(_encode_triplet(c[i], c[j], c[k], 4))
    head = f"${variant}$" + (f"rounds={rounds}$" if explicit else "")
    return head + salt.decode() + "$" + "".join(encoded)


# -- the user database -----------------------------------------------------------------

class UserDB:
    """`users.json`: {"users": {name: {"password": hash or null, "authorized-keys": [...]}}}.
    Re-read when the file changes, so edits by another process apply to the next login."""

    # spent on unknown users so timing does not tell which names exist
    _DUMMY = hash_password(secrets.token_hex(8))

    MAX_CACHED = 1024

    def __init__(self, path: Path):
        self.path = Path(path)
        self._users: dict[str, dict] = {}
        self._stamp: tuple | None = None
        # A verified login is remembered as a keyed MAC of the password, so automation
        # that connects often pays the slow hash once; a changed stored hash forgets it.
        self._mac_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}

    def load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        data = json.loads(self.path.read_text())
        users = data.get("users", {}) if isinstance(data, dict) else {}
        self._users = {n: u for n, u in users.items() if isinstance(u, dict)}
        self._stamp = stamp

    def _fresh(self) -> None:
        try:
            self.load()
        except (OSError, ValueError) as exc:
            log.error("cannot read %s, keeping the users loaded before: %s", self.path, exc)

    def _encode(self, users: dict[str, dict]) -> bytes:
        return json.dumps({"users": users}, indent=2).encode()

    def _save(self) -> None:
        try:
            atomic_write(self.path, self._encode(self._users), mode=0o600)
        except OSError:
            # the unsaved change must not stay live: back to the file (nobody, if it cannot be read)
            self._users, self._stamp = {}, None
            self._fresh()
            raise
        self._stamp = None
        self.load()

    def users(self) -> list[str]:
        self._fresh()
        return sorted(self._users)

    def exists(self, name: str) -> bool:
        self._fresh()
        return name in self._users

    def add_user(self, name: str, password: str | None = None, hashed: str | None = None,
                 authorized_keys=()) -> None:
        UserDB.check_name(name)
        self._fresh()
        keys = [self.checked_key(k) for k in authorized_keys]
        self._users[name] = {"password": hash_password(password) if password is not None else hashed,
                             "authorized-keys": keys}
        self._save()

    def record(self, name: str) -> dict:
        self._fresh()
        return dict(self._users.get(name) or {})

    def replace_all(self, wanted: dict[str, dict], writes) -> None:
        """Stage the whole user list in writes (a datastore.Writes); a user given no password
        keeps the hash it has. The list is live once the file is renamed in."""
        self._fresh()
        users = {}
        for name, new in wanted.items():
            password = new.get("password")
            if password is None:
                password = (self._users.get(name) or {}).get("password")
            users[name] = {"password": password, "authorized-keys": list(new.get("authorized-keys", []))}
        if users != self._users:
            writes.write(self.path, self._encode(users), "the user list")

    def remove_user(self, name: str) -> None:
        self._fresh()
        if self._users.pop(name, None) is None:
            raise KeyError(name)
        self._save()

    def set_password(self, name: str, password: str) -> None:
        self._fresh()
        self._users[name]["password"] = hash_password(password)
        self._save()

    def check_password(self, name: str, password: str) -> bool:
        self._fresh()
        user = self._users.get(name)
        stored = user.get("password") if user else None
        if not isinstance(stored, str):
            verify_password(password, self._DUMMY)
            return False
        mac = hmac.new(self._mac_key, password.encode(), hashlib.sha256).digest()
        cached = self._verified.get(name)
        if cached is not None and cached[0] == stored and hmac.compare_digest(cached[1], mac):
            return True
        if not verify_password(password, stored):
            return False
        if len(self._verified) >= self.MAX_CACHED:
            self._verified.clear()
        self._verified[name] = (stored, mac)
        return True

    def authorized_keys(self, name: str) -> list[str]:
        self._fresh()
        user = self._users.get(name) or {}
        return [k for k in user.get("authorized-keys", []) if isinstance(k, str)]

    def add_authorized_key(self, name: str, line: str) -> None:
        self._fresh()
        self._users[name].setdefault("authorized-keys", []).append(self.checked_key(line))
        self._save()

    @staticmethod
    def check_name(name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid user name {name!r}: 1-64 of letters, digits, '.', '_' and '-', "
                             "not starting with '-'")

    @staticmethod
    def checked_key(line: str) -> str:
        line = line.strip()
        try:
            asyncssh.import_public_key(line)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ValueError(f"not an OpenSSH public key: {exc}") from None
        return line


class LoginLimiter:
    """Failed logins: at most max_per_connection on one connection, and a source
    with max_per_source failures within window seconds is refused until they age out."""

    MAX_SOURCES = 10000

    def __init__(self, max_per_connection: int = 3, max_per_source: int = 10, window: float = 300.0,
                 clock=time.monotonic):
        self.max_per_connection = max_per_connection
        self.max_per_source = max_per_source
        self.window = window
        self.clock = clock
        self._conn: dict[int, int] = {}
        self._sources: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, ip: str) -> list[float]:
        now = self.clock()
        times = [t for t in self._sources.get(ip, []) if now - t < self.window]
        if times:
            self._sources[ip] = times
        else:
            self._sources.pop(ip, None)
        return times

    def allow_connection(self, ip: str) -> bool:
        return len(self._recent(ip)) < self.max_per_source

    def record_failure(self, conn_id: int, ip: str) -> bool:
        """Count a failure; False when the connection must be closed."""
        self._conn[conn_id] = self._conn.get(conn_id, 0) + 1
        times = self._recent(ip)
        times.append(self.clock())
        self._sources[ip] = times
        self._sources.move_to_end(ip)
        while len(self._sources) > self.MAX_SOURCES:
            self._sources.popitem(last=False)
        return self._conn[conn_id] < self.max_per_connection and len(times) < self.max_per_source

    def record_success(self, conn_id: int) -> None:
        self._conn.pop(conn_id, None)

    def forget(self, conn_id: int) -> None:
        self._conn.pop(conn_id, None)
