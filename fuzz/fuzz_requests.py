"""atheris harness for the request handlers (tlsmgr.service.protocol.Dispatch).

Each input is what a client sends: it is decoded, and every message is
answered by an in-process Dispatch (memory caches for smtpd and smtp, lmtp
disabled); invariants.check_request_stream checks that nothing raises and
that every reply is one well-formed message of the request's layout, of a
size bounded by the requests, and true to what the caches hold.

    .venv/bin/python fuzz/fuzz_requests.py NEW_DIR fuzz/corpus/requests -max_total_time=300
    .venv/bin/python fuzz/fuzz_requests.py CRASH_FILE      # replay one input
"""

import sys

import atheris

with atheris.instrument_imports(include=["tlsmgr", "invariants"]):
    import invariants


def fuzz_one_input(data: bytes) -> None:
    invariants.check_request_stream(data)


def main() -> None:
    atheris.Setup(invariants.fuzzer_argv(sys.argv), fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
