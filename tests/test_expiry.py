"""PKI certificate expiry notifications (backends.engine.x509.expiry) with a pinned clock."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from backends.engine.x509.expiry import (
    ALERT, WARNING, Alert, alert_due, eligible, log_line, next_point, serial_text, time_left_text)

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
NOT_AFTER = datetime(2025, 8, 1, 12, 0, tzinfo=timezone.utc)

SEED_LINE = ("%SECURITY-CEPKI-1-CERT_EXPIRING_ALERT : Certificate expiring WITHIN A WEEK. "
             "Trustpoint Name= check, Certificate Type= ID, Serial Number= 02:EC, "
             "Issuer Name= CN=cacert,OU=SPBU,O=CSCO,L=BGL,ST=KA,C=IN, Subject name= CN=cisco.com, "
             "Time Left= 1 days, 23 hours, 59 minutes, 41 seconds")
SEED_LEFT = timedelta(days=1, hours=23, minutes=59, seconds=41)


def test_full_schedule_hour_by_hour():
    """61 days before expiry to a day after, one tick an hour, sending whatever is due."""
    sent: list[tuple[datetime, str, timedelta]] = []
    last = None
    start = NOT_AFTER - 61 * DAY
    for h in range(62 * 24 + 1):
        now = start + h * HOUR
        a = alert_due(NOT_AFTER, now, last)
        if a is not None:
            sent.append((a.due, a.level, a.time_left))
            assert a.due == now         # ticks fall on the points: nothing late
            last = a.due
    # 60 days, then weekly while more than a week is left; then daily.
    warnings = [NOT_AFTER - d * DAY for d in (60, 53, 46, 39, 32, 25, 18, 11)]
    alerts = [NOT_AFTER - d * DAY for d in (7, 6, 5, 4, 3, 2, 1)]
    assert [(t, lvl) for t, lvl, _ in sent] == [(t, WARNING) for t in warnings] + [(t, ALERT) for t in alerts]
    assert [left for _, _, left in sent] == [NOT_AFTER - t for t in warnings + alerts]
    assert len(sent) == 15


def test_levels_and_boundaries():
    # Exactly a week left is already an alert; expiry itself gets nothing.
    assert alert_due(NOT_AFTER, NOT_AFTER - 7 * DAY, None) == Alert(ALERT, NOT_AFTER - 7 * DAY, 7 * DAY)
    assert alert_due(NOT_AFTER, NOT_AFTER - 11 * DAY, None).level == WARNING
    assert alert_due(NOT_AFTER, NOT_AFTER, None) is None
    assert alert_due(NOT_AFTER, NOT_AFTER + DAY, None) is None
    assert alert_due(NOT_AFTER, NOT_AFTER - 61 * DAY, None) is None
    assert alert_due(NOT_AFTER, NOT_AFTER - 60 * DAY - timedelta(seconds=1), None) is None


def test_missed_points_collapse_into_the_newest():
    # Down from 40 to 20 days before expiry: one warning for the newest missed point.
    now = NOT_AFTER - 20 * DAY + 5 * HOUR
    a = alert_due(NOT_AFTER, now, NOT_AFTER - 46 * DAY)
    assert a == Alert(WARNING, NOT_AFTER - 25 * DAY, NOT_AFTER - now)
    assert alert_due(NOT_AFTER, now, a.due) is None
    assert alert_due(NOT_AFTER, NOT_AFTER - 18 * DAY, a.due).due == NOT_AFTER - 18 * DAY
    # With no record of an earlier alert, the newest point is sent.
    assert alert_due(NOT_AFTER, NOT_AFTER - 2 * DAY + HOUR, None).due == NOT_AFTER - 2 * DAY


def test_next_point():
    assert next_point(NOT_AFTER, NOT_AFTER - 90 * DAY) == NOT_AFTER - 60 * DAY
    assert next_point(NOT_AFTER, NOT_AFTER - 60 * DAY) == NOT_AFTER - 53 * DAY
    assert next_point(NOT_AFTER, NOT_AFTER - 11 * DAY) == NOT_AFTER - 7 * DAY
    assert next_point(NOT_AFTER, NOT_AFTER - 36 * HOUR) == NOT_AFTER - DAY
    assert next_point(NOT_AFTER, NOT_AFTER - DAY) is None
    assert next_point(NOT_AFTER, NOT_AFTER + DAY) is None


def test_time_left_text():
    assert time_left_text(SEED_LEFT) == "1 days, 23 hours, 59 minutes, 41 seconds"
    assert time_left_text(SEED_LEFT + timedelta(microseconds=999999)) == "1 days, 23 hours, 59 minutes, 41 seconds"
    assert time_left_text(timedelta(0)) == "0 days, 0 hours, 0 minutes, 0 seconds"
    assert time_left_text(timedelta(seconds=-5)) == "0 days, 0 hours, 0 minutes, 0 seconds"
    assert time_left_text(60 * DAY) == "60 days, 0 hours, 0 minutes, 0 seconds"


@pytest.mark.parametrize("serial,text", [
    (0x2EC, "02:EC"),
    (0, "00"),
    (0xFF, "FF"),
    (0x100, "01:00"),
    # The seed's "Cisco Root CA 2048".
    (0x5FF87B282B54DC8D42A315B568C9ADFF, "5F:F8:7B:28:2B:54:DC:8D:42:A3:15:B5:68:C9:AD:FF"),
    (-1, "FF"),
    (-256, "FF:00"),
])
def test_serial_text(serial, text):
    assert serial_text(serial) == text


def test_seed_log_line():
    assert log_line(ALERT, "check", "ID", 0x2EC, "CN=cacert,OU=SPBU,O=CSCO,L=BGL,ST=KA,C=IN",
                    "CN=cisco.com", SEED_LEFT) == SEED_LINE
    assert log_line(ALERT, "check", "ID", "02:EC", "CN=cacert,OU=SPBU,O=CSCO,L=BGL,ST=KA,C=IN",
                    "CN=cisco.com", "1 days, 23 hours, 59 minutes, 41 seconds") == SEED_LINE
    warning = log_line(WARNING, "check", "ID", 0x2EC, "CN=cacert", "CN=cisco.com", 30 * DAY)
    assert warning == ("%SECURITY-CEPKI-4-CERT_EXPIRING_WARNING : Certificate expiring WITHIN 60 DAYS. "
                       "Trustpoint Name= check, Certificate Type= ID, Serial Number= 02:EC, "
                       "Issuer Name= CN=cacert, Subject name= CN=cisco.com, "
                       "Time Left= 30 days, 0 hours, 0 minutes, 0 seconds")
    with pytest.raises(ValueError):
        log_line("notice", "check", "ID", 1, "CN=a", "CN=b", DAY)


def test_seed_log_line_from_openssl_certificate(tmp_path: Path):
    """The seed's certificate rebuilt with openssl: names print as IOS XR prints them."""
    def openssl(*args):
        p = subprocess.run(["openssl", *args], cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
            "-subj", "/C=IN/ST=KA/L=BGL/O=CSCO/OU=SPBU/CN=cacert")
    openssl("req", "-new", *ec, "-keyout", "id.key", "-out", "id.csr", "-subj", "/CN=cisco.com")
    openssl("x509", "-req", "-in", "id.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x2EC",
            "-days", "30", "-out", "id.pem")
    cert = x509.load_pem_x509_certificate((tmp_path / "id.pem").read_bytes())
    now = cert.not_valid_after_utc - SEED_LEFT
    a = alert_due(cert.not_valid_after_utc, now, None)
    assert a.level == ALERT and a.time_left == SEED_LEFT
    assert log_line(a.level, "check", "ID", cert.serial_number, cert.issuer, cert.subject, a.time_left) == SEED_LINE


def test_log_line_fields_cannot_break_the_line():
    line = log_line(ALERT, "tp\nforged", "ID", 1, "CN=a\r\n%FAKE", "CN=" + "x" * 2000, DAY)
    assert "\n" not in line and "\r" not in line
    assert "tp?forged" in line
    assert len(line) < 1000


@pytest.mark.parametrize("role,kw,expected", [
    ("id", {}, True),
    ("ID", {}, True),
    ("ca", {}, True),
    ("ca", {"has_router_cert": False}, False),
    ("id", {"has_router_cert": False}, True),
    ("id", {"is_sudi": True}, False),
    ("ca", {"in_trustpool": True}, False),
    ("id", {"usage_keys": True}, False),
])
def test_eligible(role, kw, expected):
    args = dict(is_sudi=False, in_trustpool=False, has_router_cert=True, usage_keys=False)
    args.update(kw)
    assert eligible(role, **args) is expected


def test_eligible_unknown_role():
    with pytest.raises(ValueError):
        eligible("sub-ca", is_sudi=False, in_trustpool=False, has_router_cert=True, usage_keys=False)
