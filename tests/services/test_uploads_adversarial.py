"""Forged and malformed uploads through the real API process and a real worker: every one is a 4xx
with a message at once or a refused import, never a 5xx; no catalog row of an episode already there
changes; what is accepted carries only what the store vouches for; fsck then finds nothing."""

from __future__ import annotations

import pytest

from data.catalog import Catalog
from data.fsck import fsck
from data.store import EpisodeStore
from tests.services.forged_uploads import CASES, Kit, catalog_rows, post, wait_job
from tests.store.helpers import record


@pytest.mark.slow
def test_forged_uploads_are_refused_and_change_no_catalog_row(stack, tmp_path):
    store = EpisodeStore(stack.settings.store_root)
    victim, _ = record(store, robot="victim", task="guarded", cameras=1)
    stack.start_worker()
    kit = Kit(tmp_path / "forge", victim.episode_id)
    with stack.client("robot") as c:
        assert c.post("/v1/episodes/register", json={"episode_id": victim.episode_id}).status_code == 200
    with stack.client("teleoperator") as c:
        before = catalog_rows(c)
        outcomes = {}
        for name, build in CASES.items():
            up = build(kit)
            r = post(c, up)
            outcomes[name] = r.status_code
            assert r.status_code < 500, (name, r.text)
            assert r.status_code in up.expect, (name, r.status_code, r.text)
            body = r.json()
            text = body.get("detail") if r.status_code != 202 else None
            if r.status_code != 202:
                assert isinstance(text, str) and text, (name, body)
                assert str(tmp_path) not in r.text, (name, text)  # no server path
                continue
            job = wait_job(c, body["status_url"])
            if up.job == "refused":
                assert job["status"] == "refused" and job["error"] and str(tmp_path) not in job["error"], job
                assert job["episode_ids"] == []
            else:  # accepted: the forged labeller, time and counts were replaced by what the store vouches for
                assert job["status"] == "finished", job
                (eid,) = job["episode_ids"]
                ep = c.get(f"/v1/episodes/{eid}").json()
                assert ep["outcome"] == "success" and ep["outcome_labeller"] == "test-teleoperator", ep
                assert ep["num_correction_ticks"] == 4, ep
        after = catalog_rows(c)
        assert {k: after[k] for k in before} == before
        assert c.get(f"/v1/episodes/{victim.episode_id}").json()["robot_id"] == "victim"
    assert len(outcomes) >= 20
    report = fsck(store, repair=True)
    cat = Catalog.for_store(store, stack.settings.catalog_url)
    try:
        assert report.clean, report.to_dict()
        assert cat.reconcile(store).consistent
    finally:
        cat.close()


def test_upload_refusals_are_immediate_without_a_worker(stack, tmp_path):
    """Header-level refusals need no worker; a valid upload is queued (202) with a status URL."""
    kit = Kit(tmp_path / "forge", "20200101T000000-nobody-000000")
    with stack.client("teleoperator") as c:
        for name in ("not_a_tar", "symlink_member", "own_label_history", "zip_bomb_one_member", "not_multipart"):
            up = CASES[name](kit)
            r = post(c, up)
            assert r.status_code in up.expect, (name, r.status_code, r.text)
        from tests.services.forged_uploads import tar_bytes

        r = c.post("/v1/episodes/upload", files={"file": ("ep.tar", tar_bytes(kit.episode()))})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] == "queued" and r.headers["location"] == job["status_url"]
        assert c.get(job["status_url"]).json()["status"] == "queued"
        assert c.get("/v1/episodes/uploads/upload-0000000000000000").status_code == 404
        assert c.get("/v1/episodes/uploads/not-a-job").status_code == 422
    with stack.client("researcher") as c:  # uploading is the teleoperator's (and admin's)
        assert post(c, CASES["not_a_tar"](kit)).status_code == 403


def test_an_episode_put_into_the_shared_store_by_hand_is_not_indexed(stack):
    """Registering (or reading by id) an episode written into the shared store by hand, consistent with
    its manifest but carrying values no writer here makes, is a 404 naming the attribute; no row appears."""
    import shutil

    from data.store import new_episode_id
    from tests.services.forged_uploads import recommit, set_attrs

    store = EpisodeStore(stack.settings.store_root)
    a, _ = record(store, robot="arm-a", cameras=1)
    eid = new_episode_id("arm-a")
    shutil.copytree(a.path, store.episodes_dir / eid)
    set_attrs(store.episodes_dir / eid, episode_id=eid, outcome_labeller="ops\x00", start_time_ns=-1)
    recommit(store.episodes_dir / eid)
    with stack.client("robot") as c:
        r = c.post("/v1/episodes/register", json={"episode_id": eid})
        assert r.status_code == 404 and "attribute" in r.json()["detail"] and "fsck" in r.json()["detail"], r.text
        r = c.get(f"/v1/episodes/{eid}")
        assert r.status_code == 404 and "attribute" in r.json()["detail"], r.text
        assert eid not in {e["episode_id"] for e in c.get("/v1/episodes").json()}
        assert c.post("/v1/episodes/register", json={"episode_id": a.episode_id}).status_code == 200
