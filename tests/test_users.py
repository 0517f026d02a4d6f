"""Local users: password hashes (scrypt, SHA-crypt against openssl), the user
file, and the failed-login limiter."""
import asyncio
import json
import os
import subprocess
import threading
import time

import asyncssh
import pytest

from nc_server.users import MAX_PASSWORD, LoginBusy, LoginLimiter, UserDB, hash_password, sha_crypt, verify_password


def check(db, name, password):
    return asyncio.run(db.check_password(name, password))


def test_scrypt_hash_round_trip():
    h = hash_password("s3cret")
    assert h.startswith("$scrypt$ln=15,r=8,p=1$")
    assert verify_password("s3cret", h)
    assert not verify_password("s3cret ", h)
    assert hash_password("s3cret") != h  # salted


@pytest.mark.parametrize("variant", ["-5", "-6"])
def test_sha_crypt_matches_openssl(variant):
    for password, salt in [("Hello world!", "saltstring"), ("a", "x"), ("pässwörd", "abcdefghijklmnop")]:
        want = subprocess.run(["openssl", "passwd", variant, "-salt", salt, "-stdin"], input=password + "\n",
                              capture_output=True, text=True, check=True).stdout.strip()
        assert sha_crypt(password, want) == want
        assert verify_password(password, want)
        assert not verify_password(password + "x", want)


def test_sha_crypt_rounds_match_openssl():
    want = subprocess.run(["openssl", "passwd", "-6", "-salt", "rounds=100000$saltsalt", "-stdin"],
                          input="pässwörd\n", capture_output=True, text=True, check=True).stdout.strip()
    assert sha_crypt("pässwörd", want) == want


def test_sha_crypt_rounds():
    # the published test vector for an explicit round count
    assert sha_crypt("Hello world!", "$5$rounds=10000$saltstringsaltstring") == \
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"
    # rounds far above what a login should cost are refused, not computed
    assert not verify_password("x", "$6$rounds=999999999$salt$abc")


@pytest.mark.parametrize("stored", ["", "plain", "$1$abc$def", "$scrypt$", "$scrypt$ln=99,r=8,p=1$AA$AA",
                                    "$scrypt$ln=15,r=8$AA$AA", "$5$", "$6$rounds=x$salt$h", None])
def test_malformed_hashes_never_match(stored):
    assert verify_password("x", stored) is False


def test_userdb_file_and_reload(tmp_path):
    path = tmp_path / "users.json"
    db = UserDB(path)
    db.add_user("admin", password="pw1")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users.json"]  # no temp files left
    assert "pw1" not in path.read_text()
    assert check(db, "admin", "pw1")
    assert not check(db, "admin", "pw2")
    assert not check(db, "nobody", "pw1")
    # another process edits the file: the next login sees it
    data = json.loads(path.read_text())
    data["users"]["ops"] = {"password": subprocess.run(["openssl", "passwd", "-6", "-salt", "s", "opspw"],
                                                       capture_output=True, text=True).stdout.strip()}
    path.write_text(json.dumps(data))
    assert check(db, "ops", "opspw")
    assert db.users() == ["admin", "ops"]
    db.remove_user("ops")
    assert not db.exists("ops")


def test_userdb_names_and_keys(tmp_path):
    db = UserDB(tmp_path / "users.json")
    for bad in ("", "-x", "a b", "a/b", "x" * 65):
        with pytest.raises(ValueError):
            db.add_user(bad, password="p")
    db.add_user("keyonly")
    assert not check(db, "keyonly", "")
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    db.add_authorized_key("keyonly", key)
    assert db.authorized_keys("keyonly") == [key]
    with pytest.raises(ValueError):
        db.add_authorized_key("keyonly", "ssh-ed25519 not-base64")


def test_limiter_per_connection():
    lim = LoginLimiter(max_per_connection=3)
    assert lim.record_failure(1, "a", "10.0.0.1")
    assert lim.record_failure(1, "b", "10.0.0.1")
    assert not lim.record_failure(1, "c", "10.0.0.1")  # third failure on one connection closes it
    assert lim.record_failure(2, "a", "10.0.0.1")
    lim.forget(1)
    assert lim.record_failure(1, "a", "10.0.0.1")


def test_limiter_blocks_a_user_from_a_source_not_its_neighbours():
    now = [0.0]
    lim = LoginLimiter(max_per_user_source=5, max_per_source=20, window=60, clock=lambda: now[0])
    for conn in range(5):
        lim.record_failure(conn, "admin", "10.0.0.1")
    assert lim.refusal("admin", "10.0.0.1") == "too many failed logins for this user from 10.0.0.1"
    assert lim.refusal("ops", "10.0.0.1") is None  # another user at the same address
    assert lim.refusal("admin", "10.0.0.2") is None  # the same user elsewhere
    now[0] = 61
    assert lim.refusal("admin", "10.0.0.1") is None  # the failures aged out


def test_limiter_bounds_names_sprayed_from_one_source():
    now = [0.0]
    lim = LoginLimiter(max_per_user_source=5, max_per_source=20, window=60, clock=lambda: now[0])
    lim.record_success(0, "ops", "10.0.0.1")
    for i in range(20):
        lim.record_failure(i, f"user{i}", "10.0.0.1")
    assert lim.refusal("user99", "10.0.0.1") == "too many failed logins from 10.0.0.1"
    assert lim.refusal("ops", "10.0.0.1") is None  # logged in from there before
    assert lim.refusal("user99", "10.0.0.2") is None
    now[0] = 61
    assert lim.refusal("user99", "10.0.0.1") is None


def test_limiter_memory_is_bounded():
    lim = LoginLimiter(max_per_user_source=3, max_per_source=5)
    for i in range(LoginLimiter.MAX_ENTRIES + 50):
        lim.record_failure(0, "x" * 10000 + str(i), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        lim.record_success(1, f"u{i}", "10.0.0.1")
    for _ in range(50):
        lim.record_failure(0, "admin", "10.9.9.9")
    assert len(lim._pairs) == len(lim._sources) == len(lim._good) == LoginLimiter.MAX_ENTRIES
    assert max(len(k[0]) for k in lim._pairs) == 65  # long names are keyed by a bounded prefix
    assert len(lim._pairs[("admin", "10.9.9.9")]) == 3 and len(lim._sources["10.9.9.9"]) == 5


def test_verified_login_is_remembered_until_the_hash_changes(tmp_path, monkeypatch):
    import nc_server.users as users
    db = UserDB(tmp_path / "users.json")
    db.add_user("admin", password="pw1")
    calls = []
    real = users.verify_password
    monkeypatch.setattr(users, "verify_password", lambda p, s: calls.append(1) or real(p, s))
    assert check(db, "admin", "pw1") and check(db, "admin", "pw1")
    assert len(calls) == 1
    assert not check(db, "admin", "wrong")  # a wrong password still takes the slow path
    assert len(calls) == 2
    db.set_password("admin", "pw2")
    assert not check(db, "admin", "pw1")
    assert check(db, "admin", "pw2")


def test_password_length_is_capped_before_hashing(tmp_path, monkeypatch):
    import nc_server.users as users
    longest = "é" * (MAX_PASSWORD // 2)
    stored = sha_crypt(longest, "$6$salt")
    assert verify_password(longest, stored)  # exactly at the cap
    assert not verify_password(longest + "x", sha_crypt(longest, "$6$salt"))
    with pytest.raises(ValueError, match="at most 256 bytes"):
        hash_password("x" * (MAX_PASSWORD + 1))
    with pytest.raises(ValueError, match="at most 256 bytes"):
        sha_crypt("x" * (MAX_PASSWORD + 1), "$6$salt")
    db = UserDB(tmp_path / "users.json")
    db.add_user("ops", hashed=stored)
    calls = []
    monkeypatch.setattr(users, "verify_password", lambda p, s: calls.append(1))
    assert not check(db, "ops", "x" * 24 * 1024)
    assert not check(db, "nobody", "x" * 24 * 1024)
    assert calls == []  # refused unhashed, for known and unknown names alike


def test_a_nul_never_cuts_a_password_short():
    stored = sha_crypt("a", "$6$salt")
    assert verify_password("a", stored)
    assert not verify_password("a\0b", stored)


def test_rounds_above_the_bound_are_refused_unhashed():
    for setting in ("$6$rounds=1000001$salt", "$6$rounds=1000000000$salt", "$6$rounds=99999999999$salt",
                    "$5$rounds=+5000$salt"):
        with pytest.raises(ValueError, match="too many rounds"):
            sha_crypt("x", setting)
    assert sha_crypt("x", "$6$rounds=1000$salt").startswith("$6$rounds=1000$salt$")


def test_unknown_names_cost_what_a_stored_hash_costs(tmp_path, monkeypatch):
    import nc_server.users as users
    db = UserDB(tmp_path / "users.json")
    db.add_user("admin", password="pw")  # scrypt
    for name in ("ops", "audit"):
        db.add_user(name, hashed=sha_crypt("pw", f"$6$rounds=20000${name}"))
    db.add_user("keys-only")
    checked = []
    real = users.verify_password
    monkeypatch.setattr(users, "verify_password", lambda p, s: checked.append(s) or real(p, s))
    for name in ("nobody", "keys-only"):
        assert not check(db, name, "pw")
    # the most common scheme and cost among the stored hashes: SHA-512-crypt, 20000 rounds
    assert [s.split("$")[:3] for s in checked] == [["", "6", "rounds=20000"]] * 2


def test_password_checks_run_in_a_bounded_pool_off_the_loop(tmp_path, monkeypatch):
    import nc_server.users as users
    db = UserDB(tmp_path / "users.json")
    db.add_user("ops", hashed=sha_crypt("pw", "$6$salt"))
    db.MAX_WAITING = 6
    release, lock = threading.Event(), threading.Lock()
    active, most = [0], [0]

    def slow(password, stored):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        release.wait(10)
        with lock:
            active[0] -= 1
        return True

    monkeypatch.setattr(users, "verify_password", slow)

    async def main():
        checks = [asyncio.create_task(db.check_password("ops", f"pw{i}")) for i in range(8)]
        deadline = time.monotonic() + 5
        while active[0] < UserDB.WORKERS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the loop runs while the checks wait in their threads
        release.set()
        return await asyncio.gather(*checks, return_exceptions=True)

    results = asyncio.run(main())
    assert most[0] == UserDB.WORKERS
    assert results[:6] == [True] * 6
    # past MAX_WAITING refused, not queued
    assert [(type(r), str(r)) for r in results[6:]] == [(LoginBusy, "6 password checks waiting")] * 2


def test_a_login_refused_for_load_is_not_counted_as_a_failure():
    from nc_server.ssh import LoginQueue, _Auth

    class Busy:
        async def check_password(self, name, password):
            raise LoginBusy("64 password checks waiting")

    limiter = LoginLimiter(max_per_connection=1)
    auth = _Auth(None, Busy(), limiter, LoginQueue(), {})
    auth.source = "10.0.0.1"
    assert asyncio.run(auth.validate_password("admin", "pw")) is False
    assert (limiter._conn, limiter._pairs, limiter._sources) == ({}, {}, {})
