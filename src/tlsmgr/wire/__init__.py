"""The attribute codec and the table of requests; imports no other layer."""
