"""Pristine Debian roots (debootstrap), and copies of them to change.

A pristine root is made once per Debian release with debootstrap from the
mirror this machine's apt uses (minbase, apt's package lists fetched,
services kept from starting) and kept under /var/cache/tlsmgr-tests/
(``TLSMGR_DEBIAN_ROOTS``), named by a hash of its recipe, so that a change
of the recipe makes a new one.  A test never changes it: ``Overlay`` puts
an overlay file system on it, whose changes go to a scratch directory that
goes when the test ends, whatever happened.

Commands run inside with ``Overlay.run()``: chroot in a mount namespace of
its own with /proc, /sys and /dev bound, and, with ``isolated``, in the
overlay's own network namespace (loopback only), so that a Postfix started
there listens on a loopback no other test shares; apt, which needs the
mirror, runs without.  Processes left inside are killed when the overlay
goes.  Everything needs root; every command is bounded in time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .debian13 import _quote, _run, host_mirror

CACHE = Path(os.environ.get("TLSMGR_DEBIAN_ROOTS", "/var/cache/tlsmgr-tests/debian-roots"))
# apt's downloaded packages, shared by every root of a release, so that a
# warm run installs without downloading.
ARCHIVES = CACHE / "apt-archives"
BUILD_TIMEOUT = 1500
RUN_TIMEOUT = 900
APT_CONF = Path("/etc/apt/apt.conf.d")
# Services must not start while apt installs: the test starts Postfix itself.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def apt_settings() -> list[Path]:
    """This machine's apt settings for reaching the mirror (a proxy, a
    snapshot's validity): they hold inside the roots too.  Not those a
    package ships (appstream's): its own package, installed in a root,
    would stop at the conffile prompt."""
    return [conf for conf in sorted(APT_CONF.glob("*"))
            if conf.is_file() and "Acquire::" in conf.read_text(errors="replace")
            and subprocess.run(["dpkg-query", "-S", str(conf)], capture_output=True,
                               timeout=60, check=False).returncode != 0]


def recipe(suite: str) -> str:
    digest = hashlib.sha256()
    for part in ("minbase", suite, host_mirror() or "", POLICY_RC_D,
                 *(conf.read_text() for conf in apt_settings())):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def pristine(suite: str) -> Path:
    """The pristine root of *suite*, made if it is missing."""
    root = CACHE / ("%s-%s" % (suite, recipe(suite)))
    if root.is_dir():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="%s-partial-" % suite, dir=CACHE))
    try:
        mirror = host_mirror()
        _run(["debootstrap", "--variant=minbase", suite, str(partial),
              *([mirror] if mirror else [])],
             "debootstrap of %s (apt-get install debootstrap; it needs Debian's mirror)"
             % suite, BUILD_TIMEOUT)
        for conf in apt_settings():
            shutil.copyfile(conf, partial / "etc" / "apt" / "apt.conf.d" / conf.name)
        policy = partial / "usr" / "sbin" / "policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        _in_root(partial, None, ["apt-get", "update", "-qq"], "apt-get update in %s" % suite,
                 BUILD_TIMEOUT)
        # Old pristine roots of this release go: only the recipe's own stays.
        for old in CACHE.glob("%s-*" % suite):
            if old != partial and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        partial.chmod(0o755)                  # mkdtemp's 0700: the root's / is 0755
        partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def _in_root(root: Path, netns: str | None, command: list[str], what: str, timeout: float,
             env: dict[str, str] | None = None, binds: tuple[tuple[str, str], ...] = ()
             ) -> str:
    """*command* in *root*, as root, in a mount namespace of its own (and
    in network namespace *netns*); what it printed."""
    for name in ("etc/resolv.conf", "etc/hosts"):
        if Path("/" + name).exists():
            (root / name).unlink(missing_ok=True)
            shutil.copyfile("/" + name, root / name)
    mounts = ["mkdir -p %s && mount --rbind %s %s" % (_quote(root / target), _quote(source),
                                                      _quote(root / target))
              for source, target in (("/proc", "proc"), ("/sys", "sys"), ("/dev", "dev"),
                                     *binds)]
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                   "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
    script = "set -e; %s; exec chroot %s /usr/bin/env -i %s %s" % (
        "; ".join(mounts), _quote(root),
        " ".join(_quote("%s=%s" % item) for item in environment.items()),
        " ".join(_quote(word) for word in command))
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return _run([*prefix, "unshare", "--mount", "--propagation", "private", "--fork",
                 "/bin/sh", "-c", script], what, timeout)


class Overlay:
    """A changeable copy of a pristine root, as an overlay mount on it."""

    def __init__(self, lower: Path, netns: bool = False):
        self.scratch = Path(tempfile.mkdtemp(prefix="tlsmgr-overlay-"))
        self.root = self.scratch / "root"
        self.netns: str | None = None
        for name in ("upper", "work", "root"):
            (self.scratch / name).mkdir()
        ARCHIVES.mkdir(parents=True, exist_ok=True)
        self.archives = ARCHIVES / lower.name.split("-")[0]
        (self.archives / "partial").mkdir(parents=True, exist_ok=True)
        try:
            _run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,"
                  "workdir=%s" % (lower, self.scratch / "upper", self.scratch / "work"),
                  str(self.root)], "mounting an overlay on %s" % lower, 60)
            if netns:
                self.netns = "tlsmgr-deb-%d-%s" % (os.getpid(), self.scratch.name[-8:])
                _run(["ip", "netns", "add", self.netns], "ip netns add", 30)
                _run(["ip", "-n", self.netns, "link", "set", "lo", "up"], "lo up", 30)
        except BaseException:
            self.close()
            raise

    def run(self, command: list[str], what: str, timeout: float = RUN_TIMEOUT,
            env: dict[str, str] | None = None,
            binds: tuple[tuple[str, str], ...] = (), isolated: bool = False) -> str:
        """*command* inside; apt's downloads kept in the shared cache."""
        return _in_root(self.root, self.netns if isolated else None, command, what, timeout,
                        env, ((str(self.archives), "var/cache/apt/archives"), *binds))

    def sh(self, script: str, what: str, timeout: float = RUN_TIMEOUT, **options) -> str:
        return self.run(["/bin/sh", "-ec", script], what, timeout, **options)

    def close(self) -> None:
        """Kill what still runs inside, unmount, remove the scratch files."""
        _kill_inside(self.root)
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True,
                           timeout=30, check=False)
        if os.path.ismount(self.root):
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True,
                           timeout=60, check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Overlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_inside(root: Path) -> None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root") == str(root):
                    os.kill(int(proc.name), 9)
            except OSError:
                continue


# --- the Debian package, built in a pristine root ------------------------

SOURCE = Path(__file__).resolve().parents[2]
PACKAGES = Path(os.environ.get("TLSMGR_DEBIAN_PACKAGES",
                               "/var/cache/tlsmgr-tests/debian-packages"))
# What dpkg-buildpackage reads of the tree (setuptools reads README.md).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src", "man", "debian")


def _build_files() -> list[Path]:
    found = []
    for name in BUILD_INPUTS:
        path = SOURCE / name
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [p for p in found if "__pycache__" not in p.parts
            and not p.name.endswith((".so", ".pyc"))]


def source_hash(suite: str) -> str:
    """The package's inputs: the tree's files it is built from, this
    recipe, and the pristine root's."""
    digest = hashlib.sha256(recipe(suite).encode() + Path(__file__).read_bytes())
    for path in _build_files():
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def built_package(suite: str) -> Path:
    """A directory holding tlsmgr_*.deb built for *suite* from this tree
    (dpkg-buildpackage -us -uc -b in a pristine root, its build
    dependencies from the archive) and lintian.txt, what lintian said of
    it; built once for each state of the tree."""
    done = PACKAGES / ("%s-%s" % (suite, source_hash(suite)))
    if (done / "lintian.txt").exists():
        return done
    lower = pristine(suite)
    PACKAGES.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="%s-partial-" % suite, dir=PACKAGES))
    try:
        with Overlay(lower) as root:
            build = root.root / "build" / "tlsmgr"
            build.mkdir(parents=True)
            for path in _build_files():
                target = build / path.relative_to(SOURCE)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            root.sh("cd /build/tlsmgr && apt-get build-dep -y -qq ./ >/dev/null && "
                    "apt-get install -y -qq --no-install-recommends lintian >/dev/null",
                    "installing the build dependencies and lintian in %s" % suite,
                    BUILD_TIMEOUT)
            root.sh("cd /build/tlsmgr && dpkg-buildpackage -us -uc -b",
                    "dpkg-buildpackage in %s" % suite, BUILD_TIMEOUT)
            # lintian's own exit status says nothing here: the test reads its tags.
            lintian = root.sh("lintian --info --display-info --show-overrides "
                              "/build/tlsmgr_*.changes || true", "lintian in %s" % suite)
            for deb in (root.root / "build").glob("tlsmgr_*.deb"):
                shutil.copy2(deb, partial / deb.name)
        (partial / "lintian.txt").write_text(lintian)
        for old in PACKAGES.glob("%s-*" % suite):
            if old != partial and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        partial.rename(done)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return done
