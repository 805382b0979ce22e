"""Request handlers, session caches, ticket keys, PRNG; imports util, wire, observe, stores."""
