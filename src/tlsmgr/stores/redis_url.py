"""The credentials in a redis: table's URL: taken out, and masked for showing.

A URL may carry a user name and a password, as userinfo
(``redis://user:password@host``) or in its query (``?username=``,
``?password=``; redis-py takes the userinfo first), and in its query other
secrets that redis-py passes on (``ssl_password``, say).  Log lines, the
stats, the metrics and ``tlsmgr --show-config`` show a URL only as
:func:`redact_url` gives it.

This module imports nothing of redis-py, so that showing the settings
does not load it.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

MASK = "****"              # what is shown in place of a secret

# A query key is taken for a credential when its name holds any of these:
# redis-py passes every key on, as a keyword of its connection.
_CREDENTIAL_WORDS = ("pass", "secret", "token", "auth", "cred")
_AUTH_KEYS = ("username", "password")             # what Redis's AUTH takes


class Credentials(NamedTuple):
    """A user name and a password; empty when not given."""

    username: str = ""
    password: str = ""


def redact_url(url: str) -> str:
    """The URL with the password of its userinfo, and the value of every
    query key that names a credential, masked; the user name is kept.

    Any text is taken and nothing is checked.  Whatever comes before the
    last ``@`` is userinfo, so that a password holding a ``/``, ``?`` or
    ``#`` that should have been percent-encoded is masked whole, and the
    query is whatever follows the first ``?``."""
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        scheme, rest = "", url
    userinfo, at, rest = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if password:
        userinfo = user + colon + MASK
    where, question, query = (scheme + slashes + userinfo + at + rest).partition("?")
    return where + question + "&".join(_redact_pair(pair) for pair in query.split("&"))


def _redact_pair(pair: str) -> str:
    key, equals, value = pair.partition("=")
    name = unquote_plus(key).lower()
    if value and any(word in name for word in _CREDENTIAL_WORDS):
        return key + equals + MASK
    return pair


def split_credentials(url: str) -> tuple[str, Credentials]:
    """The URL without its user name and password, and those, as redis-py
    reads them: from the userinfo, else from ``username=`` and
    ``password=`` in the query.  A URL that cannot be split is left as it
    is, without credentials: reading it says what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, Credentials()
    if url.partition("://")[0].lower() != parts.scheme:
        return url, Credentials()          # no authority: not a URL of Redis
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else query.get("username", [""])[0]
    password = unquote(parts.password) if parts.password else query.get("password", [""])[0]
    kept = "&".join(pair for pair in parts.query.split("&")
                    if unquote_plus(pair.partition("=")[0]) not in _AUTH_KEYS)
    address = "%s://%s%s%s%s" % (parts.scheme, parts.netloc.rpartition("@")[2], parts.path,
                                 "?" + kept if kept else "",
                                 "#" + parts.fragment if parts.fragment else "")
    return address, Credentials(username, password)
