"""The one routine that masks secrets in text shown to people: URLs, settings, errors, logs.

Every form a password takes in a connection string is covered: the user-info of a URL
(``scheme://user:SECRET@host``), query parameters (``?password=SECRET``, ``&sslpassword=``...)
and libpq key=value strings (``host=h password=SECRET`` or ``password='SEC RET'``). Masking is
textual and errs on the side of hiding: whatever follows a secret's name up to the next
separator becomes ``***``.
"""

from __future__ import annotations

import re

MASK = "***"
#: Names whose values are secrets, as URL query parameters or libpq keywords (any case).
SECRET_NAMES = ("password", "passwd", "pwd", "sslpassword", "secret", "token", "api_key", "apikey")

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<secret>[^\s/]*)(?P<tail>@)")
_KEY_VALUE = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:" + "|".join(SECRET_NAMES) + r")\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&;#]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every password (URL user-info, ``password=``-style query parameter or
    libpq keyword, quoted or not) replaced by ``***``. Idempotent."""
    text = _USERINFO.sub(lambda m: m["head"] + (MASK if m["secret"] else "") + m["tail"], text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)


__all__ = ["MASK", "SECRET_NAMES", "redact"]
