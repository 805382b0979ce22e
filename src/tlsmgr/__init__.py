"""tlsmgr - a TLS session cache and PRNG manager for Postfix.

A drop-in replacement for Postfix's tlsmgr(8): it speaks the same attribute
protocol to smtpd(8), smtp(8) and lmtp processes, keeps their TLS session
caches, hands out RFC 5077 ticket keys and maintains the PRNG pool.

Its layers, each a package that imports only those before it
(tests/test_layers.py holds them to it):

util      the mail log, answers that come later, files left behind, secrets
wire      the attribute codec (attr.py) and the table of requests (requests.py)
observe   what the daemon has done: counts, histograms, the stats snapshot
stores    where sessions are kept: memory, LMDB, Redis; the fleet's seal
service   the request handlers, session caches, ticket keys, PRNG; dispatch
runtime   the server: connections, their limits, master(8), metrics
config.py, daemon.py   main.cf read once; the daemon put together and run
admin     tlsmgr-ctl: the client, watch, install and uninstall, --check
"""

__version__ = "0.1.0"
