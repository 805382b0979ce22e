"""Debian roots, one a suite, for running tests against other releases.

``TRIXIE`` is Debian 13: Postfix 3.10, Python 3.13, OpenSSL 3.5, and both
redis-server 8.0 and valkey-server 8.1 for the fleet and Redis tests.
``FORKY`` is Debian testing, whose Postfix is the newest stable one in
Debian's archive (3.11).  Each root is made once with debootstrap from the
Debian mirror this machine's apt uses, with those packages and a virtual
environment holding this package's dependencies, and kept in a cache
directory outside the work tree (``TLSMGR_DEBIAN13_ROOT``, default
/var/cache/tlsmgr-tests/debian13; ``TLSMGR_FORKY_ROOT``, default
/var/cache/tlsmgr-tests/forky), so that later runs and CI reuse it.  It is
made anew when it is missing, when the recipe (this file, pyproject.toml)
changed, or when it no longer runs.

Tests run inside a root with ``run()``: in a mount namespace of their own
(``unshare --mount``), so that the bind mounts of /proc, /dev, /dev/pts,
/sys and the source tree (at /src) vanish with it whatever happens; the
source tree is read-only there.  pip inside it gets this machine's CA
bundle and pip settings (its config files, its PIP_ variables and the
local directories they name).

Everything needs root.  Every command is bounded in time; a missing
piece (debootstrap, network, a package) is one AssertionError that says
what failed, with the end of its output.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/tlsmgr-tests")
POSTFIX_PACKAGES = ["postfix", "python3", "python3-venv", "python3-dev", "openssl",
                    "ca-certificates", "gcc", "libc6-dev"]
# The fleet tests' network namespaces and the two servers of the Redis tests.
REDIS_PACKAGES = ["iproute2", "redis-server", "valkey-server"]
VENV = "/opt/tlsmgr-venv"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONFIG_FILES = [Path("/etc/pip.conf"), Path("/etc/xdg/pip")]
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")

BUILD_TIMEOUT = 1200         # debootstrap and apt-get, on a slow mirror
RUN_TIMEOUT = 1500

# The package, copied out of the read-only /src to be built and installed.
_COPY_PACKAGE = ("rm -rf /tmp/tlsmgr-src && mkdir /tmp/tlsmgr-src && "
                 "cp -r /src/pyproject.toml /src/setup.py /src/README.md /src/src /src/man "
                 "/tmp/tlsmgr-src && find /tmp/tlsmgr-src/src -name '*.so' -delete")


def _run(command: list[str], what: str, timeout: float, **options) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, **options)
    except FileNotFoundError as err:
        raise AssertionError("%s: %s is not installed" % (what, err.filename)) from None
    except subprocess.TimeoutExpired:
        raise AssertionError("%s: no end after %d s (%s)"
                             % (what, timeout, " ".join(command))) from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-40:]
        raise AssertionError("%s failed (exit %d):\n%s"
                             % (what, result.returncode, "\n".join(tail)))
    return result.stdout


def host_mirror() -> str | None:
    """The Debian mirror this machine's apt uses, if it names one."""
    sources = Path("/etc/apt/sources.list.d")
    texts = [path.read_text() for path in sorted(sources.glob("*.sources"))]
    for text in texts:
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\b(bookworm|trixie|forky|sid)\b", stanza, re.M):
                uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if uris and "security" not in uris[1]:
                    return uris[1]
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        for line in listing.read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return words[-3] if words[1].startswith("[") else words[1]
    return None


def debootstrap_default_mirror() -> str:
    """The mirror debootstrap uses when given none."""
    found = re.search(r'^DEF_MIRROR="([^"]+)"', DEBOOTSTRAP.read_text(), re.M)
    assert found, "%s names no default mirror: give the host's apt a Debian mirror" % DEBOOTSTRAP
    return found[1]


def pip_paths() -> list[Path]:
    """Local directories and files that pip's settings here name (wheels,
    simple indexes, constraints): they are bound into the root."""
    texts = [os.environ.get(name, "") for name in os.environ if name.startswith("PIP_")]
    for config in PIP_CONFIG_FILES:
        for path in ([config] if config.is_file() else sorted(config.glob("*"))
                     if config.is_dir() else []):
            texts.append(path.read_text())
    found = []
    for text in texts:
        for match in re.findall(r"(?:file://)?(/[^\s,'\"]+)", text):
            path = Path(match)
            if path.exists() and not str(path).startswith(("/etc/", "/proc", "/dev")):
                found.append(path)
    return sorted(set(found))


def install_package() -> str:
    """A shell command: this package, as /src has it now, into the root's
    virtual environment (no download: its dependencies are there)."""
    return ("%s && %s/bin/pip install -q --no-deps --no-build-isolation /tmp/tlsmgr-src"
            % (_COPY_PACKAGE, VENV))


def _quote(text) -> str:
    return "'" + str(text).replace("'", "'\\''") + "'"


APT_CONF = Path("/etc/apt/apt.conf.d")
# Services must not start while apt installs: the tests start them.
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


def debootstrap(suite: str, target: Path, script: str | None = None,
                include: tuple[str, ...] = ()) -> None:
    """A minbase root of *suite* at *target*, from this machine's mirror,
    with its apt settings, and services kept from starting."""
    mirror = host_mirror()
    if script and not mirror:
        mirror = debootstrap_default_mirror()
    _run(["debootstrap", "--variant=minbase", *(["--include=" + ",".join(include)]
                                                if include else []),
          suite, str(target), *([mirror] if mirror else []), *([script] if script else [])],
         "debootstrap of Debian %s (apt-get install debootstrap; it needs Debian's mirror)"
         % suite, BUILD_TIMEOUT)
    for conf in apt_settings():
        shutil.copyfile(conf, target / "etc" / "apt" / "apt.conf.d" / conf.name)
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    # It is / inside: mkdtemp's 0700 would keep mail_owner out of every path.
    target.chmod(0o755)


def in_root(root: Path, command: list[str], what: str, timeout: float,
            environment: dict[str, str], binds: tuple[tuple[str, str], ...] = (),
            read_only: tuple[tuple[str, str], ...] = (), netns: str | None = None) -> str:
    """*command* chrooted in *root*, as root, with only *environment*, in a
    mount namespace of its own (and in network namespace *netns*), so that
    its mounts of /proc, /sys, /dev and of *binds* (source, target in the
    root) vanish with it whatever happens; what it printed."""
    for name in ("etc/resolv.conf", "etc/hosts"):
        if Path("/" + name).exists():
            (root / name).unlink(missing_ok=True)
            shutil.copyfile("/" + name, root / name)
    # The root a mount point of its own, as / is: ip netns, run inside,
    # makes / a slave mount, which only a mount point can be.
    mounts = ["mount --bind %s %s" % (_quote(root), _quote(root))]
    mounts += ["mkdir -p %s && mount --rbind %s %s"
               % (_quote(root / target), _quote(source), _quote(root / target))
               for source, target in (("/proc", "proc"), ("/sys", "sys"), ("/dev", "dev"),
                                      *binds)]
    mounts += ["mkdir -p %s && mount --bind %s %s && mount -o remount,bind,ro %s"
               % (_quote(root / target), _quote(source), _quote(root / target),
                  _quote(root / target)) for source, target in read_only]
    script = "set -e; %s; exec chroot %s /usr/bin/env -i %s %s" % (
        "; ".join(mounts), _quote(root),
        " ".join(_quote("%s=%s" % item) for item in environment.items()),
        " ".join(_quote(word) for word in command))
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return _run([*prefix, "unshare", "--mount", "--propagation", "private", "--fork",
                 "/bin/sh", "-c", script], what, timeout)


def kill_inside(root: Path) -> None:
    """SIGKILL whatever still runs inside *root* (a daemon a test left)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "root") == str(root):
                    os.kill(int(proc.name), 9)
            except OSError:
                continue


class DebianRoot:
    """One suite's root, at $variable or CACHE/name."""

    def __init__(self, suite: str, name: str, packages: list[str],
                 script: str | None = None):
        self.suite, self.name, self.packages = suite, name, packages
        # debootstrap's script for a suite newer than it knows.
        self.script = script
        self.variable = "TLSMGR_%s_ROOT" % name.upper()
        self.path = Path(os.environ.get(self.variable, CACHE / name))
        self.stamp = self.path / "etc" / "tlsmgr-test-root"

    def __repr__(self) -> str:
        return "DebianRoot(%s at %s)" % (self.suite, self.path)

    def recipe(self) -> str:
        """What the root is made from: it is made anew when this changes."""
        digest = hashlib.sha256(self.suite.encode())
        for path in (Path(__file__), SOURCE / "pyproject.toml"):
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def usable(self) -> bool:
        if not self.stamp.exists() or self.stamp.read_text() != self.recipe():
            return False
        try:
            self.run(["%s/bin/python" % VENV, "-c", "import lmdb, uvloop, aiosmtpd"],
                     "a check", timeout=120)
            return True
        except AssertionError:
            return False

    def ensure(self) -> None:
        """The root, made or made anew as need be."""
        if self.usable():
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=self.name + "-", dir=self.path.parent))
        try:
            debootstrap(self.suite, partial, self.script, include=("ca-certificates",))
            partial.rename(self.path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        # postfix asks no questions.
        self.run(["/bin/sh", "-c",
                  "echo 'postfix postfix/main_mailer_type select No configuration' "
                  "| debconf-set-selections && apt-get update -qq && "
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                  "--no-install-recommends %s >/dev/null && python3 -m venv %s"
                  % (" ".join(self.packages), VENV)],
                 "installing %s in the Debian %s root" % (", ".join(self.packages), self.suite),
                 timeout=BUILD_TIMEOUT)
        # pip's own retries are few and short, so that no network is one error soon.
        self.run(["/bin/sh", "-c", "%s && %s/bin/pip install -q --retries 2 --timeout 30 "
                  "'setuptools>=68' wheel '/tmp/tlsmgr-src[test]'" % (_COPY_PACKAGE, VENV)],
                 "pip install of the package and its test dependencies in the Debian %s root"
                 % self.suite, timeout=BUILD_TIMEOUT)
        self.stamp.write_text(self.recipe())

    def _copy_host_files(self) -> None:
        """What the root needs of this machine at each run (name resolution
        aside, which in_root() copies): the CA bundle and pip's settings."""
        if HOST_CA_BUNDLE.exists():
            shutil.copyfile(HOST_CA_BUNDLE, self.path / "etc" / "ssl" / "host-ca-bundle.crt")
        for config in PIP_CONFIG_FILES:
            if config.is_file():
                shutil.copyfile(config, self.path / str(config).lstrip("/"))
            elif config.is_dir():
                shutil.copytree(config, self.path / str(config).lstrip("/"),
                                dirs_exist_ok=True)

    def run(self, command: list[str], what: str, timeout: float = RUN_TIMEOUT,
            env: dict | None = None) -> str:
        """command inside the root, as root, in a mount namespace of its own;
        what it printed.  Processes it leaves in the root are killed after."""
        self._copy_host_files()
        environment = {"PATH": "%s/bin:/usr/sbin:/usr/bin:/sbin:/bin" % VENV, "HOME": "/root",
                       "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                       **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
                       "PIP_CERT": "/etc/ssl/host-ca-bundle.crt",
                       "SSL_CERT_FILE": "/etc/ssl/host-ca-bundle.crt",
                       **(env or {})}
        try:
            return in_root(self.path, command, what, timeout, environment,
                           binds=tuple((str(path), str(path).lstrip("/"))
                                       for path in pip_paths()),
                           read_only=((str(SOURCE), "src"),))
        finally:
            kill_inside(self.path)


TRIXIE = DebianRoot("trixie", "debian13", POSTFIX_PACKAGES + REDIS_PACKAGES)
# Debian testing; debootstrap names it after its release, as it does sid.
FORKY = DebianRoot("forky", "forky", POSTFIX_PACKAGES, script="sid")
