"""The `recap` command as users meet it: every bad invocation of every group ends with one error
line and status 2 (tests/cli_corpus.py); `recap --help` is fast because groups load lazily; help
shows bracketed text; `--version`; no request log lines; `--verbose` shows the traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_corpus import CORPUS, GROUPS, MISSING_EPISODE, cli_env, help_seconds, recap, run_corpus
from tests.services.conftest import running_stack


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


def test_corpus_covers_every_group():
    assert len(CORPUS) >= 30
    assert {*GROUPS, "root"} == {inv.group for inv in CORPUS}


@pytest.mark.slow
def test_every_bad_invocation_is_one_line_and_status_2(api, tmp_path):
    results = run_corpus(tmp_path / "corpus", api.api.url, api.tokens, shared_start=True)
    failed = [r.describe() for r in results if not r.ok]
    assert not failed, f"{len(failed)} of {len(results)}:\n\n" + "\n\n".join(failed)
    # the API's own answers come through as its message, not as a generic failure
    by_why = {r.invocation.why: r.error_lines[0] for r in results}
    assert "404" in by_why["unknown run"] and "403" in by_why["role that may not deploy"]
    assert "no episode matches the selection" in by_why["selection matching nothing"]


def test_help_is_fast_and_imports_no_group(tmp_path):
    """The root reads the groups' help from their source; importing them costs seconds (torch, ROS)."""
    seconds = help_seconds(tmp_path)
    print(f"recap --help: {seconds:.2f} s")
    assert seconds < 1.5
    code = ("import sys\nfrom data.cli_root import main\nsys.argv = ['recap', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('torch', 'zarr', 'sqlalchemy', 'httpx', 'rclpy', 'fastapi')\n"
            "print(sorted(m for m in sys.modules if m.endswith('.cli') or m.split('.')[0] in heavy))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=cli_env(tmp_path))
    assert p.stdout.strip().endswith("[]"), p.stdout + p.stderr
    for group in GROUPS:
        assert f"\n  {group} " in p.stdout, f"{group} missing from recap --help"


def test_help_shows_bracketed_defaults_and_version(tmp_path):
    def words(*args):  # help wraps lines at the terminal's width
        return " ".join(recap(list(args), tmp_path).stdout.split())

    assert "[default: $RECAP_HOME/store; RECAP_HOME defaults to ./recap_home]" in words("data", "ls", "--help")
    assert "[default: 480x640]" in words("data", "record-synthetic", "--help")
    assert "[default: $RECAP_HOME/runs]" in words("train", "policy", "--help")
    version = recap(["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("recap ") and version.stdout.split()[1][0].isdigit()


def test_store_defaults_to_recap_home(tmp_path):
    made = recap(["data", "record-synthetic", "--episodes", "1", "--ticks", "3", "--size", "8x8", "--cameras", "0",
                  "--fps", "0"], tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "home" / "store" / "store.json").is_file()
    listed = recap(["data", "ls", "--json"], tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1


def test_api_calls_log_no_request_lines_and_verbose_shows_tracebacks(api, tmp_path):
    ok = recap(["runs", "ls", "--api", api.api.url, "--token", api.tokens["researcher"]], tmp_path)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    loud = recap(["--verbose", "data", "show", MISSING_EPISODE, "--store", str(tmp_path / "nothing")], tmp_path)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("error: ")
