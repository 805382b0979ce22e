"""What the tests share: starting daemons, Postfix instances, fleets and
Redis topologies, real TLS clients, the Debian roots, hypothesis
strategies.  The benchmarks use them too (benchmarks/*.py put tests/ on
the path)."""
