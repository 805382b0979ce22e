"""The compiled path (src/tlsmgr/service/_fastpath.c) under AddressSanitizer and UBSan.

It is built with gcc -fsanitize=address,undefined into a temporary
directory and loaded, in a child process with the sanitizers' runtimes
preloaded, in place of the installed build (tests/helpers/sanitizers.py
builds and starts it, tests/helpers/sanitized.py is the child).  Through
it run tests/test_fastpath.py, the fuzz corpus replayed through the
compiled path, and a bounded, seeded run of mutations of the corpus
(fuzz/fastpath_mutations.py, which checks what invariants.py checks).
Anything a sanitizer reports fails the test, and is shown.

fuzz/README.md says how to run it longer.  To see a bug caught, point
TLSMGR_SANITIZE_SOURCE at a copy of _fastpath.c with one planted: the
tests here then build that copy instead.
"""

import tempfile
from pathlib import Path

import pytest
from conftest import require
from helpers import sanitizers
from helpers.request_strategies import FUZZ_DIR  # noqa: F401  (puts fuzz/ on sys.path)

from tlsmgr.service import fastpath

# The mutation run: a fixed seed and count, so that every run checks the
# same inputs; the time bound is only for a machine much slower than the
# one this was measured on (about 37 s for these, on two busy cores).
MUTATION_SEED = 31
MUTATION_COUNT = 15_000
MUTATION_SECONDS = 60


@pytest.fixture(scope="module")
def sanitized():
    """The directory holding the sanitized build, removed after."""
    lack = sanitizers.missing()
    require(lack is None, lack or "")
    with tempfile.TemporaryDirectory(prefix="tlsmgr-sanitized-") as directory:
        sanitizers.build(Path(directory))
        yield Path(directory)


def assert_clean(child: sanitizers.Run) -> None:
    report = child.report
    assert report is None, report


@pytest.mark.timeout(240)
def test_the_fastpath_tests_pass_on_the_sanitized_build(sanitized):
    child = sanitizers.run(sanitized, "pytest", *sanitizers.pytest_args(0), timeout=200)
    assert_clean(child)
    summary = child.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, child.stdout[-3000:]


@pytest.mark.timeout(120)
def test_the_fuzz_corpus_replays_clean_on_the_sanitized_build(sanitized):
    child = sanitizers.run(sanitized, "replay", timeout=100)
    assert_clean(child)
    assert "the compiled path answered" in child.stderr


@pytest.mark.timeout(MUTATION_SECONDS + 120)
def test_seeded_mutations_run_clean_on_the_sanitized_build(sanitized):
    progress = sanitized / "progress"
    child = sanitizers.run(
        sanitized, "mutate", "--seed", str(MUTATION_SEED), "--count", str(MUTATION_COUNT),
        "--seconds", str(MUTATION_SECONDS), "--progress", str(progress),
        timeout=MUTATION_SECONDS + 90)
    report = child.report
    assert report is None, report + sanitizers.progress_note(progress, MUTATION_SEED)
    counts = sanitizers.mutation_counts(child.stderr)
    assert counts is not None, child.stderr[-3000:]
    inputs, answered = counts
    print("%d inputs in %.1f s, %d requests answered by the compiled path"
          % (inputs, child.seconds, answered))
    assert inputs > 0 and answered > 0


# The sanitizers catch what they are there for: a bug planted in a module
# of its own, built and run as the compiled path is.

CANARY = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>

/* The byte after a bytes object's closing NUL: past its allocation, which
 * only PYTHONMALLOC=malloc gives red zones of its own. */
static PyObject *
read_past_a_bytes_object(PyObject *module, PyObject *unused)
{
    PyObject *data = PyBytes_FromStringAndSize("planted", 7);
    if (data == NULL)
        return NULL;
    const volatile char *text = PyBytes_AS_STRING(data);
    char past = text[PyBytes_GET_SIZE(data) + 1];
    Py_DECREF(data);
    return PyLong_FromLong(past);
}

/* Signed overflow: defined under Python's own -fwrapv, so caught only
 * where the build leaves that out. */
static PyObject *
overflow_an_int(PyObject *module, PyObject *unused)
{
    volatile int big = INT_MAX;
    return PyLong_FromLong(big + 1);
}

static PyMethodDef functions[] = {
    {"read_past_a_bytes_object", read_past_a_bytes_object, METH_NOARGS, NULL},
    {"overflow_an_int", overflow_an_int, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_sanitizer_canary", .m_size = -1,
    .m_methods = functions,
};

PyMODINIT_FUNC
PyInit__sanitizer_canary(void)
{
    return PyModule_Create(&module);
}
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("function,reported", [
    ("read_past_a_bytes_object", "ERROR: AddressSanitizer: heap-buffer-overflow"),
    ("overflow_an_int", "runtime error: signed integer overflow"),
])
def test_a_planted_bug_is_reported(function, reported):
    lack = sanitizers.missing()
    require(lack is None, lack or "")
    with tempfile.TemporaryDirectory(prefix="tlsmgr-sanitized-") as name:
        directory = Path(name)
        source = directory / "canary.c"
        source.write_text(CANARY)
        sanitizers.build(directory, source, module="_sanitizer_canary")
        child = sanitizers.run(directory, "canary", function, timeout=60)
    assert child.report is not None and child.returncode != 0
    assert reported in child.report, child.report


# The mutation run's checks themselves, on the installed build: briefly,
# and where gcc's sanitizers are not at hand too.

@pytest.mark.timeout(60)
def test_the_mutation_checks_pass_on_the_installed_build():
    require(fastpath.COMPILED, "the compiled path (pip install . with gcc and Python's "
            "headers: apt-get install gcc python3-dev)")
    import fastpath_mutations

    inputs, answered = fastpath_mutations.replay()
    assert answered > 0
    inputs, answered = fastpath_mutations.mutate(MUTATION_SEED, 500, 30)
    assert inputs == 500 and answered > 0
