"""python -m hostile --socket PATH --pid PID [--quick] [--json] [--only A,B]

Exit status: 0 every attack passed, 1 at least one failed (or interrupted),
2 usage error.  See hostile/README.md.
"""

import argparse
import os
import sys

from hostile.attacks import NAMES, list_text, markdown
from hostile.runner import run


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m hostile",
        description="Hostile clients for a tlsmgr(8)-protocol daemon "
                    "(black-box robustness check).")
    ap.add_argument("--socket", required=True, help="the daemon's UNIX-domain socket")
    ap.add_argument("--pid", required=True, type=int, help="the daemon's process id")
    ap.add_argument("--quick", action="store_true", help="short run (about a minute)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object instead of a table")
    ap.add_argument("--only", default="", help="comma-separated attack names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the attacks and exit")
    ap.add_argument("--markdown", action="store_true",
                    help="print hostile/README.md's table of the attacks and exit")
    ap.add_argument("--max-rss-growth-mb", type=float, default=50.0,
                    help="allowed RSS growth after an attack and settle (default 50)")
    ap.add_argument("--max-peak-growth-mb", type=float, default=200.0,
                    help="allowed RSS growth at the peak during an attack (default 200)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    for flag, text in (("--list", list_text), ("--markdown", markdown)):
        if flag in argv:
            print(text())
            sys.exit(0)
    args = ap.parse_args(argv)
    names = NAMES
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in want if x not in names]
        if unknown or not want:
            ap.error("unknown attack(s): %s (known: %s)" % (", ".join(unknown) or "none given",
                                                            ", ".join(names)))
        args.only = want
    else:
        args.only = names
    if args.pid <= 0:
        ap.error("--pid must be a positive process id")
    if not os.path.exists("/proc/%d" % args.pid):
        ap.error("no process with pid %d" % args.pid)
    if args.max_rss_growth_mb < 0 or args.max_peak_growth_mb < 0:
        ap.error("growth bounds must not be negative")
    return args


def main(argv):
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(1)
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        sys.exit(1)
    except Exception as exc:    # a bug in the suite: report it, no traceback
        print("python -m hostile: internal error: %s: %s" % (type(exc).__name__, exc),
              file=sys.stderr)
        sys.exit(1)
