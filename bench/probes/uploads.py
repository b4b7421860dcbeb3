"""Forged uploads: every case of tests/services/forged_uploads.py (forged ids, label histories,
unlisted files, malformed manifests and attributes, links, odd names, bombs), plain and gzip'd, through
the API with a worker importing; then the states unchecked uploads used to leave are planted in the
store and `recap data fsck --repair` is run twice.

Figures: upload_forgeries_tried, catalog_rows_overwritten (rows of episodes already there whose content
changed), uploads_accepted_forged (a forgery imported as sent), upload_5xx, fsck_converged (the second
repair pass finds nothing), max_decompressed_bytes_written (peak bytes extracted for an upload at once),
upload_refused_at_once (4xx before any import job)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from data.catalog import Catalog
from data.store import EpisodeStore
from tests.services.forged_uploads import CASES, Kit, Upload, catalog_rows, plant_forged_states, post, wait_job
from tests.store.helpers import record


def _extracted_bytes(uploads: Path) -> int:
    total = 0
    for d in uploads.glob("*/extracted"):
        for root, _, files in os.walk(d):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
    return total


def _fsck(stack) -> dict:
    cmd = [sys.executable, "-m", "data.cli_root", "data", "fsck", "--store", str(stack.settings.store_root),
           "--repair", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip().startswith("{") else {"error": out.stderr[-500:]}


def run(stack, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(stack.settings.store_root)
    victims = [record(store, robot=f"victim-{i}", task="guarded", cameras=1)[0] for i in range(2)]
    with stack.client("robot") as c:
        for v in victims:
            c.post("/v1/episodes/register", json={"episode_id": v.episode_id})
    worker = stack.start_worker("worker-uploads")
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _extracted_bytes(Path(stack.settings.uploads_dir)))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    figures = {"upload_forgeries_tried": 0, "uploads_accepted_forged": 0, "upload_5xx": 0, "upload_refused_at_once": 0}
    try:
        kit = Kit(work / "forge", victims[0].episode_id)
        with stack.client("teleoperator") as c:
            before = catalog_rows(c)
            for name, build in CASES.items():
                up = build(kit)
                variants = [up]
                if up.content_type is None and up.body[:2] != b"\x1f\x8b" and name != "not_a_tar":
                    variants.append(Upload(gzip.compress(up.body, 1), up.fields, up.expect, up.job))
                for v in variants:
                    figures["upload_forgeries_tried"] += 1
                    r = post(c, v)
                    if r.status_code >= 500:
                        figures["upload_5xx"] += 1
                        continue
                    if r.status_code != 202:
                        figures["upload_refused_at_once"] += r.status_code in (400, 409, 413, 415, 422)
                        continue
                    job = wait_job(c, r.json()["status_url"])
                    if job["status"] == "failed":
                        figures["upload_5xx"] += 1  # an import that broke instead of refusing
                    elif job["status"] == "finished":
                        if v.job != "neutralised":
                            figures["uploads_accepted_forged"] += 1
                            continue
                        ep = c.get(f"/v1/episodes/{job['episode_ids'][0]}").json()
                        if ep.get("outcome_labeller") != "test-teleoperator" or ep.get("num_correction_ticks") != 4:
                            figures["uploads_accepted_forged"] += 1
            after = catalog_rows(c)
        figures["catalog_rows_overwritten"] = sum(after.get(k) != row for k, row in before.items())
    finally:
        stop.set()
        sampler.join()
        worker.stop()
    figures["max_decompressed_bytes_written"] = peak[0]
    cat = Catalog.for_store(store, stack.settings.catalog_url)
    try:
        plant_forged_states(store, cat)
    finally:
        cat.close()
    first, second = _fsck(stack), _fsck(stack)
    figures["fsck_converged"] = bool(
        "store" in second and second["store"]["clean"] and not second["store"]["actions"]
        and second["catalog"]["consistent"] and "store" in first)
    return figures
