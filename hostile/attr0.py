"""The attr0 wire format as the protocol notes describe it: `name NUL value
NUL ...`, a message ends with one extra NUL.  Requests are built here, and
replies decoded with bounds, so that a daemon sending garbage cannot make
*us* use unbounded memory."""

import base64

HANDSHAKE = b"protocol\x00tlsmgr_protocol\x00\x00"
HANDSHAKE_MSG = [(b"protocol", b"tlsmgr_protocol")]
MiB = 1 << 20


def _b(x):
    return x if isinstance(x, (bytes, bytearray)) else str(x).encode()


def enc(*items):
    """attr0: name NUL value NUL ... then one NUL ending the message."""
    out = bytearray()
    for i in range(0, len(items), 2):
        out += _b(items[i]) + b"\x00" + _b(items[i + 1]) + b"\x00"
    out += b"\x00"
    return bytes(out)


def req_seed(n=32):
    return enc("request", "seed", "size", n)


def req_policy(t="smtpd"):
    return enc("request", "policy", "cache_type", t)


def req_lookup(cid, t="smtpd"):
    return enc("request", "lookup", "cache_type", t, "cache_id", cid)


def req_update(cid, session, t="smtpd"):
    return enc("request", "update", "cache_type", t, "cache_id", cid,
               "session", base64.b64encode(session))


def req_delete(cid, t="smtpd"):
    return enc("request", "delete", "cache_type", t, "cache_id", cid)


def req_tktkey(name=b""):
    return enc("request", "tktkey", "keyname", base64.b64encode(name))


def status_of(msg):
    """Signed status of a reply message, or None."""
    if not msg or msg[0][0] != b"status":
        return None
    try:
        v = int(msg[0][1].decode("ascii"), 10)
    except (ValueError, UnicodeDecodeError):
        return None
    if not 0 <= v <= 0xFFFFFFFF:
        return None
    return v - (1 << 32) if v >= (1 << 31) else v


class Garbage(Exception):
    pass


class Parser:
    """Incremental attr0 decoder with bounds, so that a daemon sending garbage
    cannot make *us* use unbounded memory."""
    MAX_TOKEN = 4 * MiB
    MAX_ATTRS = 10000

    def __init__(self):
        self.buf = bytearray()
        self.cur = []
        self.name = None
        self.msgs = []          # complete messages not yet consumed

    def feed(self, data):
        self.buf += data
        pos = 0
        buf = self.buf
        while True:
            i = buf.find(b"\x00", pos)
            if i < 0:
                break
            tok = bytes(buf[pos:i])
            pos = i + 1
            if self.name is None:
                if tok == b"":
                    self.msgs.append(self.cur)
                    self.cur = []
                else:
                    self.name = tok
            else:
                self.cur.append((self.name, tok))
                self.name = None
                if len(self.cur) > self.MAX_ATTRS:
                    raise Garbage("more than %d attributes in one reply" % self.MAX_ATTRS)
        del buf[:pos]
        if len(buf) > self.MAX_TOKEN:
            raise Garbage("reply token longer than %d bytes" % self.MAX_TOKEN)
        if len(self.msgs) > 200000:
            del self.msgs[:-1000]

    def pop(self):
        return self.msgs.pop(0) if self.msgs else None
