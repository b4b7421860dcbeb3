"""The dashboard page in headless Chromium (Selenium, Debian's chromium + chromium-driver) against the
real API: fleet, training runs, per-version plots, episodes with camera playback; markup put into
every user-controlled field through the API is shown as text and creates no element."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

from data.store import EpisodeStore
from tests.services.conftest import policy_artifact
from tests.services.hostile_api import dashboard_verdict, headless_chromium, inject_dashboard_fields
from tests.store.helpers import T0, record


@pytest.fixture
def browser():
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_shows_fleet_versions_runs_and_plays_back_an_episode(stack, browser, tmp_path):
    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "a", 1))}).json()["id"]
        v2 = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "b", 2))}).json()["id"]
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v})
        c.post("/v1/robots", json={"id": "robot-1"})
        assert c.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "robot-1",
                                               "stage": "canary", "gate": {"min_episodes": 5}}).status_code == 201
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("robot") as c:
        c.post("/v1/robots/robot-0/heartbeat", json={"version": v})
        for i in range(4):
            ep, _ = record(store, robot="robot-0", cameras=1, version=v, corrections=range(3, 6), start=T0 + i * 3600 * 10**9)
            c.post("/v1/episodes/register", json={"episode_id": ep.episode_id})
            if i == 0:
                first = ep.episode_id
    with stack.client("teleoperator") as c:  # the first episode's mistake at tick 0, 3 ticks before its takeover
        assert c.post(f"/v1/episodes/{first}/annotations",
                      json={"kind": "mistake", "start_tick": 0, "reason": "drifted left"}).status_code == 201
    # two training runs with TensorBoard event files (written by the run's own hook, training/tracking.py)
    from pathlib import Path

    from training.tracking import write_run_events

    with stack.client("researcher") as c:
        run_ids = [c.post("/v1/runs", json={"method": "bc"}).json()["id"] for _ in range(2)]
    for k, run_id in enumerate(run_ids):
        write_run_events(Path(stack.settings.runs_dir) / run_id, {"value": [1.0 / (1 + i + k) for i in range(50)],
                                                                  "policy": [2.0 / (1 + i) for i in range(30)]}, {})
    # the first run's value function was weak: its held-out calibration and the guard-rail's fallback show
    from data.artifact_manifest import finite_json
    from services.control import ControlDB
    from services.control.models import TrainingRun

    db = ControlDB(stack.settings.control_db_url)
    with db.session() as s:
        s.get(TrainingRun, run_ids[0]).metrics = finite_json({
            "value_calibration": {"held_out": True, "spearman": 0.123, "pearson": float("nan"), "ticks": 400},
            "fallback": {"fallback": "filtered_bc", "reason": "held-out Spearman 0.123 below 0.2"}})
        # the second run labelled its data: most of its positives were the policy's ticks in failed episodes
        s.get(TrainingRun, run_ids[1]).metrics = finite_json({"positives_by_source": {
            "policy_failure": {"ticks": 900, "positive_rate": 0.39, "share_of_positives": 0.62},
            "correction": {"ticks": 100, "positive_rate": 1.0, "share_of_positives": 0.2}}})
    db.close()
    browser.get(f"{stack.api.url}/#token={stack.tokens['operator']}")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
    assert browser.find_element(By.ID, "error").text == ""
    weak = browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-run='{run_ids[0]}']").text
    assert "0.12 / –" in weak and "weak V: trained as filtered_bc" in weak
    labelled = browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-run='{run_ids[1]}']").text
    assert "weak V" not in labelled and "62%" in labelled and "62%" not in weak
    # every run's curves, every version's lineage
    for run_id in run_ids:
        lines = browser.find_elements(By.CSS_SELECTOR, f"#curves svg[data-run='{run_id}'] polyline")
        assert sorted(len(p.get_attribute("points").split()) for p in lines) == [30, 50]
    assert [r.get_attribute("data-version") for r in browser.find_elements(By.CSS_SELECTOR, "#version-lineage tbody tr")] == [v2, v]
    fleet = browser.find_element(By.CSS_SELECTOR, "#fleet tbody tr[data-robot='robot-0']").text
    assert v in fleet and "s ago" in fleet
    versions = browser.find_element(By.CSS_SELECTOR, f"#versions tbody tr[data-version='{v}']").text
    assert "100%" in versions  # all four episodes succeeded
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot-success circle")) == 4  # one point per hour bucket
    gate = browser.find_element(By.CSS_SELECTOR, "#gates tbody tr[data-gate='1']").text
    assert v2 in gate and "robot-1" in gate and "open" in gate and "cannot decide yet: the canary has 0 of 5" in gate
    # human effort: one takeover (3 correction ticks) in each 25-tick episode at 30 fps; one mistake known, 0.1 s
    effort = browser.find_element(By.CSS_SELECTOR, "#effort-robots tbody tr[data-key='robot-0']").text
    assert effort.split() == ["robot-0", "4", f"{4 / (4 * 25 / 30 / 3600):.1f}", "12%", f"{4 * 3 / 30 / 60:.1f}",
                              f"{4 / (1 + 4 * 3 / 30 / 60):.2f}", "0.10", "/", "0.10", "(1", "of", "4)"]
    assert browser.find_element(By.CSS_SELECTOR, f"#effort-versions tbody tr[data-key='{v}']").text.split()[1] == "4"
    rows = browser.find_elements(By.CSS_SELECTOR, "#episodes tbody tr")
    assert len(rows) == 4 and "12%" in rows[0].text  # 3 correction ticks of 25
    rows[0].click()
    WebDriverWait(browser, 30).until(
        lambda d: int(d.find_element(By.ID, "playback").get_attribute("data-tick") or -1) >= 10)
    size = browser.execute_script("const i = document.getElementById('playback'); return [i.naturalWidth, i.naturalHeight];")
    assert size == [64, 48]  # a real decoded camera frame


def test_markup_in_every_user_controlled_field_is_shown_as_text(stack, browser, tmp_path):
    inj = inject_dashboard_fields(stack, str(policy_artifact(tmp_path / "a", 1)))
    assert len(inj.tried) >= 20 and len({f for f, _ in inj.tried}) == 4
    verdict = dashboard_verdict(browser, stack.api.url, stack.tokens["operator"], inj)
    assert verdict == {"elements": 0, "scripts_ran": 0, "not_shown_literally": [], "error": ""}, verdict
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#fleet tbody td")]
    assert '<b id=pwn0b>bold</b>' in cells
    notes = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#deployments tbody td:last-child")]
    assert '"><svg id=pwn0c onload="window.__pwned=(window.__pwned||0)+1">' in notes


def test_live_view_follows_the_fleet_without_a_reload(stack, browser, tmp_path):
    """Server-sent events: what a robot reports it runs, the episode it is recording, the training run
    in progress, all on the page without a reload."""
    from data.schema import ActionSource
    from data.synthetic import SyntheticFrames
    from tests.store.helpers import PERIOD, small_features

    with stack.client("researcher") as c:
        v = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "a", 1))}).json()["id"]
    browser.get(f"{stack.api.url}/#token={stack.tokens['operator']}")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live-events"))
    row = lambda d: d.find_element(By.CSS_SELECTOR, "#live tbody tr[data-robot='robot-0']").text  # noqa: E731
    assert row(browser).split()[:3] == ["robot-0", "–", "–"]
    browser.execute_script("window.__sameDocument = true")  # a reload would lose it
    with stack.client("operator") as c:
        c.post("/v1/deployments", json={"version": v})
    with stack.client("robot") as c:
        c.post("/v1/robots/robot-0/heartbeat", json={"version": v})
    # the live table is re-rendered at each event: a row found just before one is gone when read
    live = WebDriverWait(browser, 15, ignored_exceptions=(StaleElementReferenceException,))
    live.until(lambda d: row(d).split()[:3] == ["robot-0", v, v])
    # an episode being recorded now
    store = EpisodeStore(stack.settings.store_root)
    feats = small_features(0)
    frames = SyntheticFrames(feats, n_frames=2)
    w = store.new_episode(robot_id="robot-0", task_id="push", features=feats, fps=30, flush_ticks=5, fsync=False)
    try:
        for t in range(12):
            w.append(frames.tick(t, T0 + t * PERIOD, ActionSource.POLICY, v))
        live.until(lambda d: "(10 ticks)" in row(d))
        # a training run queued meanwhile
        with stack.client("robot") as c:
            c.post("/v1/episodes/register", json={"episode_id": record(store, robot="robot-0", cameras=0)[0].episode_id})
        with stack.client("researcher") as c:
            run = c.post("/v1/runs", json={"method": "bc"}).json()["id"]
        WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#live-runs tbody tr[data-run='{run}']"))
        assert "queued" in browser.find_element(By.CSS_SELECTOR, f"#live-runs tbody tr[data-run='{run}']").text
    finally:
        w.abandon()
    assert browser.execute_script("return window.__sameDocument") is True  # the same page, no reload
