"""Local users: password hashes (scrypt, SHA-crypt against openssl), the user
file, and the failed-login limiter."""
import json
import os
import subprocess

import asyncssh
import pytest

from nc_server.users import LoginLimiter, UserDB, hash_password, sha_crypt, verify_password


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
    assert db.check_password("admin", "pw1")
    assert not db.check_password("admin", "pw2")
    assert not db.check_password("nobody", "pw1")
    # another process edits the file: the next login sees it
    data = json.loads(path.read_text())
    data["users"]["ops"] = {"password": subprocess.run(["openssl", "passwd", "-6", "-salt", "s", "opspw"],
                                                       capture_output=True, text=True).stdout.strip()}
    path.write_text(json.dumps(data))
    assert db.check_password("ops", "opspw")
    assert db.users() == ["admin", "ops"]
    db.remove_user("ops")
    assert not db.exists("ops")


def test_userdb_names_and_keys(tmp_path):
    db = UserDB(tmp_path / "users.json")
    for bad in ("", "-x", "a b", "a/b", "x" * 65):
        with pytest.raises(ValueError):
            db.add_user(bad, password="p")
    db.add_user("keyonly")
    assert not db.check_password("keyonly", "")
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    db.add_authorized_key("keyonly", key)
    assert db.authorized_keys("keyonly") == [key]
    with pytest.raises(ValueError):
        db.add_authorized_key("keyonly", "ssh-ed25519 not-base64")


def test_limiter_per_connection_and_source():
    now = [0.0]
    lim = LoginLimiter(max_per_connection=3, max_per_source=5, window=60, clock=lambda: now[0])
    assert lim.record_failure(1, "10.0.0.1")
    assert lim.record_failure(1, "10.0.0.1")
    assert not lim.record_failure(1, "10.0.0.1")  # third failure on one connection closes it
    assert lim.record_failure(2, "10.0.0.1")
    assert not lim.record_failure(2, "10.0.0.1")  # fifth from the source
    assert not lim.allow_connection("10.0.0.1")
    assert lim.allow_connection("10.0.0.2")
    now[0] = 61
    assert lim.allow_connection("10.0.0.1")  # the failures aged out
    lim.record_success(2)
    lim.forget(1)


def test_limiter_tracks_a_bounded_number_of_sources():
    lim = LoginLimiter()
    for i in range(LoginLimiter.MAX_SOURCES + 50):
        lim.record_failure(i, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(lim._sources) == LoginLimiter.MAX_SOURCES


def test_verified_login_is_remembered_until_the_hash_changes(tmp_path, monkeypatch):
    import nc_server.users as users
    db = UserDB(tmp_path / "users.json")
    db.add_user("admin", password="pw1")
    calls = []
    real = users.verify_password
    monkeypatch.setattr(users, "verify_password", lambda p, s: calls.append(1) or real(p, s))
    assert db.check_password("admin", "pw1") and db.check_password("admin", "pw1")
    assert len(calls) == 1
    assert not db.check_password("admin", "wrong")  # a wrong password still takes the slow path
    assert len(calls) == 2
    db.set_password("admin", "pw2")
    assert not db.check_password("admin", "pw1")
    assert db.check_password("admin", "pw2")
