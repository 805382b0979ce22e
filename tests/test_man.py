"""The manual pages: man/tlsmgr.8 and man/tlsmgr-ctl.1.

They must keep up with the code (every parameter with its default, every
tlsmgr-ctl command and option), render without warnings, and be where
man(1) finds them after ``pip install``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, require_command

from tlsmgr import config, daemon
from tlsmgr.admin import ctl

ROOT = Path(__file__).resolve().parent.parent
TLSMGR_8 = ROOT / "man" / "tlsmgr.8"
TLSMGR_CTL_1 = ROOT / "man" / "tlsmgr-ctl.1"
PAGES = (TLSMGR_8, TLSMGR_CTL_1)

# Control commands, documented before (or while) ctl.py gains them.
CONTROL_COMMANDS = {"stats", "flush", "rotate-keys", "list"}

# The fonts and characters these pages use, as plain text.
_ESCAPES = ((r"\-", "-"), (r"\(dq", '"'), (r"\(aq", "'"), (r"\&", ""), (r"\e", "\\"))
_FONT = re.compile(r"\\f[BIRP]")
# A macro argument: a quoted string or a word.
_ARGUMENT = re.compile(r'"([^"]*)"|(\S+)')
_ALTERNATING = {".BI", ".BR", ".IB", ".IR", ".RB", ".RI"}
# A line of argparse's help that starts with options: its part before the
# description.
_HELP_OPTION = re.compile(r"^ {1,4}(-.*?)(?: {2,}|$)")


def plain(text: str) -> str:
    """roff text without font changes and with its escapes resolved."""
    text = _FONT.sub("", text)
    for escape, char in _ESCAPES:
        text = text.replace(escape, char)
    return text


def line_text(line: str) -> str:
    """What a source line prints: a font macro's arguments, or the text."""
    if not line.startswith("."):
        return plain(line)
    macro, _, rest = line.partition(" ")
    words = [word or quoted for quoted, word in _ARGUMENT.findall(rest)]
    return plain(("" if macro in _ALTERNATING else " ").join(words))


def tags(page: Path, section: str) -> list[tuple[str, str]]:
    """(tag, label) of each .TP entry under the .SH section, in order; label
    is the last paragraph before it that says whose parameters follow
    ("Extensions of this implementation...", "Available in Postfix...")."""
    lines = page.read_text().splitlines()
    found = []
    current = None
    label = ""
    for number, line in enumerate(lines):
        if line.startswith(".SH"):
            current = line_text(line).strip()
            label = ""
        elif line.startswith(".SS"):
            label = ""
        elif current == section and line.startswith(".TP"):
            found.append((line_text(lines[number + 1]).strip(), label))
        elif current == section and re.match(r"(Extensions of|Available in)", line):
            label = line
    return found


def man_environment(**changes: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("MANPATH", "MANOPT", "MANSECT", "MAN_KEEP_FORMATTING")}
    env.update(LC_ALL="C.UTF-8", MANWIDTH="80", MANPAGER="cat", PAGER="cat")
    env.update(changes)
    return env


def all_parameters() -> list[config.Parameter]:
    params = {p.name: p for p in config.PARAMETERS}
    for label in config.CACHE_LABELS:
        params.update((p.name, p) for p in config._cache_parameters(label))
    return list(params.values())


# --- tlsmgr(8) -------------------------------------------------------------

def documented_parameters() -> dict[str, tuple[str, str]]:
    """name -> (the default the page gives, whose parameter it says it is)."""
    documented = {}
    for tag, label in tags(TLSMGR_8, "CONFIGURATION PARAMETERS"):
        match = re.fullmatch(r"(\w+) \((.*)\)", tag)
        assert match, "parameter entry not of the form 'name (default)': %r" % tag
        assert match[1] not in documented, "%s is documented twice" % match[1]
        documented[match[1]] = (match[2], label)
    return documented


# Defaults that depend on the machine: the page says how they are made.
MACHINE_DEFAULTS = {"myhostname": "the host name, with .localdomain when it has no dot"}


def test_every_parameter_is_documented_with_its_default():
    documented = documented_parameters()
    missing = [p.name for p in all_parameters() if p.name not in documented]
    assert not missing, "not in man/tlsmgr.8: %s" % ", ".join(missing)
    expected = {p.name: MACHINE_DEFAULTS.get(p.name, p.default or "empty")
                for p in all_parameters()}
    wrong = ["%s: page says (%s), config.py says (%s)" % (name, documented[name][0], default)
             for name, default in expected.items() if documented[name][0] != default]
    assert not wrong, "wrong defaults in man/tlsmgr.8:\n" + "\n".join(wrong)


def test_our_parameters_are_marked_as_extensions():
    for name, (_default, label) in documented_parameters().items():
        is_extension = label.startswith("Extensions of this implementation")
        assert is_extension == name.startswith("tlsmgr_"), (
            "%s: %s" % (name, "listed among Postfix's own parameters" if not is_extension
                        else "listed as an extension of this implementation"))


def test_the_stock_parameters_are_there_too():
    # The stock page's read-only parameters, which config.py does not list.
    documented = documented_parameters()
    for name in ("process_id", "process_name", "service_name"):
        assert documented[name][0] == "read-only"


def test_every_daemon_option_is_documented():
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        daemon.parse_args(["--help"])
    options = {option for line in help_text.getvalue().splitlines()
               if (match := _HELP_OPTION.match(line))
               for option in re.findall(r"(?<![\w-])-{1,2}[A-Za-z][\w-]*", match[1])}
    assert {"--listen", "-o", "-c", "-u"} <= options     # the help was read
    text = plain(TLSMGR_8.read_text())
    missing = sorted(option for option in options
                     if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), text))
    assert not missing, "options of tlsmgr not in man/tlsmgr.8: %s" % ", ".join(missing)


# --- tlsmgr-ctl(1) ---------------------------------------------------------

def ctl_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = ctl.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return parser, dict(action.choices)
    raise AssertionError("tlsmgr-ctl has no subcommands")


def test_every_ctl_command_is_documented():
    _parser, commands = ctl_parsers()
    assert {"seed", "lookup", "install"} <= set(commands)     # the parser was read
    documented = {tag.split()[0] for tag, _label in tags(TLSMGR_CTL_1, "COMMANDS")}
    missing = sorted((set(commands) | CONTROL_COMMANDS) - documented)
    assert not missing, "tlsmgr-ctl commands not in man/tlsmgr-ctl.1: %s" % ", ".join(missing)


def test_every_ctl_option_is_documented():
    parser, commands = ctl_parsers()
    text = plain(TLSMGR_CTL_1.read_text())
    missing = set()
    for name, command in (("", parser), *commands.items()):
        for action in command._actions:
            for option in action.option_strings:
                if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), text):
                    missing.add(("%s %s" % (name, option)).strip())
    assert not missing, "options not in man/tlsmgr-ctl.1: %s" % ", ".join(sorted(missing))


def test_ctl_exit_status_is_documented():
    text = " ".join(plain(TLSMGR_CTL_1.read_text()).split())
    assert '.SH "EXIT STATUS"' in text
    for status in ("status 0", "status -1", "status -2"):
        assert status in text


# --- both ------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_page_renders_without_warnings(page):
    require_command("man", "man-db")
    result = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                            text=True, env=man_environment(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "warnings from man --warnings -l %s:\n%s" % (page, result.stderr)
    name = page.name.rpartition(".")[0].upper()
    assert result.stdout.startswith(name + "(")
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert "\n%s\n" % heading in result.stdout


def copy_source(destination: Path) -> Path:
    """The source tree without what is built or installed from it, so that
    building it here leaves the working tree alone."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".ruff_cache"))
    return destination


@pytest.mark.timeout(300)
def test_pip_install_puts_the_pages_where_man_finds_them(tmp_path):
    require_command("man", "man-db")
    source = copy_source(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   capture_output=True)
    # Build isolation fetches setuptools and wheel from the indexes pip is
    # configured with.  No retries: when the network is down, the local
    # index (if any) answers at once instead of after a minute of retrying.
    env = dict(os.environ, PIP_RETRIES="0", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install",
                             "--no-deps", str(source)],
                            capture_output=True, text=True, env=env, timeout=240)
    require(result.returncode == 0 or not re.search(
        r"(No matching distribution found|Could not find a version) .*(setuptools|wheel)",
        result.stdout + result.stderr),
        "the network or a local package index, for pip to get setuptools and wheel")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for page, section in ((TLSMGR_8, "man8"), (TLSMGR_CTL_1, "man1")):
        installed = venv / "share" / "man" / section / page.name
        assert installed.read_bytes() == page.read_bytes()

    # As a user of the virtualenv has it: its bin first on PATH, no MANPATH;
    # man-db then looks in ../share/man of each PATH directory.
    env = man_environment(PATH="%s%s%s" % (venv / "bin", os.pathsep, os.environ["PATH"]))
    for page, section in ((TLSMGR_8, "man8"), (TLSMGR_CTL_1, "man1")):
        name = page.name.rpartition(".")[0]
        result = subprocess.run(["man", "-w", name], capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        installed = venv / "share" / "man" / section / page.name
        assert Path(result.stdout.strip()).resolve() == installed.resolve()
    result = subprocess.run(["man", "tlsmgr-ctl"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "send requests to a running tlsmgr" in result.stdout
    result = subprocess.run(["man", "8", "tlsmgr"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "tlsmgr_request_size_limit (65536)" in result.stdout
