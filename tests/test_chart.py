"""benchmarks/chart.py: the SVG it draws from compare.py's JSON."""

import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"

spec = importlib.util.spec_from_file_location("chart", ROOT / "benchmarks" / "chart.py")
chart = importlib.util.module_from_spec(spec)
sys.modules["chart"] = chart           # for its dataclasses
spec.loader.exec_module(chart)


def measurement(throughput, other=0.0):
    return {"throughput": throughput, "other_cpu_share": other}


def run(date="2026-12-02T14:35:12+00:00"):
    """A compare.py --json file in little: two cells, one of each kind of panel."""
    return {
        "machine": {"date": date, "git_head": "abc1234", "nproc": 2, "cpu": "AMD EPYC",
                    "kernel": "6.18"},
        "settings": {"ours_table": "lmdb:${data_directory}/smtpd_scache"},
        "stock_table": "btree:${data_directory}/smtpd_scache",
        "results": [
            {"workload": "update", "conns": 8, "size": 300, "attempts": 1,
             "stock": measurement(2000), "ours": measurement(20000),
             "limit": measurement(200000), "wlimit": measurement(60000)},
            {"workload": "seed", "conns": 1, "size": 300, "attempts": 3,
             "stock": measurement(12000, other=0.16), "ours": measurement(10000),
             "limit": {"failed": "the limit tlsmgr exited"}},
        ],
    }


def texts(root):
    return ["".join(node.itertext()) for node in root.iter(SVG + "text")]


def test_one_bar_a_measurement_and_ours_over_stock_under_each_group():
    root = ET.fromstring(chart.render(run(), "results/x.json"))
    bars = [rect.find(SVG + "title").text for rect in root.iter(SVG + "rect")
            if rect.find(SVG + "title") is not None]
    assert bars == ["update, 300 B, 8 connections, stock: 2000 req/s",
                    "update, 300 B, 8 connections, ours: 20000 req/s",
                    "update, 300 B, 8 connections, limit: 200000 req/s",
                    "update, 300 B, 8 connections, wlimit: 60000 req/s",
                    # A failed measurement has no bar; seed's size is not a session's.
                    "seed, 1 connections, stock: 12000 req/s",
                    "seed, 1 connections, ours: 10000 req/s"]
    words = texts(root)
    assert "\u00d710.00" in words            # 20000 / 2000
    assert "\u00d70.83*" in words            # disturbed: stock's other CPU 0.16
    assert "update, 300 B" in words and "seed" in words
    assert "stock tlsmgr (btree:)" in words and "ours (lmdb:)" in words
    assert any("results/x.json: run of 2026-12-02T14:35:12+00:00, git abc1234" in text
               for text in words)


def test_the_same_json_draws_the_same_svg(tmp_path):
    source = tmp_path / "full-a.json"
    source.write_text(json.dumps(run()))
    first, second = tmp_path / "1.svg", tmp_path / "2.svg"
    assert chart.main([str(source), "-o", str(first)]) == 0
    assert chart.main([str(source), "-o", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()


def test_newest_is_by_the_recorded_date_not_the_name(tmp_path):
    (tmp_path / "full-2026-12-02.json").write_text(json.dumps(run("2026-12-02T03:29:38+00:00")))
    (tmp_path / "full-2026-12-02-d.json").write_text(json.dumps(run("2026-12-02T14:35:12+00:00")))
    (tmp_path / "wlimit-2026-12-03.json").write_text(json.dumps(run("2026-12-03T00:00:00+00:00")))
    assert chart.newest(tmp_path).name == "full-2026-12-02-d.json"


def test_the_committed_chart_is_drawn_from_the_run_it_names():
    committed = (ROOT / "benchmarks" / "results" / "chart.svg").read_text()
    source = re.search(r"(benchmarks/results/[\w.-]+\.json): run of", committed).group(1)
    assert chart.render(chart.load(ROOT / source), source) == committed
