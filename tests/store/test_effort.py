"""Human-effort arithmetic on constructed episodes."""

import json

import numpy as np
import pytest

from data.effort import EpisodeEffort, count_takeovers, effort_figures, successes_gained_per_human_minute, takeover_after
from data.schema import ActionSource

P, C, H = int(ActionSource.POLICY), int(ActionSource.CORRECTION), int(ActionSource.HOLD)


@pytest.mark.parametrize("sources, n", [([], 0), ([P, P], 0), ([C, C, P], 1), ([P, C, C, P, C], 2),
                                        ([C, H, C], 2), ([P, C, C, C], 1)])
def test_takeovers_are_contiguous_correction_stretches(sources, n):
    assert count_takeovers(np.array(sources, np.uint8)) == n


def test_figures_per_robot_hour_and_return_on_human_effort():
    # two 1-hour episodes at 10 Hz: 6 takeovers, 1 minute of correction in all, one success
    eps = [EpisodeEffort(ticks=36000, correction_ticks=300, takeovers=4, fps=10.0, success=True),
           EpisodeEffort(ticks=36000, correction_ticks=300, takeovers=2, fps=10.0, success=False)]
    f = effort_figures(eps)
    assert f.robot_hours == pytest.approx(2.0) and f.human_minutes == pytest.approx(1.0)
    assert f.takeovers_per_robot_hour == pytest.approx(3.0)
    assert f.correction_tick_share == pytest.approx(600 / 72000)
    assert f.return_on_human_effort == pytest.approx(1 / 2.0)
    assert successes_gained_per_human_minute(f, baseline_success_rate=0.25) == pytest.approx(0.5)
    none = effort_figures([EpisodeEffort(100, 0, 0, 10.0, True)])
    assert none.return_on_human_effort == 1.0 and successes_gained_per_human_minute(none, 0.0) is None
    empty = effort_figures([])
    assert empty.takeovers_per_robot_hour == 0.0 and empty.correction_tick_share == 0.0


def test_takeover_after_finds_the_next_takeover_start():
    src = np.array([P, P, C, C, P, P, P, C, P], np.uint8)
    assert [takeover_after(src, t) for t in (0, 2, 3, 5, 7, 8)] == [2, 2, 7, 7, 7, None]


def test_mistake_to_takeover_where_known():
    # 10 Hz: delays of 0.5 s and 1.5 s known, a third takeover's mistake unknown; an episode with none known
    eps = [EpisodeEffort(600, 60, 3, 10.0, True, (0.5, 1.5)), EpisodeEffort(600, 20, 1, 10.0, False)]
    f = effort_figures(eps)
    assert (f.takeovers, f.takeovers_mistake_known) == (4, 2)
    assert f.mistake_to_takeover_s_mean == pytest.approx(1.0) and f.mistake_to_takeover_s_median == pytest.approx(1.0)
    unknown = effort_figures(eps[1:])
    assert unknown.takeovers_mistake_known == 0 and unknown.mistake_to_takeover_s_mean is None
    assert unknown.as_dict()["mistake_to_takeover_s_median"] is None


def test_a_mistake_noted_while_recording_is_timed_to_its_takeover_in_the_catalog(tmp_path):
    """EpisodeWriter.note_event -> the episode's attributes -> the catalog's `mistake` stretch -> the figures;
    a fsck and a LeRobot export keep working on such an episode."""
    from data.catalog import Catalog
    from data.fsck import fsck
    from data.lerobot_io import export_lerobot
    from data.schema import Outcome
    from data.store import EpisodeStore
    from data.synthetic import SyntheticFrames
    from tests.store.helpers import PERIOD, T0, small_features

    store = EpisodeStore(tmp_path / "store")
    feats = small_features(0)
    frames = SyntheticFrames(feats, n_frames=4)
    w = store.new_episode(robot_id="r1", task_id="push", features=feats, fps=30, fsync=False, start_time_ns=T0)
    # the policy drives; the station's rule sees it go wrong at tick 5 and takes over at tick 12 (until 19),
    # a second mistake at 25 with its takeover at 27; a note from before the episode is dropped
    sources = [ActionSource.CORRECTION if 12 <= t < 20 or 27 <= t < 30 else ActionSource.POLICY for t in range(40)]
    for t, src in enumerate(sources):
        w.append(frames.tick(t, T0 + t * PERIOD, src, None if src == ActionSource.CORRECTION else "v1"))
        if t == 12:
            w.note_event("mistake", T0 + 5 * PERIOD, why="deviation")
            w.note_event("mistake", T0 + 2 * PERIOD, why="stall")  # an earlier one whose takeover never came: not counted
        if t == 27:
            w.note_event("mistake", T0 + 25 * PERIOD - 1000, why="stall")  # between ticks: the next tick
    w.note_event("mistake", T0 - PERIOD, why="deviation")
    w.note_event("other-kind", T0 + 3 * PERIOD)
    with pytest.raises(ValueError):
        w.note_event("mistake", -1)
    info = w.commit(Outcome.SUCCESS, "tester")
    assert [(e["kind"], e["tick"], e.get("why")) for e in info.extra["events"]] == [
        ("mistake", 2, "stall"), ("other-kind", 3, None), ("mistake", 5, "deviation"), ("mistake", 25, "stall")]
    catalog = Catalog.for_store(store)
    try:
        catalog.register(store.open(info.episode_id))
        catalog.register(store.open(info.episode_id))  # again (a relabel): recorded once
        rec = catalog.get(info.episode_id)
        assert rec.mistake_to_takeover_s == pytest.approx([7 / 30, 2 / 30])
        marks = catalog.annotations([info.episode_id])[info.episode_id]
        assert [(a["kind"], a["start_tick"], a["end_tick"], a["author"]) for a in marks] == [
            ("mistake", 5, 12, "station:r1"), ("mistake", 25, 27, "station:r1")]
        f = effort_figures([rec.effort()])
        assert f.takeovers == 2 and f.takeovers_mistake_known == 2
        assert f.mistake_to_takeover_s_mean == pytest.approx(4.5 / 30)
        # a mistake never excludes anything from training
        assert [r.id for r in catalog.select_for_training(store).records] == [info.episode_id]
    finally:
        catalog.close()
    report = fsck(store)
    assert report.clean and report.ok == [info.episode_id]
    root = export_lerobot(store, [info.episode_id], tmp_path / "export", use_videos=False)
    side = json.loads((root / "meta" / "recap_episodes.json").read_text())
    assert "mistake" in json.dumps(side)


def test_an_episode_recovered_after_a_crash_keeps_the_mistakes_on_its_kept_ticks(tmp_path):
    """The journal of each flush carries the events noted so far: fsck's recovery places them on the
    ticks it keeps (an event after the last kept tick is dropped), so a crashed episode's mistakes still
    reach the catalog's effort figures."""
    import time

    from data.fsck import recover_episode
    from data.schema import EpisodeStatus
    from data.store import EpisodeStore
    from data.synthetic import SyntheticFrames
    from tests.store.helpers import PERIOD, T0, small_features

    store = EpisodeStore(tmp_path / "store")
    feats = small_features(0)
    frames = SyntheticFrames(feats, n_frames=4)
    w = store.new_episode(robot_id="r1", task_id="push", features=feats, fps=30, flush_ticks=4, fsync=False,
                          start_time_ns=T0)
    for t in range(10):
        w.append(frames.tick(t, T0 + t * PERIOD, ActionSource.CORRECTION if t >= 6 else ActionSource.POLICY, "v1"))
        if t == 6:
            w.note_event("mistake", T0 + 3 * PERIOD, why="deviation")
            w.note_event("mistake", T0 + 9 * PERIOD, why="stall")  # on a tick the crash loses
    while w.num_flushed < 8:
        time.sleep(0.01)
    w.abandon()  # the process dies: no commit
    assert recover_episode(w.path) == 8
    ep = store.open(w.episode_id)
    assert ep.info.status == EpisodeStatus.INCOMPLETE
    assert [(e["kind"], e["tick"], e["why"]) for e in ep.info.extra["events"]] == [("mistake", 3, "deviation")]
