"""Connections, their limits, the server, master(8), metrics; imports every layer below."""
