"""The independent attack suite (hostile/run.py, written from the man page
and the protocol notes alone) finds the daemon still answering, every
well-behaved request answered, and its memory bounded."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.harness import start_ours

SUITE = Path(__file__).resolve().parent.parent / "hostile" / "run.py"


@pytest.mark.timeout(300)
def test_the_hostile_suite_passes_every_attack(tmp_path):
    daemon = start_ours(tmp_path, data_directory=tmp_path,
                        smtpd_tls_session_cache_database="lmdb:%s/smtpd_scache" % tmp_path,
                        smtp_tls_session_cache_database="memory:")
    try:
        run = subprocess.run([sys.executable, str(SUITE), "--socket", str(daemon.socket_path),
                              "--pid", str(daemon.process.pid), "--quick", "--json"],
                             capture_output=True, text=True, timeout=240)
        report = json.loads(run.stdout)
        failed = {attack["name"]: attack for attack in report["attacks"]
                  if attack["verdict"] != "PASS"}
        assert not failed, json.dumps(failed, indent=1, default=str)
        assert report["overall"]["verdict"] == "PASS", report["overall"]
        assert run.returncode == 0
        assert "Traceback" not in daemon.log
    finally:
        daemon.stop()
