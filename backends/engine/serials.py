"""Serial numbers in LLLYYWWSSSS form: a three-letter manufacturing site code,
the year counted from 1996, the ISO week, and four letters or digits."""
from __future__ import annotations

import re
import secrets
from datetime import datetime

SERIAL_RE = re.compile(r"^[A-Z]{3}[0-9]{2}(0[1-9]|[1-4][0-9]|5[0-3])[A-Z0-9]{4}$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def is_valid_serial(serial: str) -> bool:
    return bool(SERIAL_RE.match(serial))


def make_serial(now: datetime, site: str = "FOC") -> str:
    year, week, _ = now.isocalendar()
    seq = "".join(secrets.choice(_ALPHABET) for _ in range(4))
    return f"{site}{(year - 1996) % 100:02d}{week:02d}{seq}"
