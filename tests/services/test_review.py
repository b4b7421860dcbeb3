"""The episode review page in headless Chromium against the real API: camera frames load, the
timeline's colours are the episode's action sources tick by tick, the curves are drawn from the
training run's saved labels, and a teleoperator's keyboard labels (outcome; a stretch marked as a
bad correction; the tick of a policy mistake) change the catalog and the audit log; the marked stretch
is left out of training selections with its reason, the rest of the episode stays in."""

from __future__ import annotations

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from data.catalog import Catalog
from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from tests.services.test_dashboard import browser  # noqa: F401  (the fixture)
from tests.store.helpers import PERIOD, T0, SyntheticFrames, small_features

SOURCE_COLOURS = {"policy": "#3b82f6", "correction": "#f59e0b", "demonstration": "#10b981", "hold": "#ef4444"}


def _episode(store: EpisodeStore, sources: list[ActionSource]) -> str:
    feats = small_features(1)
    frames = SyntheticFrames(feats, n_frames=8)
    w = store.new_episode(robot_id="robot-0", task_id="push", features=feats, fps=30, instruction="push it",
                          start_time_ns=T0, fsync=False)
    for t, src in enumerate(sources):
        w.append(frames.tick(t, T0 + t * PERIOD, src, "v1" if src == ActionSource.POLICY else None))
    return w.commit(Outcome.SUCCESS, "station").episode_id


def test_review_page_scrubs_an_episode_shows_the_runs_labels_and_labels_from_the_keyboard(stack, browser, tmp_path):  # noqa: F811
    from training.advantages import AdvantageLabels

    P, C, H = ActionSource.POLICY, ActionSource.CORRECTION, ActionSource.HOLD
    sources = [P] * 10 + [C] * 6 + [P] * 8 + [H] * 3 + [P] * 13
    store = EpisodeStore(stack.settings.store_root)
    eid = _episode(store, sources)
    with stack.client("robot") as c:
        assert c.post("/v1/episodes/register", json={"episode_id": eid}).status_code == 200
    # a training run's labels for this episode (the format training/advantages.py saves), value falling at the mistake
    with stack.client("researcher") as c:
        run = c.post("/v1/runs", json={"method": "recap", "recipe": {"task_max_len": {"push": 40}}}).json()["id"]
    n = len(sources)
    adv = np.linspace(0.2, -0.3, n).astype(np.float32)
    AdvantageLabels([eid, "other-episode"], np.array([n, 5]), np.concatenate([adv, np.zeros(5, np.float32)]),
                    np.concatenate([adv > 0, np.ones(5, bool)]), {"push": 0.0}, 0.4, 10,
                    np.concatenate([np.linspace(-0.2, -0.9, n), np.zeros(5)]).astype(np.float32)).save(
        tmp_path / "labels-tmp")
    run_labels = __import__("pathlib").Path(stack.settings.runs_dir) / run / "labels"
    run_labels.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "labels-tmp").rename(run_labels)

    browser.get(f"{stack.api.url}/review#token={stack.tokens['teleoperator']}&episode={eid}")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == eid)
    assert browser.find_element(By.ID, "error").text == ""
    # the first frame is a real decoded JPEG from the store's frame endpoint
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "frame").get_attribute("data-tick") == "0")
    assert browser.execute_script("const i = document.getElementById('frame'); return [i.naturalWidth, i.naturalHeight];") == [64, 48]
    # the timeline: one rectangle per tick, coloured by who acted
    rects = browser.execute_script(
        "return [...document.querySelectorAll('#timeline rect[data-tick]')].map(r => [r.dataset.source, r.getAttribute('fill')])")
    assert [s for s, _ in rects] == [ActionSource(s).name.lower() for s in sources]
    assert all(fill == SOURCE_COLOURS[s] for s, fill in rects)
    # the run's curve: one point per tick, in the order of its labels; its positive indicators as a band
    plot = browser.find_element(By.CSS_SELECTOR, f"#value-plots svg[data-run='{run}']")
    pts = [tuple(map(float, p.split(","))) for p in plot.find_element(By.CSS_SELECTOR, "polyline.advantage").get_attribute("points").split()]
    assert len(pts) == n and all(b[1] > a[1] for a, b in zip(pts, pts[1:]))  # falling advantage: y grows downwards
    vpts = [tuple(map(float, p.split(","))) for p in plot.find_element(By.CSS_SELECTOR, "polyline.value").get_attribute("points").split()]
    assert len(vpts) == n and all(b[1] > a[1] for a, b in zip(vpts, vpts[1:]))  # V(s_t) falling at the mistake
    assert len(plot.find_elements(By.CSS_SELECTOR, "rect.indicator")) == int((adv > 0).sum())
    # scrub with the keyboard: tick 12 is a correction, the frame follows
    body = browser.find_element(By.TAG_NAME, "body")
    for _ in range(12):
        body.send_keys(Keys.ARROW_RIGHT)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "frame").get_attribute("data-tick") == "12")
    assert "correction" in browser.find_element(By.ID, "tick-info").text
    # label the outcome: f
    body.send_keys("f")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-labelled") == "failure")
    # mark ticks 10..15 as a bad correction, with a reason
    for _ in range(2):
        body.send_keys(Keys.ARROW_LEFT)
    body.send_keys("[")
    for _ in range(5):
        body.send_keys(Keys.ARROW_RIGHT)
    body.send_keys("]")
    browser.find_element(By.ID, "reason").send_keys("pushed the object off the table")
    body.send_keys("b")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-marked") == "1")
    assert browser.find_element(By.ID, "error").text == ""
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bad-stretch")) == 1
    # the policy's mistake at tick 4 (m): timed to the takeover that followed it, at tick 10
    for _ in range(11):
        body.send_keys(Keys.ARROW_LEFT)
    browser.find_element(By.ID, "reason").clear()
    body.send_keys("m")
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-marked") == "2")
    assert browser.find_element(By.ID, "error").text == ""
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.mistake-stretch")) == 1
    assert "takeover at 10 (0.20 s later)" in browser.find_element(By.CSS_SELECTOR, "li[data-kind='mistake']").text
    # the catalog and the audit log
    with stack.client("admin") as c:
        e = c.get(f"/v1/episodes/{eid}").json()
        assert (e["outcome"], e["outcome_labeller"], e["num_takeovers"], e["num_hold_ticks"]) == (
            "failure", "test-teleoperator", 1, 3)
        a, m = c.get(f"/v1/episodes/{eid}/annotations").json()
        assert (a["kind"], a["start_tick"], a["end_tick"], a["author"], a["reason"]) == (
            "bad_correction", 10, 15, "test-teleoperator", "pushed the object off the table")
        assert (m["kind"], m["start_tick"], m["end_tick"], m["author"]) == ("mistake", 4, 10, "test-teleoperator")
        assert e["mistake_to_takeover_s"] == [pytest.approx(6 / 30)]
        effort = c.get("/v1/stats/effort").json()["by_robot"]["robot-0"]
        assert (effort["takeovers"], effort["takeovers_mistake_known"]) == (1, 1)
        assert effort["mistake_to_takeover_s_mean"] == pytest.approx(0.2) == effort["mistake_to_takeover_s_median"]
        # a mistake needs a takeover after it
        r = c.post(f"/v1/episodes/{eid}/annotations", json={"kind": "mistake", "start_tick": 20, "reason": "x"})
        assert r.status_code == 422 and "no takeover follows tick 20" in r.json()["detail"]
        assert c.post(f"/v1/episodes/{eid}/annotations", json={"kind": "mistake", "start_tick": 4000,
                                                               "reason": "x"}).status_code == 422
        assert c.post(f"/v1/episodes/{eid}/annotations", json={"kind": "bad_correction", "start_tick": 4,
                                                               "reason": "x"}).status_code == 422
        audit = {(x["actor"], x["action"], x["status"]) for x in c.get("/v1/audit").json()}
        assert ("test-teleoperator", "POST /v1/episodes/{episode_id}/label", 200) in audit
        assert ("test-teleoperator", "POST /v1/episodes/{episode_id}/annotations", 201) in audit
        marks = [x for x in c.get("/v1/audit").json() if x["action"] == "POST /v1/episodes/{episode_id}/annotations"
                 and x["actor"] == "test-teleoperator"]
        assert len(marks) == 2  # the bad correction and the mistake, each audited
        # a robot may not label
        assert c.post(f"/v1/episodes/{eid}/annotations", headers={"Authorization": f"Bearer {stack.tokens['robot']}"},
                      json={"start_tick": 1, "end_tick": 2, "reason": "x"}).status_code == 403
        assert c.post(f"/v1/episodes/{eid}/annotations", json={"start_tick": 5, "end_tick": 400,
                                                               "reason": "x"}).status_code == 422
    catalog = Catalog.for_store(store, stack.settings.catalog_url)
    try:
        sel = catalog.select_for_training(store)
    finally:
        catalog.close()
    # the marked stretch only is left out (training/runs.py masks its ticks), with who marked it and why
    assert eid in {r.id for r in sel.records} and eid not in sel.excluded
    assert sel.masked[eid] == [{"start_tick": 10, "end_tick": 15, "why": "bad correction at ticks 10-15 marked by "
                                "test-teleoperator: pushed the object off the table"}]
