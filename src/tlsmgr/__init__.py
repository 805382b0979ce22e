"""tlsmgr - a TLS session cache and PRNG manager for Postfix.

A drop-in replacement for Postfix's tlsmgr(8): it speaks the same attribute
protocol to smtpd(8), smtp(8) and lmtp processes, keeps their TLS session
caches, hands out RFC 5077 ticket keys and maintains the PRNG pool.
"""

__version__ = "0.1.0"
