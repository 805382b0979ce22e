"""atheris harness for the attr0 decoder (tlsmgr.wire.attr).

Each input picks a size limit and a way to cut a byte stream into pieces
(see invariants.split_attr_input); the checks are invariants.check_decoder_input:
only AttrError is raised, the decoder is idle after one, and the messages
decoded piece by piece are those decoded from the whole stream.

    .venv/bin/python fuzz/fuzz_attr.py NEW_DIR fuzz/corpus/attr -max_total_time=300
    .venv/bin/python fuzz/fuzz_attr.py CRASH_FILE          # replay one input
"""

import sys

import atheris

with atheris.instrument_imports(include=["tlsmgr", "invariants"]):
    import invariants


def fuzz_one_input(data: bytes) -> None:
    invariants.check_decoder_input(data)


def main() -> None:
    atheris.Setup(invariants.fuzzer_argv(sys.argv), fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
