"""The independent attack suite (hostile/, run as `python -m hostile`, written
from the man page and the protocol notes alone) finds the daemon still
answering, every well-behaved request answered, and its memory bounded."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.harness import start_ours

ROOT = Path(__file__).resolve().parent.parent      # python -m hostile runs from here


@pytest.mark.timeout(300)
def test_the_hostile_suite_passes_every_attack(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path,
                        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % tmp_path,
                        smtp_tls_session_cache_database="memory:")
    try:
        run = subprocess.run([sys.executable, "-m", "hostile",
                              "--socket", str(daemon.socket_path),
                              "--pid", str(daemon.process.pid), "--quick", "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=240)
        report = json.loads(run.stdout)
        failed = {attack["name"]: attack for attack in report["attacks"]
                  if attack["verdict"] != "PASS"}
        assert not failed, json.dumps(failed, indent=1, default=str)
        assert report["overall"]["verdict"] == "PASS", report["overall"]
        assert run.returncode == 0
        assert "Traceback" not in daemon.log
    finally:
        daemon.stop()


def test_the_readme_lists_the_attacks_the_suite_runs():
    """hostile/README.md's list is the one the suite prints (--markdown)."""
    made = subprocess.run([sys.executable, "-m", "hostile", "--markdown"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    readme = (ROOT / "hostile" / "README.md").read_text()
    start = readme.index("<!-- made by: python3 -m hostile --markdown -->\n")
    end = readme.index("<!-- end of the table made by python3 -m hostile --markdown -->")
    listed = readme[readme.index("\n", start) + 1:end]
    assert listed == made, "run: python3 -m hostile --markdown, into hostile/README.md"


def test_the_suite_imports_the_standard_library_alone():
    """An outsider's suite: nothing of tlsmgr, nothing but the standard library."""
    for source in sorted((ROOT / "hostile").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                tops = [(node.module or "").split(".")[0]] if not node.level else ["hostile"]
            else:
                continue
            for top in tops:
                assert top == "hostile" or top in sys.stdlib_module_names, (source.name, top)
