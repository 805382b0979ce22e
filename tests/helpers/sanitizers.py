"""The compiled path under AddressSanitizer and UBSan: built with gcc's
sanitizers into a directory of its own, and run in a child process that
has their runtimes preloaded and loads that build in place of the
installed one (tests/helpers/sanitized.py).  Used by
tests/test_sanitizers.py; run as a script, it runs the same for longer
(fuzz/README.md):

    .venv/bin/python tests/helpers/sanitizers.py --seconds 600 --seed 7

The source built is src/tlsmgr/service/_fastpath.c, or the file that
TLSMGR_SANITIZE_SOURCE names (to check that a bug planted in a scratch
copy is caught).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "tlsmgr" / "service" / "_fastpath.c"
SOURCE_VARIABLE = "TLSMGR_SANITIZE_SOURCE"
CHILD = Path(__file__).resolve().with_name("sanitized.py")

CC = "gcc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g", "-O1"]
# Python's include directories, and what setup.py adds, as a setuptools
# build would; but not Python's own CFLAGS, whose -fwrapv defines signed
# overflow and so turns UBSan's check for it off.
BUILD = ["-Wall", "-Wextra", "-fPIC", "-shared"]
# The runtimes, in this order: ASan must come first in the process.
RUNTIMES = ("libasan.so", "libubsan.so")

# The child's environment, beside LD_PRELOAD.  CPython keeps memory by
# design (no leak checks); PYTHONMALLOC=malloc gives each object its own
# allocation, and so its own red zones, where pymalloc's pools would hide
# a read past a small bytes object; a huge allocation fails as malloc's
# does (Python raises MemoryError) rather than being reported.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1"
                    ":print_summary=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:print_summary=1",
    "PYTHONMALLOC": "malloc",
    "PYTHONFAULTHANDLER": "1",
}
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:")


def missing() -> str | None:
    """What this machine lacks to build and run the sanitized path, said
    as how to get it; None when nothing is missing."""
    if shutil.which(CC) is None:
        return "gcc, with its sanitizer runtimes (apt-get install gcc)"
    if runtime_paths() is None:
        return "gcc's sanitizer runtimes, %s (apt-get install libasan8 libubsan1)" % (
            " and ".join(RUNTIMES))
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "Python's headers (apt-get install python3-dev)"
    return None


def runtime_paths() -> list[str] | None:
    paths = []
    for name in RUNTIMES:
        found = subprocess.run([CC, "-print-file-name=" + name], capture_output=True,
                               text=True, timeout=30).stdout.strip()
        # gcc prints the bare name back when it has no such file.
        if not os.path.isabs(found) or not os.path.exists(found):
            return None
        paths.append(found)
    return paths


def source() -> Path:
    return Path(os.environ.get(SOURCE_VARIABLE) or SOURCE)


class BuildError(Exception):
    pass


def build(directory: Path, source_file: Path | None = None,
          module: str = "_fastpath") -> Path:
    """The sanitized extension module, built from source_file (by default
    source()) into directory; its path."""
    source_file = source() if source_file is None else source_file
    target = directory / (module + sysconfig.get_config_var("EXT_SUFFIX"))
    includes = sorted({sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]})
    command = [CC, *SANITIZE, *BUILD, *("-I" + include for include in includes),
               str(source_file), "-o", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise BuildError("%s\nfailed (%d):\n%s" % (" ".join(command), result.returncode,
                                                   result.stderr[-8000:]))
    return target


def environment() -> dict[str, str]:
    runtimes = runtime_paths()
    if runtimes is None:
        raise RuntimeError("no sanitizer runtimes: %s" % missing())
    preload = [*runtimes, *filter(None, os.environ.get("LD_PRELOAD", "").split(":"))]
    return dict(os.environ, LD_PRELOAD=":".join(preload), **SANITIZER_ENV)


class Run:
    """A finished child: its command, exit status, output and time."""

    def __init__(self, command: list[str], result: subprocess.CompletedProcess[str],
                 seconds: float):
        self.command = command
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.seconds = seconds

    @property
    def report(self) -> str | None:
        """Why this run failed, with what the sanitizers said, or None."""
        markers = [marker for marker in REPORT_MARKERS if marker in self.stderr]
        if self.returncode == 0 and not markers:
            return None
        lines = ["%s exited %d after %.1f s%s" % (
            " ".join(self.command[1:]), self.returncode, self.seconds,
            ", the sanitizers reporting" if markers else "")]
        if markers:
            start = min(self.stderr.index(marker) for marker in markers)
            # From the line the report begins on.
            start = self.stderr.rfind("\n", 0, start) + 1
            lines += ["", self.stderr[start:start + 12000]]
        else:
            lines += ["", "stderr (end):", self.stderr[-6000:]]
        if self.stdout.strip():
            lines += ["", "stdout (end):", self.stdout[-6000:]]
        return "\n".join(lines)


def run(directory: Path, task: str, *args: str, timeout: float) -> Run:
    """One task of sanitized.py, in a child process, through the
    sanitized build in directory."""
    command = [sys.executable, str(CHILD), str(directory), task, *args]
    started = time.monotonic()
    result = subprocess.run(command, env=environment(), cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    return Run(command, result, time.monotonic() - started)


_MUTATION_SUMMARY = re.compile(r"seed (-?\d+): (\d+) inputs; the compiled path answered (\d+)")


def mutation_counts(stderr: str) -> tuple[int, int] | None:
    """(inputs, requests answered) of a mutation run, from what it said."""
    found = _MUTATION_SUMMARY.search(stderr)
    return None if found is None else (int(found.group(2)), int(found.group(3)))


def progress_note(progress: Path, seed: int) -> str:
    """Which input a mutation run was checking when it ended."""
    try:
        index = int(progress.read_text().strip())
    except (OSError, ValueError):
        return "\nIt ended before it checked any input."
    return ("\nThe input being checked: number %d of seed %d.  To check it alone, under the"
            " sanitizers:\n    .venv/bin/python tests/helpers/sanitizers.py --only mutate"
            " --seed %d --index %d\nand to write it to a file:\n"
            "    .venv/bin/python fuzz/fastpath_mutations.py --seed %d --index %d --write FILE"
            % (index, seed, seed, index, seed, index))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the compiled path under AddressSanitizer and UBSan: "
                    "tests/test_fastpath.py, the corpus replay, and seeded mutations.")
    parser.add_argument("--seconds", type=float, default=600,
                        help="of mutations (default 600)")
    parser.add_argument("--count", type=int, help="stop the mutations after this many inputs")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--index", type=int, help="check only this input of the seed's run")
    parser.add_argument("--only", choices=("fastpath", "replay", "mutate"), action="append",
                        help="run only this part (may be given again)")
    args = parser.parse_args()
    if (lack := missing()) is not None:
        sys.exit("needs %s" % lack)
    parts = args.only or ["fastpath", "replay", "mutate"]
    with tempfile.TemporaryDirectory(prefix="tlsmgr-sanitized-") as temporary:
        directory = Path(temporary)
        print("building %s" % build(directory), file=sys.stderr)
        failed = False
        for part in parts:
            progress = directory / "progress"
            if part == "fastpath":
                child = run(directory, "pytest", *pytest_args(args.seed), timeout=3600)
            elif part == "replay":
                child = run(directory, "replay", timeout=3600)
            elif args.index is not None:
                child = run(directory, "mutate", "--seed", str(args.seed),
                            "--index", str(args.index), timeout=3600)
            else:
                bounds = ["--seconds", str(args.seconds)]
                if args.count is not None:
                    bounds += ["--count", str(args.count)]
                child = run(directory, "mutate", "--seed", str(args.seed), *bounds,
                            "--progress", str(progress), timeout=args.seconds + 600)
            report = child.report
            if report is None:
                said = (child.stdout.strip() or child.stderr.strip()).splitlines()
                print("%s: clean, %.1f s. %s" % (part, child.seconds, said[-1]),
                      file=sys.stderr)
            else:
                failed = True
                if part == "mutate" and args.index is None:
                    report += progress_note(progress, args.seed)
                print("%s: FAILED\n%s" % (part, report), file=sys.stderr)
    sys.exit(1 if failed else 0)


def pytest_args(seed: int) -> list[str]:
    """tests/test_fastpath.py, with hypothesis seeded; but the test that
    builds a wheel without a compiler: it runs pip and a build, which the
    preloaded runtimes would slow, and never loads the compiled path.
    Verbose, so that the test a report ends is the last one named.  pytest
    captures sys.stdout and sys.stderr only: were it to capture file
    descriptor 2, as it does by default, a sanitizer's report, written
    there just before the process ends, would be lost with its capture."""
    return ["-v", "-p", "no:cacheprovider", "--capture=sys", "--hypothesis-seed=%d" % seed,
            "tests/test_fastpath.py", "-k", "not without_a_compiler"]


if __name__ == "__main__":
    main()
