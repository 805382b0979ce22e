"""Putting this daemon in place of Postfix's stock tlsmgr(8), and back.

master(8) runs ``$daemon_directory/COMMAND`` for each master.cf service.
Installing makes ``$daemon_directory/pytlsmgr`` a symlink to this
package's ``tlsmgr`` console script and switches the command of the
``tlsmgr/unix`` service from ``tlsmgr`` to ``pytlsmgr``; uninstalling
switches it back and removes the symlink.  A ``pytlsmgr`` that a Debian
package installed (the tlsmgr package ships one, a file) is the package's:
it is used as it is, and left in place.  The entry's other fields
(chroot, wakeup, process limit) and its arguments stay, but for one
``-o`` that installing adds and uninstalling removes (see REFERENCE).

Uninstalling also looks for what the stock daemon cannot do: a session
cache that is a ``memory:`` or ``redis:`` table, and parameters of this
daemon (``tlsmgr_*``), in main.cf or in the service's own ``-o``.  It
names each one, and with --fix-settings replaces such a cache by a file
and removes such a parameter; without, it prints the postconf commands
that would.

main.cf and master.cf are changed only by Postfix's own postconf (``-e``
and ``-X`` for main.cf, ``-F``, ``-P`` and ``-PX`` for the entry), and
what is shown is what ``postconf -Mf`` prints.  postconf rewrites the one
entry it changes in its own layout (Debian's "tlsmgr    unix" becomes
"tlsmgr     unix"), so the entry's first line then gets back the columns
it had before, up to the command (keep_columns()): only that whitespace
is written other than by postconf, and master.cf after install and
uninstall is byte for byte the file it was.
daemon_directory comes from ``postconf -h``: it is the Postfix
installation's own answer.

These are the ``tlsmgr-ctl install`` and ``tlsmgr-ctl uninstall``
commands.  Every problem is one line naming it and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO

from .. import config, stores
from ..util import log

SERVICE = "tlsmgr/unix"
STOCK_COMMAND = "tlsmgr"
OUR_COMMAND = "pytlsmgr"
OUR_SCRIPT = "tlsmgr"
POSTCONF_TIMEOUT = 30
RELOAD_TIMEOUT = 120
# Where Postfix's commands live when PATH lacks the sbin directories.
SBIN_PATH = os.pathsep.join(("/usr/sbin", "/usr/local/sbin", "/sbin"))

# postconf(1) warns about each parameter of main.cf or of an -o whose name
# it does not know, as "unused", unless a $name of it appears in a
# name=value of main.cf or master.cf; and about each $name there of a
# parameter set nowhere, as "undefined" (postconf_user.c).  So while this
# daemon runs, its entry carries "-o REFERENCE=${REFERENCE?}${p?}..." for
# each parameter p of ours that main.cf or the entry sets: not for those
# set nowhere, which would be "undefined", nor for a misspelt tlsmgr_*,
# whose warning is worth keeping.  One set or removed later is followed by
# the next install.  ${p?} is empty whatever p holds, so the daemon reads
# REFERENCE, a name it does not know, as empty, and holds no copy of a
# secret in it; REFERENCE's own ${REFERENCE?} is what keeps postconf from
# calling the -o itself unused.
OUR_PREFIX = config.OUR_PREFIX
OUR_PARAMETERS = tuple(p.name for p in config.PARAMETERS if p.ours)
REFERENCE = "tlsmgr_used_parameters"

# Table types this daemon opens and the stock one does not.
OURS_ONLY_TYPES = (stores.MEMORY_TYPE, stores.REDIS_TYPE)
# The type of a session cache for the stock daemon: btree, as Debian's
# main.cf has it, or lmdb where Postfix is built without Berkeley DB.
STOCK_CACHE_TYPES = ("btree", "lmdb")
CACHE_PARAMETERS = tuple("%s_tls_session_cache_database" % label
                         for label in config.CACHE_LABELS)

# The order in which fixes are made and shown: main.cf, then the entry.
FIX_OPTIONS = ("-e", "-X", "-P", "-PX")

HELP = {
    "install": "switch Postfix's tlsmgr service to this daemon (no server needed)",
    "uninstall": "switch Postfix's tlsmgr service back to the stock tlsmgr",
}

# The arguments of one postconf command, without "-c DIR".
Edit = tuple[str, ...]


class InstallError(Exception):
    """What stops install or uninstall: one line, naming the problem and the fix."""


@dataclass(frozen=True)
class Site:
    """One Postfix installation: where its configuration and daemons are."""

    config_directory: str
    master_cf: str
    daemon_directory: str
    postconf: str

    @property
    def link(self) -> str:
        return os.path.join(self.daemon_directory, OUR_COMMAND)

    @property
    def main_cf(self) -> str:
        return os.path.join(self.config_directory, "main.cf")


@dataclass(frozen=True)
class Leftover:
    """A setting the stock tlsmgr cannot use, and the postconf edit,
    option and argument, that replaces or removes it."""

    where: str          # the file, and for an -o the service
    setting: str        # as it may be shown
    problem: str
    option: str
    argument: str

    def warning(self) -> str:
        return "%s: %s: %s" % (self.where, self.setting, self.problem)


@dataclass(frozen=True)
class Plan:
    """What install or uninstall would do to one site.

    *edits* are the postconf commands to run, in order, and *after* the
    entry once they are run; *fixes* are the commands that fix the
    *leftovers*, among the edits only with *fix*.  *new_target* is what
    the symlink should point to, None for no symlink; a *packaged*
    daemon is no symlink of ours, and stays as it is.
    """

    action: str
    site: Site
    before: tuple[str, ...]
    after: tuple[str, ...]
    edits: tuple[Edit, ...]
    old_target: str | None
    new_target: str | None
    leftovers: tuple[Leftover, ...]
    fixes: tuple[Edit, ...]
    fix: bool
    packaged: bool = False
    columns: bytes | None = None        # the entry's first line, before

    @property
    def changes_master_cf(self) -> bool:
        return self.after != self.before

    @property
    def changes_link(self) -> bool:
        return self.old_target != self.new_target

    @property
    def changes(self) -> bool:
        return bool(self.edits) or self.changes_link


# --- finding things ------------------------------------------------------

def config_directory(option: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """-c DIR, else $MAIL_CONFIG, else /etc/postfix, as postfix(1) does."""
    return os.path.abspath(option or environ.get("MAIL_CONFIG")
                           or config.DEFAULT_CONFIG_DIRECTORY)


def find_program(name: str) -> str | None:
    """A Postfix command on PATH, else in the usual sbin directories."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def our_script() -> str:
    """The absolute path of this package's ``tlsmgr`` console script.

    The one beside the running Python comes first, so that a virtualenv's
    own script is used even when another ``tlsmgr`` is earlier on PATH.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), OUR_SCRIPT)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(OUR_SCRIPT)
    if found:
        return os.path.abspath(found)
    raise InstallError("cannot find the %s command of this package: install it with "
                       "pip (pip install .) into a virtualenv and run that "
                       "virtualenv's tlsmgr-ctl" % OUR_SCRIPT)


def run_tool(argv: list[str], timeout: float) -> str:
    """Run a Postfix command; its standard output, or InstallError."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InstallError("%s took more than %d seconds: is the system overloaded?"
                           % (" ".join(argv), timeout)) from None
    except OSError as err:
        raise InstallError("cannot run %s: %s" % (argv[0], err.strerror)) from None
    if done.returncode != 0:
        raise InstallError("%s failed: %s" % (" ".join(argv), why(done)))
    return str(done.stdout)


def why(done: subprocess.CompletedProcess[str]) -> str:
    """The last line a failed Postfix command printed, without its name."""
    lines = done.stderr.strip().splitlines()
    if not lines:
        # postfix(1) writes to stderr only when it is a terminal.
        return "exit status %d, see the mail log" % done.returncode
    return lines[-1].split(": fatal: ", 1)[-1]


def postconf(site: Site, *args: str, config_dir: str | None = None) -> str:
    return run_tool([site.postconf, "-c", config_dir or site.config_directory, *args],
                    POSTCONF_TIMEOUT)


def locate(option: str | None) -> Site:
    """The site named by -c DIR / $MAIL_CONFIG, checked to be usable."""
    directory = config_directory(option)
    program = find_program("postconf")
    if program is None:
        raise InstallError("postconf not found on PATH or in %s: install Postfix "
                           "(apt-get install postfix)" % SBIN_PATH)
    master_cf = os.path.join(directory, "master.cf")
    if not os.path.isfile(master_cf):
        raise InstallError("no master.cf in %s: name Postfix's configuration directory "
                           "with -c DIR or $MAIL_CONFIG" % directory)
    site = Site(directory, master_cf, "", program)
    daemon_directory = postconf(site, "-h", "daemon_directory").strip()
    if not os.path.isdir(daemon_directory):
        raise InstallError("daemon_directory %r (from postconf -c %s) is not a directory: "
                           "fix daemon_directory in main.cf" % (daemon_directory, directory))
    return Site(directory, master_cf, daemon_directory, program)


def service_entry(site: Site, config_dir: str | None = None) -> tuple[str, ...]:
    """The tlsmgr/unix entry as ``postconf -Mf`` shows it, one item a line."""
    return tuple(postconf(site, "-Mf", SERVICE, config_dir=config_dir).splitlines())


def service_command(site: Site, config_dir: str | None = None) -> str:
    """The entry's command field: the command name and its arguments."""
    return postconf(site, "-Fh", SERVICE + "/command", config_dir=config_dir).strip()


def settings(text: str) -> dict[str, str]:
    """The ``name = value`` lines postconf prints, with ``-P``'s
    ``service/type/`` taken off each name."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" =")
        found[name.rpartition("/")[2]] = value[1:]
    return found


def service_settings(site: Site, *options: str) -> dict[str, str]:
    """The entry's ``-o`` parameters; with -x, their values expanded."""
    return settings(postconf(site, "-P", *options, SERVICE))


def main_cf_names(site: Site) -> set[str]:
    """The parameters main.cf sets.

    They are read from the file, by the daemon's own reader, because
    ``postconf -n`` leaves out each one it takes for unused: ours, until
    the entry refers to them.
    """
    try:
        with open(site.main_cf, "rb") as file:
            text = os.fsdecode(file.read())
    except OSError as err:
        raise InstallError("cannot read %s: %s" % (site.main_cf, err.strerror)) from None
    return set(config.parse_main_cf(text, site.main_cf))


def with_name(command: str, name: str) -> str:
    """*command* with its first word replaced by *name*, arguments kept."""
    words = command.split(None, 1)
    return name if len(words) < 2 else name + " " + words[1]


def packaged_file(path: str) -> bool:
    """Whether a Debian package installed *path* (dpkg-query -S knows it)."""
    program = find_program("dpkg-query")
    if program is None:
        return False
    try:
        return subprocess.run([program, "-S", path], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=POSTCONF_TIMEOUT,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def link_target(path: str) -> str | None:
    """Where the symlink *path* points; None if there is nothing there."""
    if os.path.islink(path):
        return os.readlink(path)
    if os.path.lexists(path):
        raise InstallError("%s exists and is not a symlink, so it is not ours: "
                           "move it out of the way and run this again" % path)
    return None


# --- what would change ---------------------------------------------------

def plan(action: str, option: str | None, fix: bool = False) -> Plan:
    """Look at the site and work out what *action* would change; with
    *fix*, uninstall also fixes the leftovers."""
    site = locate(option)
    before = service_entry(site)
    if not before:
        raise InstallError("%s has no %s service: add Debian's line \"tlsmgr unix - - y "
                           "1000? 1 tlsmgr\" (see master.cf.proto) and run this again"
                           % (site.master_cf, SERVICE))
    command = service_command(site)
    name = command.split(None, 1)[0] if command else ""
    if name not in (STOCK_COMMAND, OUR_COMMAND):
        raise InstallError("%s service %s runs %r, neither the stock %s nor %s: set its "
                           "command by hand (postconf -c %s -F '%s/command=%s')"
                           % (site.master_cf, SERVICE, name, STOCK_COMMAND, OUR_COMMAND,
                              site.config_directory, SERVICE, STOCK_COMMAND))
    packaged = os.path.lexists(site.link) and packaged_file(site.link)
    old_target = None if packaged else link_target(site.link)
    main_names = main_cf_names(site)
    entry = service_settings(site)
    if action == "install":
        wanted = OUR_COMMAND
        new_target = None if packaged else our_script()
        reference = reference_value(main_names | entry.keys())
        left: list[Leftover] = []
    else:
        wanted, new_target, reference = STOCK_COMMAND, None, None
        left = leftovers(site, main_names)
    fixes = fix_edits(left)
    with tempfile.TemporaryDirectory(prefix="tlsmgr-install.") as scratch:
        rehearsal = Rehearsal(site, scratch)
        # The stock daemon is named only once the leftovers are fixed.
        for edit in fixes if fix else ():
            rehearsal.make(*edit)
        if name != wanted:
            # -F sets the whole command field: its arguments are taken as
            # the fixes left them, the -o REFERENCE among them.
            rehearsal.make("-F", "%s/command=%s" % (SERVICE, with_name(rehearsal.command(),
                                                                        wanted)))
        if reference != entry.get(REFERENCE):
            rehearsal.make(*(("-PX", "%s/%s" % (SERVICE, REFERENCE)) if reference is None
                             else ("-P", "%s/%s=%s" % (SERVICE, REFERENCE, reference))))
        after = rehearsal.entry()
    return Plan(action, site, before, after, tuple(rehearsal.edits), old_target, new_target,
                tuple(left), fixes, fix, packaged, entry_line(site))


def reference_value(names: Iterable[str]) -> str | None:
    """The value of the -o REFERENCE for our parameters among *names*;
    None when there are none."""
    ours = [name for name in OUR_PARAMETERS if name in names]
    if not ours:
        return None
    return "".join("${%s?}" % name for name in (REFERENCE, *ours))


def leftovers(site: Site, main_names: set[str]) -> list[Leftover]:
    """What main.cf and the entry's -o ask that the stock tlsmgr cannot do."""
    entry_where = "%s: %s" % (site.master_cf, SERVICE)
    main_values = settings(postconf(site, "-x", *CACHE_PARAMETERS))
    entry_values = service_settings(site, "-x")
    found = []
    stock_type = ""                 # asked of postconf when first needed
    for where, values, option, prefix in ((site.main_cf, main_values, "-e", ""),
                                          (entry_where, entry_values, "-P", SERVICE + "/")):
        for label, name in zip(config.CACHE_LABELS, CACHE_PARAMETERS):
            value = values.get(name, "")
            kind = value.partition(":")[0]
            if kind not in OURS_ONLY_TYPES:
                continue
            stock_type = stock_type or stock_cache_type(site)
            found.append(Leftover(
                where, '"%s = %s"' % (name, config.shown_value(name, value)),
                "the stock tlsmgr cannot open a %s: table" % kind, option,
                "%s%s=%s:${data_directory}/%s_scache" % (prefix, name, stock_type, label)))
    ours = "a parameter of this daemon: the stock tlsmgr ignores it and postconf " \
           "warns that it is unused"
    found += [Leftover(site.main_cf, name, ours, "-X", name)
              for name in sorted(main_names) if name.startswith(OUR_PREFIX)]
    found += [Leftover(entry_where, name, ours, "-PX", "%s/%s" % (SERVICE, name))
              for name in sorted(entry_values)
              if name.startswith(OUR_PREFIX) and name != REFERENCE]
    return found


def stock_cache_type(site: Site) -> str:
    """The table type for a stock session cache that this Postfix has."""
    have = postconf(site, "-m").split()
    for kind in STOCK_CACHE_TYPES:
        if kind in have:
            return kind
    raise InstallError("postconf -c %s -m lists none of %s for a TLS session cache: "
                       "set the *_tls_session_cache_database parameters by hand"
                       % (site.config_directory, ", ".join(STOCK_CACHE_TYPES)))


def fix_edits(found: Iterable[Leftover]) -> tuple[Edit, ...]:
    """The postconf commands that fix *found*, one for each option used."""
    arguments: dict[str, list[str]] = {option: [] for option in FIX_OPTIONS}
    for leftover in found:
        arguments[leftover.option].append(leftover.argument)
    return tuple((option, *args) for option, args in arguments.items() if args)


class Rehearsal:
    """Edits made first on a private copy of main.cf and master.cf, by
    postconf, so that each is planned on what the ones before it left."""

    def __init__(self, site: Site, scratch: str):
        self.site = site
        self.scratch = scratch
        self.edits: list[Edit] = []
        for name in ("main.cf", "master.cf"):
            source = os.path.join(site.config_directory, name)
            if os.path.exists(source):
                # copy2 keeps the time stamp: postconf waits for a main.cf
                # changed in the last second or so to settle.
                shutil.copy2(source, os.path.join(scratch, name))

    def make(self, *edit: str) -> None:
        postconf(self.site, *edit, config_dir=self.scratch)
        self.edits.append(edit)

    def command(self) -> str:
        return service_command(self.site, config_dir=self.scratch)

    def entry(self) -> tuple[str, ...]:
        return service_entry(self.site, config_dir=self.scratch)


# --- making the change ---------------------------------------------------

def apply(p: Plan) -> tuple[str, ...]:
    """Make the planned change; the entry as it is afterwards.

    The symlink is made before master.cf names it, and master.cf stops
    naming it before it goes, so master(8) never finds a missing command.
    The leftovers are fixed before the stock daemon is named, so that a
    failure leaves this daemon running.
    """
    if os.geteuid() != 0:
        raise InstallError("must be root to change Postfix's configuration in %s and %s: "
                           "run this as root (or with --dry-run to see the change)"
                           % (p.site.config_directory, p.site.daemon_directory))
    if p.action == "install" and p.changes_link and p.new_target:
        make_link(p.site.link, p.new_target)
    for edit in p.edits:
        try:
            postconf(p.site, *edit)
        except InstallError:
            # Installing, -F is what would have named the new link.
            if edit[0] == "-F" and p.action == "install" and p.old_target is None:
                remove_link(p.site.link)
            raise
    if p.fix and p.fixes and leftovers(p.site, main_cf_names(p.site)):
        raise InstallError("postconf -c %s left settings the stock tlsmgr cannot use: "
                           "check main.cf and master.cf by hand" % p.site.config_directory)
    if p.edits and p.columns is not None:
        keep_columns(p.site, p.columns)
    now = service_entry(p.site) if p.edits else p.before
    if now != p.after:
        raise InstallError("postconf -c %s left the %s entry as %r, not %r: check master.cf "
                           "by hand" % (p.site.config_directory, SERVICE,
                                        shown(" ".join(now)), shown(" ".join(p.after))))
    if p.action == "uninstall" and p.changes_link:
        remove_link(p.site.link)
    return now


_FIELD = re.compile(rb"\S+")
# The fields before the command: service, type, private, unpriv, chroot,
# wakeup, maxproc.
COLUMNS = 7


def is_entry_line(line: bytes) -> bool:
    return line[:1] not in (b"#", b" ", b"\t") and line.split()[:2] == SERVICE.encode().split(b"/")


def entry_line(site: Site) -> bytes | None:
    """The first line of the entry in master.cf as it is now."""
    try:
        with open(site.master_cf, "rb") as file:
            return next((line for line in file if is_entry_line(line)), None)
    except OSError as err:
        raise InstallError("cannot read %s: %s" % (site.master_cf, err.strerror)) from None


def with_columns(line: bytes, columns: bytes) -> bytes:
    """*line* with the whitespace between its first fields as in *columns*,
    when their first fields are the same words."""
    old, new = list(_FIELD.finditer(columns)), list(_FIELD.finditer(line))
    if len(old) <= COLUMNS or len(new) <= COLUMNS \
            or [m[0] for m in old[:COLUMNS]] != [m[0] for m in new[:COLUMNS]]:
        return line
    return columns[:old[COLUMNS].start()] + line[new[COLUMNS].start():]


def keep_columns(site: Site, columns: bytes) -> None:
    """Give the entry's first line, as postconf wrote it, the columns of
    *columns*, the line before: master.cf is replaced in one step, with
    its owner and mode."""
    scratch = "%s.tlsmgr-%d" % (site.master_cf, os.getpid())
    try:
        with open(site.master_cf, "rb") as file:
            lines = file.read().splitlines(keepends=True)
        index = next((n for n, line in enumerate(lines) if is_entry_line(line)), None)
        if index is None:
            return
        aligned = with_columns(lines[index], columns)
        if aligned == lines[index]:
            return
        lines[index] = aligned
        status = os.stat(site.master_cf)
        with open(scratch, "wb") as file:
            os.fchown(file.fileno(), status.st_uid, status.st_gid)
            os.fchmod(file.fileno(), status.st_mode & 0o7777)
            file.write(b"".join(lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, site.master_cf)
    except OSError as err:
        if os.path.lexists(scratch):
            os.unlink(scratch)
        raise InstallError("cannot write %s: %s: postconf made the change, in its own "
                           "layout; check master.cf" % (site.master_cf, err.strerror)) from None


def make_link(path: str, target: str) -> None:
    """Point *path* at *target*, replacing an old symlink in one step."""
    scratch = "%s.new-%d" % (path, os.getpid())
    try:
        os.symlink(target, scratch)
        os.replace(scratch, path)
    except OSError as err:
        if os.path.islink(scratch):
            os.unlink(scratch)
        raise InstallError("cannot make the symlink %s: %s: check that directory"
                           % (path, err.strerror)) from None


def remove_link(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise InstallError("cannot remove %s: %s" % (path, err.strerror)) from None


def reload(site: Site) -> None:
    program = find_program("postfix")
    if program is None:
        raise InstallError("postfix not found on PATH or in %s: run \"postfix reload\" "
                           "yourself" % SBIN_PATH)
    try:
        run_tool([program, "-c", site.config_directory, "reload"], RELOAD_TIMEOUT)
    except InstallError as err:
        raise InstallError("%s (the change itself is made: it takes effect when Postfix "
                           "next starts or reloads)" % err) from None


# --- what is printed -----------------------------------------------------

_SETTING = re.compile(r"(-o\s+)([^=\s]+)=(\S*)")


def shown(text: str) -> str:
    """master.cf text with each ``-o name=value`` shown as --show-config
    shows it: a password masked (config.shown_value())."""
    return _SETTING.sub(lambda m: m[1] + m[2] + "=" + config.shown_value(m[2], m[3]), text)


def entry_lines(label: str, entry: tuple[str, ...]) -> list[str]:
    head = "  %-8s" % (label + ":")
    return [shown(head + entry[0]), *(shown(" " * len(head) + line) for line in entry[1:])]


def with_directory(site: Site, command: str) -> str:
    """A Postfix command line, with -c DIR unless DIR is the default."""
    if site.config_directory == config.DEFAULT_CONFIG_DIRECTORY:
        return command
    return "%s -c %s" % (command, shlex.quote(site.config_directory))


def command_lines(site: Site, edits: Iterable[Edit]) -> list[str]:
    """The postconf commands of *edits*, as one types them."""
    return ["  %s %s" % (with_directory(site, "postconf"), shlex.join(edit)) for edit in edits]


def describe(p: Plan, after: tuple[str, ...], dry_run: bool) -> list[str]:
    """The lines saying what changed, or with *dry_run* what would."""
    site = p.site
    lines = []
    if dry_run:
        lines.append("dry run, nothing is changed: %s would do this" % p.action)
    if p.fix and p.fixes:
        lines.append("settings the stock tlsmgr cannot use: %s with"
                     % ("would be changed" if dry_run else "changed"))
        lines += command_lines(site, p.fixes)
    if p.changes_master_cf:
        lines.append("master.cf: %s, service %s" % (site.master_cf, SERVICE))
        lines += entry_lines("before", p.before)
        lines += entry_lines("after", after)
    else:
        lines.append("master.cf: %s, service %s (unchanged)" % (site.master_cf, SERVICE))
        lines += entry_lines("now", p.before)
    would = "would be " if dry_run else ""
    if p.packaged:
        lines.append("daemon: %s (unchanged: the Debian package's)" % site.link)
    elif p.new_target is None:
        state = "%sremoved (was -> %s)" % (would, p.old_target) if p.changes_link \
            else "none (unchanged)"
        lines.append("symlink: %s: %s" % (site.link, state))
    else:
        if not p.changes_link:
            state = "unchanged"
        elif p.old_target is None:
            state = would + "created"
        else:
            state = "%sreplaced (was -> %s)" % (would, p.old_target)
        lines.append("symlink: %s -> %s (%s)" % (site.link, p.new_target, state))
    return lines


def nothing_to_do(p: Plan) -> str:
    if p.action == "install" and p.packaged:
        return ("already installed: %s runs %s, the Debian package's %s; nothing to do"
                % (SERVICE, OUR_COMMAND, p.site.link))
    if p.action == "install":
        return ("already installed: %s runs %s, and %s -> %s; nothing to do"
                % (SERVICE, OUR_COMMAND, p.site.link, p.new_target))
    if p.packaged:
        return ("not installed: %s runs the stock %s (%s stays: the Debian package's); "
                "nothing to do" % (SERVICE, STOCK_COMMAND, p.site.link))
    return ("not installed: %s runs the stock %s, and there is no %s; nothing to do"
            % (SERVICE, STOCK_COMMAND, p.site.link))


def warn_leftovers(p: Plan, out: TextIO) -> None:
    """Without --fix-settings: a warning for each leftover, and the
    commands that would fix them."""
    if p.fix or not p.leftovers:
        return
    for leftover in p.leftovers:
        log.warn("%s", leftover.warning())
    print("to leave the stock tlsmgr settings it can use, give --fix-settings, or run:",
          file=out)
    print("\n".join(command_lines(p.site, p.fixes)), file=out)


def reload_hint(p: Plan) -> str:
    which = "this daemon" if p.action == "install" else "the stock tlsmgr"
    return ('now run "%s" (or give --reload) so that master(8) runs %s'
            % (with_directory(p.site, "postfix") + " reload", which))


# --- the commands --------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument("-c", dest="config_dir", metavar="DIR",
                        help="Postfix's configuration directory (default: $MAIL_CONFIG, "
                             "else /etc/postfix)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the change that would be made, and change nothing")
    parser.add_argument("--reload", action="store_true",
                        help="run \"postfix -c DIR reload\" after the change")
    if action == "uninstall":
        parser.add_argument("--fix-settings", action="store_true",
                            help="also change what the stock tlsmgr cannot use: a memory: "
                                 "or redis: session cache becomes a btree: (or lmdb:) file, "
                                 "and tlsmgr_* parameters are removed (postconf -e, -X, -P, "
                                 "-PX)")
    else:
        parser.set_defaults(fix_settings=False)


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``tlsmgr-ctl install`` or ``uninstall``: 0, or 2 after one error line."""
    out = out or sys.stdout
    try:
        p = plan(args.command, args.config_dir, args.fix_settings)
        if not p.changes:
            print(nothing_to_do(p), file=out)
            warn_leftovers(p, out)
            return 0
        if args.dry_run:
            print("\n".join(describe(p, p.after, dry_run=True)), file=out)
            warn_leftovers(p, out)
            return 0
        after = apply(p)
        print("\n".join(describe(p, after, dry_run=False)), file=out)
        warn_leftovers(p, out)
        if not args.reload:
            print(reload_hint(p), file=out)
            return 0
        out.flush()
        reload(p.site)
        print("postfix reload: done", file=out)
        return 0
    except InstallError as err:
        log.error("%s", err)
        return 2
