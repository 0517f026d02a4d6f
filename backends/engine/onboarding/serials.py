"""Serial numbers. A device's serial is any printable text of 1 to MAX_SERIAL characters
(RFC 8366's serial-number is a string; vendors' forms differ). The ones made here have
the LLLYYWWSSSS form: a three-letter manufacturing site code, the year counted from 1996,
the ISO week, and four letters or digits."""
from __future__ import annotations

import re
import secrets
from datetime import datetime

SERIAL_RE = re.compile(r"^[A-Z]{3}[0-9]{2}(0[1-9]|[1-4][0-9]|5[0-3])[A-Z0-9]{4}$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


MAX_SERIAL = 64


def is_valid_serial(serial: str) -> bool:
    """Any printable serial, without leading or trailing white space."""
    return 0 < len(serial) <= MAX_SERIAL and serial.isprintable() and serial == serial.strip()


def is_generated_form(serial: str) -> bool:
    """Whether serial has the LLLYYWWSSSS form make_serial gives."""
    return bool(SERIAL_RE.match(serial))


def make_serial(now: datetime, site: str = "FOC") -> str:
    year, week, _ = now.isocalendar()
    seq = "".join(secrets.choice(_ALPHABET) for _ in range(4))
    return f"{site}{(year - 1996) % 100:02d}{week:02d}{seq}"
