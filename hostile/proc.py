"""What the suite reads of the daemon besides its socket: /proc/PID/status
(VmRSS, VmHWM, State) and the count of /proc/PID/fd."""

import os

from hostile.net import Worker


def proc_status(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            txt = f.read()
    except OSError:
        return None
    d = {}
    for line in txt.splitlines():
        k, _, v = line.partition(":")
        v = v.strip()
        if k in ("VmRSS", "VmHWM"):
            try:
                d[k] = int(v.split()[0]) / 1024.0
            except (ValueError, IndexError):
                pass
        elif k == "State":
            d["State"] = v
    return d


def proc_alive(pid):
    st = proc_status(pid)
    return bool(st) and st.get("State", "R")[:1] not in ("Z", "X")


def proc_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Monitor(Worker):
    """Samples the daemon's RSS (and fd count) while an attack runs."""

    def __init__(self, pid):
        super().__init__("monitor", 2)
        self.pid = pid
        self.peak_rss = None
        self.peak_fds = None
        self.died = False

    def _sample(self, with_fds):
        st = proc_status(self.pid)
        if not st or st.get("State", "R")[:1] in ("Z", "X"):
            self.died = True
            return
        r = st.get("VmRSS")
        if r is not None and (self.peak_rss is None or r > self.peak_rss):
            self.peak_rss = r
        if with_fds:
            n = proc_fds(self.pid)
            if n is not None and (self.peak_fds is None or n > self.peak_fds):
                self.peak_fds = n

    def _run(self):
        i = 0
        while not self.stop.is_set():
            try:
                self._sample(i % 5 == 0)
            except Exception:
                pass
            i += 1
            self.stop.wait(0.05)

