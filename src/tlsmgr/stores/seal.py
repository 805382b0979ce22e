"""The fleet's state sealed for Redis, with the fleet's secret.

Whoever can read the fleet's Redis must learn nothing secret from it, and
whoever can write it must not make a host accept what was written.  With
tlsmgr_fleet_secret_file set, every session and every ticket key that the
daemon writes there is sealed with AES-256-GCM (pyca cryptography), and
what it reads back is opened, or else treated as absent.

The secret file holds one secret per line, the base64 form of 32 random
bytes ('#' begins a comment).  The first line seals; every line opens, so
that the fleet can move to a new secret host by host (docs/FLEET.md).

A sealed value is laid out as

    version (1 byte) | secret id (4) | salt (16) | nonce (12) | ciphertext + tag (16)

* The secret id says which secret sealed it, so that a host without that
  secret can say so; it is derived from the secret (HKDF) and tells
  nothing of it.
* Each process seals under a key of its own, derived from the secret and
  a random salt (HKDF), with a counter for the nonce.  Nonces thus never
  repeat under one key, however many values the fleet writes; random
  96-bit nonces under one long-lived key would not be safe past about
  2**32 values, which a busy fleet writes in weeks.
* The associated data is the value's place, its Redis key name (which
  holds the cache type and id of a session, the period or name of a ticket
  key): a value moved to another place does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict
from collections.abc import Container

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..util.secretfile import SecretFileError, read_private_file

SECRET_BYTES = 32
PARAMETER = "tlsmgr_fleet_secret_file"
_VERSION = b"\x01"
_ID_BYTES = 4
_SALT_BYTES = 16
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER = 1 + _ID_BYTES + _SALT_BYTES + _NONCE_BYTES
_KEYS_KEPT = 64          # keys of other processes, derived once and kept
_MAKE_ONE = "make one with: tlsmgr-ctl fleet-secret"


class NotOpened(Exception):
    """A value that does not open; the message says why."""


def new_secret_line() -> str:
    """A new secret, as a line of the secret file."""
    return base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def _derive(secret: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(secret)


def _secret_id(secret: bytes) -> bytes:
    return _derive(secret, None, b"tlsmgr fleet secret id", _ID_BYTES)


def _sealing_key(secret: bytes, salt: bytes) -> AESGCM:
    return AESGCM(_derive(secret, salt, b"tlsmgr fleet seal v1", 32))


class Seal:
    """Seals values with the first secret and opens them with any."""

    def __init__(self, secrets: list[bytes]):
        if not secrets:
            raise ValueError("a seal needs at least one secret")
        self._secrets: dict[bytes, bytes] = {}
        for secret in secrets:
            self._secrets.setdefault(_secret_id(secret), secret)
        salt = os.urandom(_SALT_BYTES)
        self._prefix = _VERSION + _secret_id(secrets[0]) + salt
        self._key = _sealing_key(secrets[0], salt)
        self._next_nonce = 0
        self._keys: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._keys[self._prefix[1:]] = self._key

    @property
    def secret_ids(self) -> list[str]:
        """The ids of the secrets, in hex, as warnings name them."""
        return [secret_id.hex() for secret_id in self._secrets]

    def seal(self, value: bytes, place: bytes) -> bytes:
        nonce = self._next_nonce.to_bytes(_NONCE_BYTES, "big")
        self._next_nonce += 1
        return b"".join((self._prefix, nonce, self._key.encrypt(nonce, value, place)))

    def open(self, sealed: bytes, place: bytes) -> bytes:
        """The value sealed for this place; raises NotOpened."""
        if len(sealed) < _HEADER + _TAG_BYTES or sealed[:1] != _VERSION:
            raise NotOpened("not sealed by this daemon (unprotected, or damaged)")
        secret_id = sealed[1:1 + _ID_BYTES]
        key_id = sealed[1:1 + _ID_BYTES + _SALT_BYTES]
        key = self._keys.get(key_id)
        if key is None:
            secret = self._secrets.get(secret_id)
            if secret is None:
                raise NotOpened("sealed with a fleet secret this host does not have "
                                "(id %s; this host has %s)"
                                % (secret_id.hex(), ", ".join(self.secret_ids)))
            key = _sealing_key(secret, key_id[_ID_BYTES:])
            self._keys[key_id] = key
            if len(self._keys) > _KEYS_KEPT:
                self._keys.popitem(last=False)
        nonce = sealed[1 + _ID_BYTES + _SALT_BYTES:_HEADER]
        try:
            return key.decrypt(nonce, sealed[_HEADER:], place)
        except InvalidTag:
            raise NotOpened("does not authenticate: altered, or moved from another "
                            "place") from None


def read_secret_file(path: str, owners: Container[int]) -> Seal:
    """The Seal of a secret file; raises SecretFileError.

    The file must be private, as secretfile.py checks: owned by one of
    ``owners`` (root and mail_owner)."""
    secrets = []
    for number, line in enumerate(read_private_file(path, owners).splitlines(), 1):
        line = line.split(b"#", 1)[0].strip()
        if not line:
            continue
        try:
            secret = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            secret = b""
        if len(secret) != SECRET_BYTES:
            raise SecretFileError("line %d is not the base64 form of %d bytes (%s)"
                                  % (number, SECRET_BYTES, _MAKE_ONE))
        secrets.append(secret)
    if not secrets:
        raise SecretFileError("holds no secret (%s)" % _MAKE_ONE)
    return Seal(secrets)
