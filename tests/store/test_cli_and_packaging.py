import json
import subprocess
import sys

import pytest

RECAP = [sys.executable, "-m", "data.cli_root"]


def run(*args, check=True):
    p = subprocess.run(RECAP + list(args), capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.mark.parametrize("cmd", [[], ["data"], ["data", "ls"], ["data", "show"], ["data", "label"], ["data", "fsck"],
                                 ["data", "stats"], ["data", "export"], ["data", "import"], ["data", "record-synthetic"]])
def test_help_says_what_each_command_does(cmd):
    out = run(*cmd, "--help").stdout
    assert "Usage:" in out and len(out.splitlines()) > 5


def test_record_list_label_fsck(tmp_path):
    s = str(tmp_path / "store")
    run("data", "record-synthetic", "--store", s, "--episodes", "3", "--ticks", "20", "--size", "32x48", "--fps", "0",
        "--robot", "arm-1")
    rows = [json.loads(line) for line in run("data", "ls", "--store", s, "--json").stdout.splitlines()]
    assert len(rows) == 3 and {r["robot_id"] for r in rows} == {"arm-1"}
    assert len(run("data", "ls", "--store", s, "--json", "--outcome", "failure").stdout.splitlines()) == 1
    eid = rows[0]["id"]
    run("data", "label", eid, "failure", "--by", "alice", "--store", s)
    shown = run("data", "show", eid, "--store", s).stdout
    assert "failure" in shown and "alice" in shown
    assert run("data", "fsck", "--store", s).returncode == 0
    bad = run("data", "ls", "--store", s, "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "ISO date" in bad.stderr + bad.stdout
    missing = run("data", "show", "20990101T000000-x-000000", "--store", s, check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no episode 20990101T000000-x-000000 in {s}"


def test_robot_side_modules_do_not_import_torch():
    code = ("import sys, data.store, data.catalog, data.fsck, data.cli, data.stats, data.windows, data.wire,"
            " data.artifact_manifest;"
            "bad = [m for m in ('torch', 'lerobot', 'fastapi') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
