"""Property-based fuzzing of the control-plane API from its own OpenAPI document (schemathesis,
against the real uvicorn process): no request, however malformed, gets a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.store import EpisodeStore
from tests.store.helpers import record


def run_schemathesis(url: str, token: str, report: Path, max_examples: int = 25) -> subprocess.CompletedProcess:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    cmd = [exe, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "-H", f"Authorization: Bearer {token}",
           "--max-examples", str(max_examples), "--seed", "1", "--report", "junit", "--report-junit-path", str(report),
           "--request-timeout", "30", "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=report.parent)  # its cache dir


@pytest.mark.slow
def test_fuzzing_the_openapi_document_finds_no_5xx(stack, tmp_path):
    ep, _ = record(EpisodeStore(stack.settings.store_root), robot="robot-0", cameras=1)
    with stack.client("admin") as c:
        c.post("/v1/episodes/register", json={"episode_id": ep.episode_id})
        token = c.post("/v1/tokens", json={"name": "fuzz-admin-0001", "role": "admin"}).json()["token"]
    res = run_schemathesis(stack.api.url, token, tmp_path / "junit.xml")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) > 300 and m.group(1) == m.group(2), out[-3000:]
    assert "<failure" not in (tmp_path / "junit.xml").read_text()
    # the fuzzing reached the handlers, not just the auth check (read from the database: the fuzzer
    # may well have revoked its own token through DELETE /v1/tokens/{name})
    from sqlalchemy import select

    from services.control import ControlDB
    from services.control.models import AuditEntry

    db = ControlDB(stack.settings.control_db_url)
    with db.session() as s:
        statuses = set(s.scalars(select(AuditEntry.status).where(AuditEntry.actor == "fuzz-admin-0001")).all())
    db.close()
    assert {201, 422} <= statuses and not any(s >= 500 for s in statuses)
