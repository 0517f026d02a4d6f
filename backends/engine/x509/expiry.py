"""Expiry notifications for PKI certificates (IOS XR "Expiry Notification for PKI Certificate").

Schedule, counted back from the certificate's notAfter:
- the first notification 60 days before expiry, then one every week while more than a week
  is left: warnings at -60, -53, -46, -39, -32, -25, -18 and -11 days;
- then one every day until expiry: alerts at -7, -6, ..., -1 days (a week or less left).

All times are timezone-aware datetimes given by the caller; nothing here reads the clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

WARNING = "warning"
ALERT = "alert"

FIRST_NOTICE = timedelta(days=60)
WEEK = timedelta(days=7)
DAY = timedelta(days=1)

# Bounds a log line: names come from certificates, which anyone can make as long as they like.
MAX_FIELD = 512


def _offsets() -> tuple[tuple[timedelta, str], ...]:
    out = []
    off = FIRST_NOTICE
    while off > WEEK:
        out.append((off, WARNING))
        off -= WEEK
    out.extend((d * DAY, ALERT) for d in range(7, 0, -1))
    return tuple(out)


# (time before notAfter, level), earliest first: 8 warnings and 7 alerts.
SCHEDULE = _offsets()


@dataclass(frozen=True)
class Alert:
    level: str          # WARNING or ALERT
    due: datetime       # the schedule point this notification stands for
    time_left: timedelta


def alert_due(not_after: datetime, now: datetime, last_alert: datetime | None) -> Alert | None:
    """The notification to send now, or None.

    It is the newest schedule point p with p <= now and p > last_alert (any point when
    last_alert is None), provided the certificate has not expired yet (now < not_after).
    Points missed while the device was down collapse into the newest one: one notification,
    not a burst.
    """
    if now >= not_after:
        return None
    found = None
    for off, level in SCHEDULE:
        p = not_after - off
        if p > now:
            break
        if last_alert is None or p > last_alert:
            found = (p, level)
    if found is None:
        return None
    return Alert(level=found[1], due=found[0], time_left=not_after - now)


def next_point(not_after: datetime, after: datetime) -> datetime | None:
    """The first schedule point strictly after `after` (for arming a timer), or None."""
    for off, _level in SCHEDULE:
        p = not_after - off
        if p > after:
            return p
    return None


def time_left_text(td: timedelta) -> str:
    """'1 days, 23 hours, 59 minutes, 41 seconds' (the seed's wording; whole seconds, never negative)."""
    total = max(0, td // timedelta(seconds=1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days} days, {hours} hours, {minutes} minutes, {seconds} seconds"


def serial_text(serial: int) -> str:
    """A serial number as IOS XR shows it: big-endian bytes in uppercase hex joined by colons,
    at least one byte ('02:EC' for 0x2EC). Negative serials (malformed, but parseable) show
    their two's-complement bytes."""
    if serial < 0:
        raw = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
    else:
        raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02X}" for b in raw)


def _field(value) -> str:
    if isinstance(value, x509.Name):
        value = value.rfc4514_string()
    text = str(value)
    # A name with a newline would forge a second syslog line.
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD - 3] + "..."


# The seed quotes only the alert form; the warning form follows the IOS XR CEPKI naming
# (severity 4, CERT_EXPIRING_WARNING) with the same fields.
_HEADERS = {
    ALERT: "%SECURITY-CEPKI-1-CERT_EXPIRING_ALERT : Certificate expiring WITHIN A WEEK.",
    WARNING: "%SECURITY-CEPKI-4-CERT_EXPIRING_WARNING : Certificate expiring WITHIN 60 DAYS.",
}


def log_line(level: str, trustpoint: str, cert_type: str, serial: int | str,
             issuer: x509.Name | str, subject: x509.Name | str, time_left: timedelta | str) -> str:
    """The syslog line for one notification, on one line.

    `serial` may be the integer (formatted with serial_text) or text already formatted;
    names may be x509.Name (RFC 4514 form, as IOS XR prints them) or text."""
    try:
        header = _HEADERS[level]
    except KeyError:
        raise ValueError(f"unknown expiry notification level {level!r}") from None
    serial_s = serial_text(serial) if isinstance(serial, int) else serial
    left = time_left_text(time_left) if isinstance(time_left, timedelta) else time_left
    return (f"{header} Trustpoint Name= {_field(trustpoint)}, Certificate Type= {_field(cert_type)}, "
            f"Serial Number= {_field(serial_s)}, Issuer Name= {_field(issuer)}, "
            f"Subject name= {_field(subject)}, Time Left= {_field(left)}")


def eligible(cert_role: str, *, is_sudi: bool, in_trustpool: bool, has_router_cert: bool,
             usage_keys: bool) -> bool:
    """Whether a certificate gets expiry notifications (the seed's restrictions).

    cert_role is "ca" or "id" (the router's own certificate). Excluded: SUDI certificates,
    trust pool certificates (the pool has its own expiry handling), CA certificates of a
    trust point with no router certificate, and usage-key certificates. Trust point clones
    are also excluded by the seed; callers skip those before asking.
    """
    role = cert_role.lower()
    if role not in ("ca", "id"):
        raise ValueError(f"unknown certificate role {cert_role!r}")
    if is_sudi or in_trustpool or usage_keys:
        return False
    if role == "ca" and not has_router_cert:
        return False
    return True
