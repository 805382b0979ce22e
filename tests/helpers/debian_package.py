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
from collections.abc import Callable
from pathlib import Path

from .debian_roots import (
    POLICY_RC_D,
    _run,
    apt_settings,
    debootstrap,
    host_mirror,
    in_root,
    kill_inside,
)

CACHE = Path(os.environ.get("TLSMGR_DEBIAN_ROOTS", "/var/cache/tlsmgr-tests/debian-roots"))
# apt's downloaded packages, shared by every root of a release, so that a
# warm run installs without downloading.
ARCHIVES = CACHE / "apt-archives"
BUILD_TIMEOUT = 1500
RUN_TIMEOUT = 900


def recipe(suite: str) -> str:
    digest = hashlib.sha256()
    for part in ("minbase", suite, host_mirror() or "", POLICY_RC_D,
                 *(conf.read_text() for conf in apt_settings())):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def made_once(directory: Path, version: str, make: Callable[[Path], None]) -> Path:
    """directory/version, made by make() into a scratch directory beside
    it and renamed into place whole; the other versions go."""
    done = directory / version
    if done.is_dir():
        return done
    directory.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix="partial-", dir=directory))
    try:
        make(partial)
        for old in directory.glob(version.rsplit("-", 1)[0] + "-*"):
            if old != partial and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        partial.rename(done)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return done


def pristine(suite: str) -> Path:
    """The pristine root of *suite*, made if it is missing."""
    def make(root: Path) -> None:
        debootstrap(suite, root)
        in_root(root, ["apt-get", "update", "-qq"], "apt-get update in %s" % suite,
                BUILD_TIMEOUT, ENVIRONMENT)
    return made_once(CACHE, "%s-%s" % (suite, recipe(suite)), make)


# What commands inside see of the environment.
ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               "DEBIAN_FRONTEND": "noninteractive"}


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
        return in_root(self.root, command, what, timeout, {**ENVIRONMENT, **(env or {})},
                       ((str(self.archives), "var/cache/apt/archives"), *binds),
                       netns=self.netns if isolated else None)

    def sh(self, script: str, what: str, timeout: float = RUN_TIMEOUT, **options) -> str:
        return self.run(["/bin/sh", "-ec", script], what, timeout, **options)

    def close(self) -> None:
        """Kill what still runs inside, unmount, remove the scratch files."""
        kill_inside(self.root)
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
    def make(partial: Path) -> None:
        with Overlay(pristine(suite)) as root:
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
    return made_once(PACKAGES, "%s-%s" % (suite, source_hash(suite)), make)
