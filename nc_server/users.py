"""Local users for SSH login: password hashes, authorized keys, and bounds on
failed logins per connection, per user and source address, and per source address."""
from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncssh

from yangcore.datastore import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")
_SCRYPT = dict(n=1 << 15, r=8, p=1)
_SCRYPT_MAXMEM = 64 * 1024 * 1024
# bytes of UTF-8; libcrypt itself stops at 511, and SHA-crypt's cost grows with the length
MAX_PASSWORD = 256


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def check_password_text(password: str) -> None:
    """Refuse, before any hashing, what no hash is computed for: the cost of SHA-crypt
    grows with the length, and libcrypt would stop at a NUL, so "a\\0b" would match "a"."""
    if len(password.encode(errors="surrogatepass")) > MAX_PASSWORD:
        raise ValueError(f"a password may have at most {MAX_PASSWORD} bytes")
    if "\0" in password:
        raise ValueError("a password may not contain a NUL character")


def hash_password(password: str) -> str:
    """`$scrypt$ln=15,r=8,p=1$SALT$HASH` (base64 without padding)."""
    check_password_text(password)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=_SCRYPT_MAXMEM, dklen=32, **_SCRYPT)
    return f"$scrypt$ln=15,r={_SCRYPT['r']},p={_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check against our scrypt form or a SHA-crypt `$5$`/`$6$` hash (RFC 7317 crypt-hash).
    A malformed stored value, or a password check_password_text refuses, never matches."""
    if not isinstance(stored, str):
        return False
    try:
        check_password_text(password)
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
            got = sha_crypt(password, stored)
            return got is not None and hmac.compare_digest(got.encode(), stored.encode())
    except (ValueError, KeyError, TypeError):
        return False
    return False


# -- SHA-crypt, computed by the system's libcrypt (libxcrypt) --------------------------

_ROUNDS_MAX = 1_000_000  # the format allows 999999999: minutes per login
_ROUNDS = re.compile(r"rounds=([0-9]{1,10})\$")
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt
_libcrypt = ctypes.CDLL("libcrypt.so.1")
_crypt_rn = _libcrypt.crypt_rn
_crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
_crypt_rn.restype = ctypes.c_char_p


def sha_crypt(password: str, setting: str) -> str | None:
    """The SHA-crypt string for password with the salt (and rounds) of setting, e.g.
    `$6$rounds=100000$saltstring`; None when libcrypt refuses the setting. Takes
    libcrypt's reentrant entry point, which runs without the GIL: call it in a thread."""
    if not setting.startswith(("$5$", "$6$")) or "\0" in setting:
        raise ValueError("not a SHA-crypt setting")
    if setting.startswith("rounds=", 3):
        # checked here, as libcrypt would read a larger count as its maximum
        rounds = _ROUNDS.match(setting, 3)
        if rounds is None or int(rounds.group(1)) > _ROUNDS_MAX:
            raise ValueError("too many rounds")
    check_password_text(password)
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    out = _crypt_rn(password.encode(), setting.encode(), data, _CRYPT_DATA_SIZE)
    return out.decode() if out is not None else None


class LoginBusy(Exception):
    """Too many password checks are waiting: this one was not made."""


# -- the user database -----------------------------------------------------------------

class UserDB:
    """`users.json`: {"users": {name: {"password": hash or null, "authorized-keys": [...]}}}.
    Re-read when the file changes, so edits by another process apply to the next login."""

    # spent on unknown users when no stored hash can stand in for them
    _DUMMY = hash_password(secrets.token_hex(8))

    MAX_CACHED = 1024
    # Password checks run in threads: a scrypt check holds 32 MiB, so only this many at once,
    # and past MAX_WAITING queued checks a login is refused (LoginBusy) rather than queued.
    WORKERS = 2
    MAX_WAITING = 64

    def __init__(self, path: Path):
        self.path = Path(path)
        self._users: dict[str, dict] = {}
        self._stamp: tuple | None = None
        self._decoy = self._DUMMY
        # A verified login is remembered as a keyed MAC of the password, so automation
        # that connects often pays the slow hash once; a changed stored hash forgets it.
        self._mac_key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._waiting = 0

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
        self._decoy = self._typical_hash()

    def _typical_hash(self) -> str:
        """A stored hash of the most common scheme and cost: an unknown name is checked
        against it (and refused), so it takes as long as a name that exists."""
        by_cost: dict[str, list[str]] = {}
        for user in self._users.values():
            stored = user.get("password")
            if isinstance(stored, str) and stored.startswith(("$scrypt$", "$5$", "$6$")):
                fields = stored.split("$")
                cost = "$".join(fields[:3] if fields[2].startswith(("ln=", "rounds=")) else fields[:2])
                by_cost.setdefault(cost, []).append(stored)
        if not by_cost:
            return self._DUMMY
        return max(by_cost.values(), key=len)[0]

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

    async def check_password(self, name: str, password: str) -> bool:
        """Verify a login in a worker thread; an unknown name or a user without a password
        costs the same work as a known one. A password too long is refused unhashed.
        Raises LoginBusy when too many checks are waiting."""
        self._fresh()
        try:
            check_password_text(password)
        except ValueError as exc:
            log.warning("password for %r refused unchecked: %s", name[:64], exc)
            return False
        user = self._users.get(name)
        stored = user.get("password") if user else None
        if not isinstance(stored, str):
            await self._verify(password, self._decoy)
            return False
        mac = hmac.new(self._mac_key, password.encode(), hashlib.sha256).digest()
        cached = self._verified.get(name)
        if cached is not None and cached[0] == stored and hmac.compare_digest(cached[1], mac):
            return True
        if not await self._verify(password, stored):
            return False
        if len(self._verified) >= self.MAX_CACHED:
            self._verified.clear()
        self._verified[name] = (stored, mac)
        return True

    async def _verify(self, password: str, stored: str) -> bool:
        if self._waiting >= self.MAX_WAITING:
            raise LoginBusy(f"{self._waiting} password checks waiting")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="password")
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, verify_password, password, stored)
        finally:
            self._waiting -= 1

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
    """Failed password logins, counted three ways within window seconds:

    - max_per_connection on one connection closes it;
    - max_per_user_source for one user name from one source address refuses that
      name from that address until the failures age out, so guessing one user's
      password from a shared address does not lock out its other users;
    - max_per_source for all names from one address refuses every name from it
      (spraying many names), except a name that logged in from there within
      remember seconds.

    At most MAX_ENTRIES of each are kept, the least recently failed dropped first,
    and a name is keyed by at most 65 characters (no user name is longer than 64)."""

    MAX_ENTRIES = 10000

    def __init__(self, max_per_connection: int = 3, max_per_user_source: int = 10, max_per_source: int = 100,
                 window: float = 300.0, remember: float = 86400.0, clock=time.monotonic):
        self.max_per_connection = max_per_connection
        self.max_per_user_source = max_per_user_source
        self.max_per_source = max_per_source
        self.window = window
        self.remember = remember
        self.clock = clock
        self._conn: dict[int, int] = {}
        self._pairs: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._sources: OrderedDict[str, list[float]] = OrderedDict()
        self._good: OrderedDict[tuple[str, str], float] = OrderedDict()

    @staticmethod
    def _key(name: str, ip: str) -> tuple[str, str]:
        return (name if len(name) <= 64 else name[:64] + "\u2026", ip)

    def _recent(self, table: OrderedDict, key) -> list[float]:
        now = self.clock()
        times = [t for t in table.get(key, ()) if now - t < self.window]
        if times:
            table[key] = times
        else:
            table.pop(key, None)
        return times

    def refusal(self, name: str, ip: str) -> str | None:
        """Why a password for name from ip is refused unchecked, or None."""
        key = self._key(name, ip)
        if len(self._recent(self._pairs, key)) >= self.max_per_user_source:
            return f"too many failed logins for this user from {ip}"
        if len(self._recent(self._sources, ip)) >= self.max_per_source:
            seen = self._good.get(key)
            if seen is None or self.clock() - seen >= self.remember:
                return f"too many failed logins from {ip}"
        return None

    def record_failure(self, conn_id: int, name: str, ip: str) -> bool:
        """Count a failure; False when the connection must be closed."""
        self._conn[conn_id] = self._conn.get(conn_id, 0) + 1
        self._add(self._pairs, self._key(name, ip), self.max_per_user_source)
        self._add(self._sources, ip, self.max_per_source)
        return self._conn[conn_id] < self.max_per_connection and self.refusal(name, ip) is None

    def _add(self, table: OrderedDict, key, keep: int) -> None:
        times = self._recent(table, key)
        times.append(self.clock())
        table[key] = times[-keep:]
        table.move_to_end(key)
        while len(table) > self.MAX_ENTRIES:
            table.popitem(last=False)

    def record_success(self, conn_id: int, name: str, ip: str) -> None:
        self._conn.pop(conn_id, None)
        key = self._key(name, ip)
        self._pairs.pop(key, None)
        self._good[key] = self.clock()
        self._good.move_to_end(key)
        while len(self._good) > self.MAX_ENTRIES:
            self._good.popitem(last=False)

    def forget(self, conn_id: int) -> None:
        self._conn.pop(conn_id, None)
