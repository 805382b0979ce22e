"""Hostile clients ("attack suite") for a daemon speaking Postfix's tlsmgr(8)
attribute protocol (attr0) over a UNIX-domain stream socket.

Written from the tlsmgr(8) manual page and the protocol notes only; the
daemon under test is a black box, reached through its socket and /proc.
Standard library only; nothing here imports the daemon's package.

    python -m hostile --socket PATH --pid PID [--quick] [--json] [--only A,B]

The modules: attr0 (the wire format), net (socket I/O with deadlines),
proc (/proc), probe (the well-behaved client), clients (the attacker's
sockets), the attacks by kind (slow, oversized, floods, protocol), attacks
(the table of them all), runner (verdicts and the report), __main__ (the
command line).  See hostile/README.md.
"""
