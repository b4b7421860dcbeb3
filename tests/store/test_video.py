"""The video tier: every reader reads a transcoded episode like its JPEG original, the retention
policy, fsck's view of every intermediate state, and SIGKILL in the middle of transcoding."""

import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data.fsck import fsck, verify_episode
from data.store import EpisodeStore
from data.video import (
    PINS,
    RetentionPolicy,
    TranscodeError,
    VideoFrames,
    VideoSettings,
    pin,
    transcode_episode,
    transcode_pass,
    verify_video,
    video_key,
)
from tests.store.helpers import T0, record

RECAP = [sys.executable, "-m", "data.cli_root"]
# Mean absolute difference (grey levels) between a video-tier frame and the JPEG frame it replaced,
# at the tests' 96x128 frames (480x640 frames measure ~1.5, see bench/results/store.md).
TOL = 6.0
SIZE = (96, 128)


def _record(store, **kw):
    from data.synthetic import SyntheticFrames, features
    from data.schema import ActionSource

    feats = features(2, *SIZE, state_dim=4, action_dim=3)
    frames = SyntheticFrames(feats, n_frames=8)
    w = store.new_episode(robot_id="r1", task_id="push", features=feats, fps=30, flush_ticks=10, fsync=False,
                          start_time_ns=kw.get("start", T0))
    for t in range(kw.get("ticks", 23)):
        w.append(frames.tick(t, kw.get("start", T0) + t * 33_333_333, ActionSource.POLICY, "v1"))
    return store.open(w.commit("success", "tester").episode_id)


def _err(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _frames(ep):
    return {c: ep.images(c) for c in ep.cameras}


def test_every_reader_reads_the_video_tier_like_the_jpeg_tier(store_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from data.lerobot_io import export_lerobot
    from data.torch_dataset import EpisodeDataset
    from training.steps import load_steps

    store = EpisodeStore(store_root)
    ep = _record(store)
    ref = _frames(ep)
    jpeg_ds = EpisodeDataset(store, [ep.episode_id], horizon=4)
    jpeg_items = [jpeg_ds[t] for t in (0, 11, 22)]
    r = transcode_episode(store, ep.episode_id)
    assert r.transcoded == ["left_wrist", "top"] and r.jpeg_dropped and not r.skipped
    assert not (ep.path / "images" / "top").exists() and (ep.path / video_key("top")).is_file()
    vid = store.open(ep.episode_id)
    assert {vid.tier(c) for c in vid.cameras} == {"video"} and vid.defect() is None
    assert verify_episode(vid.path) is None
    # the store's own reader: single frames in any order, and ranges
    for cam in vid.cameras:
        whole = vid.images(cam)
        assert whole.shape == ref[cam].shape and whole.dtype == np.uint8
        assert _err(whole, ref[cam]) < TOL
        for t in (22, 0, 5, 6, 7, 3):
            assert _err(vid.image(cam, t), ref[cam][t]) < TOL
        assert vid.images(cam, 4, 9).shape == (5, *SIZE, 3)
    # the training dataset (same keys, shapes and dtypes; pixels within TOL) and the step table
    vid_ds = EpisodeDataset(store, [ep.episode_id], horizon=4)
    for a, t in zip(jpeg_items, (0, 11, 22)):
        b = vid_ds[t]
        assert set(a) == set(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
        for cam in vid.cameras:
            assert _err(a[f"observation.images.{cam}"].numpy() * 255, b[f"observation.images.{cam}"].numpy() * 255) < TOL
        np.testing.assert_array_equal(a["action"].numpy(), b["action"].numpy())
    steps = load_steps(store, [ep.episode_id], cameras=["top"])
    got = steps.frames(np.array([3, 17]))["top"]
    assert got.shape == (2, *SIZE, 3) and _err(got, ref["top"][[3, 17]]) < TOL
    # the LeRobot export (PNG frames, lossless: exactly the video tier's pixels)
    export_lerobot(store, [ep.episode_id], tmp_path / "lr", use_videos=False)
    ds = LeRobotDataset("local/test", root=tmp_path / "lr")
    assert len(ds) == len(ep)
    for t in (0, 9, 22):
        img = (ds[t]["observation.images.top"].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0)
        np.testing.assert_array_equal(img, vid.image("top", t))


def test_all_intra_video_reads_by_packet_like_seeking_and_longer_gops_seek(store_root):
    store = EpisodeStore(store_root)
    ep = _record(store)
    ref = _frames(ep)
    transcode_episode(store, ep.episode_id)
    vid = store.open(ep.episode_id)
    meta = vid.manifest["video"]["top"]
    assert meta["gop"] == 1 and meta["deblock"] is False
    path = vid.path / video_key("top")
    assert b"deblock=0:" in path.read_bytes()  # the encoder's own record of its settings (x264's SEI)
    by_packet, by_seek = VideoFrames(path, meta, 3), VideoFrames(path, meta, 3, by_packet=False)
    for i, t in enumerate((22, 0, 5, 6, 7, 3, 22, 21)):
        a = by_packet.frame(t)
        np.testing.assert_array_equal(a, by_seek.frame(t))  # the same picture, bit for bit
        assert _err(a, ref["top"][t]) < TOL
        # the table is built at the second read (a reader opened for one frame never pays for it)
        assert (by_packet._offsets is not None) == (i >= 1)
    assert len(by_packet._offsets) == len(ep) and by_seek._offsets is None
    assert by_packet._container is None  # the table and a decoder: no container, no descriptor
    for t in (len(ep), -1):
        with pytest.raises(OSError):
            by_packet.frame(t)
    # a table that disagrees with the manifest's frame count is not trusted: the reader seeks
    for frames in (len(ep) + 1, len(ep) - 1):
        v = VideoFrames(path, {**meta, "frames": frames}, 3)
        assert [_err(v.frame(t), ref["top"][t]) < TOL for t in (4, 9, 2)] == [True] * 3 and v._offsets is None
    # readers dropped without close() (the API opens an episode per frame request) leave no descriptor open
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for t in range(40):
        v = VideoFrames(path, meta, 3)
        v.frame(t % len(ep)), v.frame(0)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds
    # readers kept (a training set's every episode and camera) hold no descriptor between reads: after
    # one read (the container closed) and after the table's pass, whatever their number
    kept = [VideoFrames(path, meta, 3) for _ in range(60)]
    for i, v in enumerate(kept):
        v.frame(i % len(ep))
    assert len(os.listdir("/proc/self/fd")) <= fds
    for i, v in enumerate(kept):
        np.testing.assert_array_equal(v.frame((i + 3) % len(ep)), by_seek.frame((i + 3) % len(ep)))
        assert v._offsets is not None
    assert len(os.listdir("/proc/self/fd")) <= fds
    by_packet.close(), by_seek.close()
    with pytest.raises(ValueError, match="after close"):
        by_packet.frame(0)
    # a file replaced under a reader (another inode, here with the same bytes) is never read through the
    # old table: the reader says so; a new reader reads it
    v = VideoFrames(path, meta, 3)
    v.frame(1), v.frame(2)
    shutil.copyfile(path, path.with_name("copy.tmp"))
    os.replace(path.with_name("copy.tmp"), path)
    with pytest.raises(OSError, match="changed since its packet table"):
        v.frame(3)
    np.testing.assert_array_equal(VideoFrames(path, meta, 3).frame(3), VideoFrames(path, meta, 3, by_packet=False).frame(3))

    # GOP 5: the filter stays on (later frames are predicted from filtered ones) and reads seek
    ep5 = _record(store, start=T0 + 10**10)
    ref5 = _frames(ep5)["top"]
    transcode_episode(store, ep5.episode_id, settings=VideoSettings(gop=5))
    vid5 = store.open(ep5.episode_id)
    meta5 = vid5.manifest["video"]["top"]
    assert meta5["gop"] == 5 and meta5["deblock"] is True
    v5 = VideoFrames(vid5.path / video_key("top"), meta5, 3)
    for t in (17, 2, 3, 11):
        assert _err(v5.frame(t), ref5[t]) < TOL
    assert v5._offsets is None
    v5.close()


def test_a_reader_open_across_the_jpeg_drop_switches_to_the_video(store_root):
    store = EpisodeStore(store_root)
    ep = _record(store)
    ref = _frames(ep)
    assert ep.tier("top") == "jpeg"
    assert _err(ep.image("top", 2), ref["top"][2]) == 0
    transcode_episode(store, ep.episode_id)  # drops the JPEG tier under the open reader
    assert _err(ep.image("top", 15), ref["top"][15]) < TOL  # not zarr's zeros for a missing shard
    assert ep.tier("top") == "video"
    assert _err(ep.images("left_wrist", 0, 23), ref["left_wrist"]) < TOL


def test_retention_keeps_recent_and_pinned_jpeg_tiers(store_root):
    store = EpisodeStore(store_root)
    old, pinned, recent = (_record(store, start=T0 + i * 10**12) for i in range(3))
    day = 86400 * 10**9
    now = json.loads((recent.path / "manifest.json").read_text())["committed_at_ns"]
    for e, age_days in ((old, 10), (pinned, 10), (recent, 1)):  # backdate the commits
        m = json.loads((e.path / "manifest.json").read_text())
        m["committed_at_ns"] = now - age_days * day
        (e.path / "manifest.json").write_text(json.dumps(m))
    pin(store, pinned.episode_id, by="tester", reason="paper figure")
    assert (store.root / PINS / f"{pinned.episode_id}.json").is_file()
    policy = RetentionPolicy(keep_jpeg_days=7)
    done = {r.episode_id: r for r in transcode_pass(store, policy, now_ns=now)}
    assert set(done) == {old.episode_id, pinned.episode_id, recent.episode_id}
    assert done[old.episode_id].jpeg_dropped and not done[pinned.episode_id].jpeg_dropped
    assert not done[recent.episode_id].jpeg_dropped
    assert {c: store.open(recent.episode_id).tier(c) for c in recent.cameras} == {"top": "jpeg", "left_wrist": "jpeg"}
    assert store.open(old.episode_id).tier("top") == "video"
    m = json.loads((pinned.path / "manifest.json").read_text())
    assert set(m["video"]) == {"top", "left_wrist"} and any(k.startswith("images/top/") for k in m["files"])
    assert m["committed_at_ns"] == now - 10 * day  # the commit time survives the new manifest
    assert transcode_pass(store, policy, now_ns=now) == []  # nothing left to do
    # nine days on, the recent one is past retention too
    later = transcode_pass(store, policy, now_ns=now + 9 * day)
    assert [r.episode_id for r in later] == [recent.episode_id] and later[0].jpeg_dropped
    assert fsck(store).clean
    with pytest.raises(ValueError, match="RECAP_JPEG_KEEP_DAYS"):
        import os

        os.environ["RECAP_JPEG_KEEP_DAYS"] = "nan"
        try:
            RetentionPolicy.from_env()
        finally:
            del os.environ["RECAP_JPEG_KEEP_DAYS"]


def test_fsck_knows_every_intermediate_state(store_root):
    """JPEG only, half-written video, video not yet in the manifest, both tiers, JPEG files left
    after the drop, video only: each reads the same, and fsck reports and repairs the leftovers."""
    store = EpisodeStore(store_root)
    ep = _record(store)
    ref = _frames(ep)
    eid = ep.episode_id

    def readable():
        e = store.open(eid)
        for cam in e.cameras:
            assert _err(e.images(cam), ref[cam]) < TOL

    assert fsck(store).clean  # JPEG only
    # a half-written video and a finished one the manifest does not list yet
    (ep.path / "videos").mkdir()
    (ep.path / "videos" / "top.mp4.0123.partial").write_bytes(b"\x00" * 100)
    tmp = store_root.parent / "made"
    shutil.copytree(ep.path, tmp)
    transcode_episode(store, eid, drop_jpeg=False)
    shutil.copy(ep.path / video_key("left_wrist"), tmp / video_key("left_wrist"))
    shutil.rmtree(ep.path)
    shutil.copytree(tmp, ep.path)
    readable()
    r = fsck(store)
    assert not r.clean and "half-written" in r.transcode[eid] and "videos/left_wrist.mp4" in r.transcode[eid]
    assert not r.stray and not r.corrupt
    r = fsck(store, repair=True)
    assert r.actions and fsck(store).clean and not (ep.path / "videos" / "left_wrist.mp4").exists()
    readable()
    # both tiers
    transcode_episode(store, eid, drop_jpeg=False)
    assert fsck(store).clean and store.open(eid).tier("top") == "jpeg"
    readable()
    # the manifest already unlists the JPEG files but they are still there (killed inside the drop)
    m = json.loads((ep.path / "manifest.json").read_text())
    from data.video import _rewrite_manifest

    _rewrite_manifest(ep.path, m, {k: v for k, v in m["files"].items() if not k.startswith("images/top/")}, m["video"])
    assert store.open(eid).tier("top") == "video" and store.open(eid).tier("left_wrist") == "jpeg"
    readable()
    r = fsck(store)
    assert "JPEG tier left" in r.transcode[eid] and not r.stray
    fsck(store, repair=True)
    assert not (ep.path / "images" / "top").exists() and fsck(store).clean
    readable()
    # video only; a damaged video is corruption, as any changed file
    transcode_episode(store, eid)
    assert fsck(store).clean
    readable()
    f = ep.path / video_key("top")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert "sha256" in fsck(store).corrupt[eid]


def test_verification_refuses_a_video_that_does_not_match(store_root, tmp_path):
    store = EpisodeStore(store_root)
    a, b = _record(store), _record(store, ticks=22, start=T0 + 10**12)
    transcode_episode(store, b.episode_id, drop_jpeg=False)
    with pytest.raises(TranscodeError, match="22 frames for 23 ticks"):
        verify_video(a, "top", b.path / video_key("top"))


def test_the_manifest_video_section_is_checked(store_root):
    from data.fsck import manifest_problem

    store = EpisodeStore(store_root)
    ep = _record(store)
    transcode_episode(store, ep.episode_id)
    m = json.loads((ep.path / "manifest.json").read_text())
    assert manifest_problem(m) is None
    for bad in ({"top": {**m["video"]["top"], "file": "../../etc/passwd"}}, {"../x": m["video"]["top"]},
                {"top": {**m["video"]["top"], "frames": "many"}}, {"top": {**m["video"]["top"], "rate": "0"}}, []):
        assert manifest_problem({**m, "video": bad}) is not None


def _transcoder(store_dir, log):
    return subprocess.Popen(RECAP + ["data", "transcode", "--store", str(store_dir), "--keep-jpeg-days", "0", "--json"],
                            stdout=open(log, "a"), stderr=subprocess.PIPE)


def _wait_for_work(store_dir, alive) -> None:
    """Until the transcoder is past its start-up: the first video appears (or it exits, or 120 s)."""
    deadline = time.time() + 120
    while not any(store_dir.glob("episodes/*/videos")) and alive() and time.time() < deadline:
        time.sleep(0.01)


# `recap data transcode` forked from a server that imported the CLI once (multiprocessing's forkserver),
# so a trial pays no interpreter start-up: the child runs the command's own main() on the same arguments.
_FORK_PRELOAD = ["__main__", "data.cli_root", "data.cli", "data.video", "data.catalog", "tests.store.helpers"]


def _forked_transcoder(store_dir, log):
    import multiprocessing

    from tests.store.helpers import run_cli

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_FORK_PRELOAD)
    args = ["data", "transcode", "--store", str(store_dir), "--keep-jpeg-days", "0", "--json"]
    p = ctx.Process(target=run_cli, args=(args, dict(os.environ), str(log), str(log) + ".err"))
    p.start()
    return p


def _forked_stderr(log) -> str:
    from pathlib import Path

    err = Path(str(log) + ".err")
    return err.read_text()[-2000:] if err.exists() else ""


def _finish(p, log) -> None:
    """Wait for a forked transcoder's whole pass: it must exit 0 (one stuck past 300 s is killed, not left)."""
    p.join(timeout=300)
    if p.is_alive():
        p.kill()
        p.join()
    assert p.exitcode == 0, _forked_stderr(log)


@pytest.mark.slow
def test_sigkill_mid_transcode_keeps_every_episode_readable(tmp_path):
    """Each trial starts from the same JPEG-tier store and SIGKILLs the transcoder at a random moment
    of its work, as long as an uninterrupted pass takes on this machine, so the kills spread over it.
    Every transcoder here runs `recap data transcode` forked from a process that imported the CLI once
    (no interpreter start-up per trial); `python -m data.cli_root` itself runs it once at the end."""
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(_FORK_PRELOAD)
    multiprocessing.forkserver.ensure_running()  # its imports overlap the recording below
    template = tmp_path / "template"
    store = EpisodeStore(template)
    eps = [_record(store, ticks=60, start=T0 + i * 10**12) for i in range(4)]
    refs = {e.episode_id: _frames(e) for e in eps}
    timed = tmp_path / "timed"
    shutil.copytree(template, timed)
    p = _forked_transcoder(timed, tmp_path / "timed.jsonl")  # timed as the trials' transcoders run
    _wait_for_work(timed, p.is_alive)
    t0 = time.monotonic()
    _finish(p, tmp_path / "timed.jsonl")
    work_s = time.monotonic() - t0
    rng = random.Random(3)
    states = set()
    for trial in range(8):
        store_dir = tmp_path / f"trial-{trial}"
        shutil.copytree(template, store_dir)
        store = EpisodeStore(store_dir)
        p = _forked_transcoder(store_dir, tmp_path / f"killed-{trial}.jsonl")
        _wait_for_work(store_dir, p.is_alive)
        time.sleep(rng.uniform(0.0, work_s))
        p.kill()  # SIGKILL
        p.join()
        for e in eps:  # every episode reads its frames, whatever the transcoder had done
            ep = store.open(e.episode_id)
            states.add(tuple(sorted(ep.tier(c) for c in ep.cameras)))
            for cam in ep.cameras:
                assert _err(ep.images(cam), refs[e.episode_id][cam]) < TOL
        r = fsck(store)
        assert not r.corrupt and not r.stray, r.to_dict()
        for why in r.transcode.values():
            states.update(part.split(":")[0] for part in why.split("; "))
        fsck(store, repair=True)
        assert fsck(store).clean
        p = _forked_transcoder(store_dir, tmp_path / f"finish-{trial}.jsonl")  # a full pass finishes the work
        _finish(p, tmp_path / f"finish-{trial}.jsonl")
        for e in eps:
            ep = store.open(e.episode_id)
            assert [ep.tier(c) for c in ep.cameras] == ["video", "video"]
            for cam in ep.cameras:
                assert _err(ep.images(cam), refs[e.episode_id][cam]) < TOL
        assert fsck(store).clean
    assert len(states) >= 2, states  # the kills landed in more than one state (tiers, leftovers)
    shutil.copytree(template, tmp_path / "process")  # the command as its own process does the same work
    p = _transcoder(tmp_path / "process", tmp_path / "log.jsonl")
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    store = EpisodeStore(tmp_path / "process")
    assert all(store.open(e.episode_id).tier(c) == "video" for e in eps for c in e.cameras) and fsck(store).clean
