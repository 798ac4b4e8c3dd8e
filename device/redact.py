"""One redaction function for everything the daemon logs or publishes.

Text derived from configuration or from exceptions can carry a secret: a YAML error quotes the
line it failed on (`password: hunter2`), a stream URL holds `user:password@`, a library repeats
the URL it could not open. The rule is simple: every log record (see `device.logs`), every
published message text (see `device.messages`) and everything the CLI prints about a
configuration passes through `redact`.

Three nets, because none alone is enough:
1. the secret values themselves, registered when a configuration is loaded (`remember_secrets`);
   registered values are never forgotten while the process lives, so an old password is still
   masked after it was changed;
2. URL credentials (`scheme://user:password@host`), also when the password holds `/` or `@`;
3. pairs whose key names a secret (password, token, secret, ...): a YAML line `password: ...` as
   a parse error quotes it (to the end of the line), `key=value`, and `'key': 'value'`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
SECRET_KEY_WORDS = ("password", "passwd", "passphrase", "secret", "token", "api_key", "apikey",
                    "access_key", "private_key", "credential")
_MIN_SECRET_LENGTH = 3  # shorter values would mask ordinary words everywhere

# scheme://user:password@host — the password runs to the LAST '@' before the next whitespace or
# quote, so an unescaped '/' or '@' inside it is still covered (over-masking a path is harmless).
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):(?P<secret>[^\s'\"]*)@")
_KEY = r"[A-Za-z0-9_.-]*(?:" + "|".join(SECRET_KEY_WORDS) + r")[A-Za-z0-9_.-]*"
# A YAML line `password: value` (as a parse error quotes it): the value runs to the end of the
# line, since a plain YAML scalar may hold spaces and colons.
_YAML_PAIR = re.compile(r"(?im)^(?P<key>[ \t-]*[\"']?" + _KEY + r"[\"']?)(?P<sep>[ \t]*:[ \t]*)(?P<value>\S[^\r\n]*)")
# `password=value` anywhere on a line, and a quoted pair as a dict's repr shows it.
_EQUALS_PAIR = re.compile(r"(?i)(?P<key>" + _KEY + r")(?P<sep>[ \t]*=[ \t]*)(?P<value>\"[^\"\r\n]*\"?|'[^'\r\n]*'?|[^\s,;&]+)")
_QUOTED_PAIR = re.compile(r"(?i)(?P<key>[\"']" + _KEY + r"[\"'])(?P<sep>[ \t]*:[ \t]*)(?P<value>\"[^\"\r\n]*\"?|'[^'\r\n]*'?)")
_PAIRS = (_YAML_PAIR, _EQUALS_PAIR, _QUOTED_PAIR)

_lock = threading.Lock()
_known: set[str] = set()


def _is_secret_key(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in SECRET_KEY_WORDS)


def remember_secrets(values: Iterable[str]) -> None:
    """Register secret values to mask wherever they appear, whatever surrounds them."""
    with _lock:
        _known.update(v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH)


def _yaml_value(raw: str) -> str:
    """The scalar of a YAML line's value: without a trailing comment and without its quotes."""
    value = raw.strip()
    if value[:1] in "\"'":
        return value[1:].split(value[0], 1)[0]  # an unterminated quote runs to the end of the line
    return value.split(" #", 1)[0].strip()


def secrets_in_text(text: str) -> list[str]:
    """Secret values in raw configuration text (`password: x`, URLs with credentials), read before
    the text is parsed, so that even a parse error quoting it cannot show them."""
    found = [_yaml_value(m.group("value")) for m in _YAML_PAIR.finditer(text)]
    found += [m.group("value").strip("\"'") for pattern in _PAIRS[1:] for m in pattern.finditer(text)]
    found += [m.group("secret") for m in _URL_CREDENTIALS.finditer(text)]
    return [s for s in found if s]


def _url_password(value: str) -> str:
    """The password of a whole value that is a URL (a camera source), up to its LAST '@': in a
    value we know where the URL ends, so a password with spaces, '/' or '@' is found whole."""
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme.isalnum() or "@" not in rest:
        return ""
    userinfo = rest.rsplit("@", 1)[0]
    return userinfo.partition(":")[2]


def secrets_in(data: Any) -> list[str]:
    """The secret values in a raw configuration: values of secret-named keys, and the passwords
    inside URLs, at any depth."""
    found: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item, key)
        elif node is not None:
            text = node.get_secret_value() if hasattr(node, "get_secret_value") else str(node)
            if _is_secret_key(key):
                found.append(text)
            found.extend(m.group("secret") for m in _URL_CREDENTIALS.finditer(text))
            found.append(_url_password(text))

    walk(data)
    return [s for s in found if s]


def redact(text: object) -> str:
    """`text` with every secret we know of, or can recognise, replaced by ***."""
    out = str(text)
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # longest first: one secret may contain another
    for secret in known:
        out = out.replace(secret, MASK)
    out = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", out)
    for pattern in _PAIRS:
        out = pattern.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", out)
    return out
