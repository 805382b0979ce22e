"""The compiled fast path (src/tlsmgr/service/fastpath.py): built where a C
compiler and Python's headers are at hand, and left out, with a warning,
where they are not; the package works the same without it."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tlsmgr.service._fastpath", ["src/tlsmgr/service/_fastpath.c"],
                             optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
