"""The child side of tests/helpers/sanitizers.py: a process started with
the AddressSanitizer and UBSan runtimes preloaded, in which the sanitized
build of _fastpath in DIRECTORY is loaded in place of the installed one
(DIRECTORY goes first in tlsmgr.service.__path__ before tlsmgr.service.fastpath is
imported), and then one task runs through it:

    sanitized.py DIRECTORY pytest ARGS...      pytest.main(ARGS)
    sanitized.py DIRECTORY replay              fuzz/fastpath_mutations.py --replay
    sanitized.py DIRECTORY mutate ARGS...      fuzz/fastpath_mutations.py ARGS
    sanitized.py DIRECTORY canary FUNCTION     a planted bug (tests/test_sanitizers.py)

Exits non-zero when the sanitized build is not the one loaded, when the
task fails, and (by the sanitizers' own doing) at their first report.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# As pytest and the fuzz scripts would have it: tests/ for "helpers" and
# the conftest, fuzz/ for invariants and seeds; not this directory.
sys.path[0:1] = [str(ROOT / "tests"), str(ROOT / "fuzz")]


def fail(why: str) -> None:
    print("sanitized.py: %s" % why, file=sys.stderr)
    sys.exit(3)


def runtimes_loaded() -> list[str]:
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps
                       if "libasan" in line or "libubsan" in line})


def load_sanitized(directory: Path) -> None:
    """tlsmgr.service.fastpath on the sanitized build in directory, checked."""
    if "tlsmgr.service._fastpath" in sys.modules or "tlsmgr.service.fastpath" in sys.modules:
        fail("the compiled path was imported before its sanitized build could take its place")
    import tlsmgr.service

    tlsmgr.service.__path__.insert(0, str(directory))
    import tlsmgr.service._fastpath as extension
    from tlsmgr.service import fastpath

    if not fastpath.COMPILED:
        fail("fastpath.COMPILED is false: the sanitized build did not load")
    loaded = Path(extension.__file__).resolve()
    if loaded.parent != directory.resolve():
        fail("the extension loaded is %s, not the sanitized build in %s" % (loaded, directory))
    print("sanitized.py: %s loaded, with %s" % (loaded, ", ".join(runtimes_loaded())),
          file=sys.stderr)


def main() -> None:
    if len(sys.argv) < 3:
        fail("usage: sanitized.py DIRECTORY pytest|replay|mutate|canary [ARGS...]")
    directory, task, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if not runtimes_loaded():
        fail("no sanitizer runtime in this process: LD_PRELOAD=%r"
             % os.environ.get("LD_PRELOAD"))
    if task == "canary":
        sys.path.insert(0, str(directory))
        import _sanitizer_canary

        getattr(_sanitizer_canary, args[0])()
        return
    load_sanitized(directory)
    if task == "pytest":
        import pytest

        sys.exit(pytest.main(args))
    import fastpath_mutations

    if task == "replay":
        inputs, answered = fastpath_mutations.replay()
        if not answered:
            fail("the compiled path answered nothing of the %d inputs" % inputs)
    elif task == "mutate":
        fastpath_mutations.main(args)
    else:
        fail("no task %r" % task)


if __name__ == "__main__":
    main()
