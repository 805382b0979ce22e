"""Socket I/O that never hangs: every socket is non-blocking and every call
has a deadline (time.monotonic, as `now`)."""

import errno
import os
import select
import socket
import threading
import time

from hostile.attr0 import HANDSHAKE_MSG, Garbage, MiB, Parser, status_of

now = time.monotonic


class Worker:
    """A daemon thread running self._run until finish() sets self.stop; it
    is joined for at most `join_timeout` seconds."""

    def __init__(self, name, join_timeout):
        self.join_timeout = join_timeout
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        raise NotImplementedError

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(self.join_timeout)


def errname(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def connect_unix(path, timeout):
    """Like a blocking connect() bounded by `timeout`: on a UNIX socket a full
    listen backlog gives EAGAIN, so retry until the deadline.  The returned
    socket is non-blocking."""
    end = now() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            return s
        except (BlockingIOError, InterruptedError) as e:
            if e.errno == errno.EINPROGRESS:
                p = select.poll()
                p.register(s, select.POLLOUT)
                p.poll(max(1, int((end - now()) * 1000)))
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    return s
                s.close()
                raise OSError(err, os.strerror(err)) from None
            s.close()
            if now() >= end:
                raise TimeoutError("connect: listen queue full (EAGAIN) for %.1fs"
                                   % timeout) from None
            time.sleep(0.005)
        except BaseException:
            s.close()
            raise


def wait_fd(s, events, timeout):
    try:
        p = select.poll()
        p.register(s, events)
        return bool(p.poll(max(0, int(timeout * 1000))))
    except (OSError, ValueError):
        return True     # let the following I/O call report the problem


def try_recv(s, n=65536):
    try:
        d = s.recv(n)
    except (BlockingIOError, InterruptedError):
        return None, "again"
    except ConnectionResetError:
        return b"", "reset"
    except OSError:
        return b"", "error"
    return d, ("data" if d else "eof")


def send_until(s, data, deadline):
    """Send everything before `deadline`; returns (bytes_sent, outcome)."""
    mv = memoryview(data)
    sent = 0
    while sent < len(mv):
        try:
            n = s.send(mv[sent:sent + MiB])
            sent += n
            continue
        except (BlockingIOError, InterruptedError):
            pass
        except (BrokenPipeError, ConnectionResetError):
            return sent, "closed"
        except OSError as e:
            return sent, "error:" + errname(e)
        left = deadline - now()
        if left <= 0:
            return sent, "timeout"
        wait_fd(s, select.POLLOUT, min(left, 0.1))
    return sent, "ok"


def read_msg(s, parser, deadline):
    """Next complete message on s: (msg, 'ok') or (None, timeout|eof|reset|error|garbage)."""
    while True:
        m = parser.pop()
        if m is not None:
            return m, "ok"
        left = deadline - now()
        if left <= 0:
            return None, "timeout"
        if not wait_fd(s, select.POLLIN, min(left, 0.2)):
            continue
        d, st = try_recv(s)
        if st == "again":
            continue
        if st != "data":
            return None, st
        try:
            parser.feed(d)
        except Garbage:
            return None, "garbage"


def drain(s, timeout, max_msgs=3):
    """Collect what the daemon sends back within `timeout` (stop at EOF or
    after max_msgs messages).  Returns a short description dict."""
    p = Parser()
    end = now() + timeout
    out = {"msgs": 0, "first_status": None, "eof": False, "bytes": 0}
    while now() < end and out["msgs"] < max_msgs:
        if not wait_fd(s, select.POLLIN, min(0.1, max(0, end - now()))):
            continue
        d, st = try_recv(s)
        if st == "again":
            continue
        if st != "data":
            out["eof"] = st
            break
        out["bytes"] += len(d)
        try:
            p.feed(d)
        except Garbage:
            out["garbage"] = True
            break
        while p.msgs:
            m = p.pop()
            if m == HANDSHAKE_MSG and out["msgs"] == 0 and "hs" not in out:
                out["hs"] = True
                continue
            if out["msgs"] == 0:
                out["first_status"] = status_of(m)
            out["msgs"] += 1
    return out


def describe_drain(d):
    if d["msgs"]:
        r = "reply(status=%s)" % d["first_status"]
        if d["eof"]:
            r += "+closed"
        return r
    if d["eof"]:
        return "closed" if d["eof"] == "eof" else d["eof"]
    if d.get("garbage"):
        return "garbage"
    return "no-reply"


def read_handshake(s, deadline):
    p = Parser()
    m, st = read_msg(s, p, deadline)
    if st != "ok":
        return False, st, p
    if m != HANDSHAKE_MSG:
        return False, "bad-handshake", p
    return True, "ok", p
