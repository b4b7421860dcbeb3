"""The video tier: committed episodes' camera streams kept as H.264 video instead of JPEG per frame.

An episode's frames live in one of two tiers per camera, and the manifest says which:
- the JPEG tier, `images/<camera>/` (zarr, one JPEG per frame), as the writer leaves it;
- the video tier, `videos/<camera>.mp4`, listed in the manifest's files (sha256) and described in
  its `video` section ({camera: {file, frames, codec, crf, gop, rate}}).
`EpisodeData.image` reads whichever the manifest lists (the JPEG tier while both are there).

Transcoding (`transcode_episode`), crash-safe like every other store write. It holds the episode's
`.lock` (fsck leaves a locked episode alone), and the episode stays readable at every instant:
1. each camera is encoded to `videos/<camera>.mp4.<uuid>.partial`, fsynced, decoded in full
   (frame count = ticks) and compared with the JPEG tier, then renamed to `videos/<camera>.mp4`;
2. a new manifest lists the videos beside the JPEG files (state "both"; same commit time, the
   episode's `checksum` changes and the catalog is updated);
3. unless the retention policy keeps it, a new manifest drops the JPEG files (state "video only"),
   then `images/` is deleted. A reader that opened the episode before step 3 and finds a JPEG shard
   gone re-reads the manifest and continues from the video.
fsck knows the states in between: `*.partial` files (half-written video) are removed, a renamed
video the manifest does not list yet (crash between 1 and 2) is removed, JPEG files the manifest
no longer lists (crash inside 3) are deleted; each is repaired by `recap data fsck --repair` and a
new `recap data transcode` pass starts the episode over where needed.

Codec (measured, data/README.md): H.264 (libx264, preset superfast, CRF 28) with every frame a
keyframe (GOP 1). On the bench's camera scenes all-intra costs 15 % more bytes than GOP 30 but a
random frame decodes in ~1 ms instead of ~11 ms (no neighbours to decode first), which is what
training's random (episode, tick) reads need; longer GOPs are a setting (`gop`) for footage whose
scenes stand still. All-intra video is encoded without the deblocking filter
(VideoSettings.deblock). The JPEG bytes are decoded by FFmpeg's mjpeg decoder straight to
full-range YUV 4:2:0 (the JPEG's own colour space, no RGB round trip) and encoded as is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.files import PARTIAL_SUFFIX, FileLock, fsync_dir, sha256_file
from data.schema import IMAGES

log = logging.getLogger(__name__)

VIDEOS = "videos"
VIDEO_SUFFIX = ".mp4"
PINS = "pins"  # <root>/pins/<episode_id>.json: episodes whose JPEG tier the retention policy keeps
# Mean absolute difference (grey levels, 0..255) allowed between a decoded video frame and the JPEG
# frame it was encoded from: ~1.5 measured at 480x640, ~5.5 at 48x64 (CRF 28); a wrong frame is 30+.
VERIFY_MAX_MEAN_ABS = 10.0


class TranscodeError(RuntimeError):
    """A video could not be made or did not verify; the JPEG tier is untouched."""


@dataclass(frozen=True)
class VideoSettings:
    codec: str = "libx264"
    crf: int = 28
    preset: str = "superfast"
    gop: int = 1  # keyframe interval: 1 = every frame decodes alone (random access)

    @property
    def deblock(self) -> bool:
        """H.264's in-loop deblocking filter, off for all-intra video: with every frame a keyframe
        nothing is predicted from a filtered frame, so the filter only smooths the picture shown
        (bytes unchanged, 0.04 grey levels further from the JPEG frame on the bench's scenes) and
        takes more than half of a frame's decode time (1.58 -> 0.68 ms at 480x640, data/README.md)."""
        return self.gop > 1 or "264" not in self.codec

    def options(self) -> dict[str, str]:
        opts = {"crf": str(self.crf), "preset": self.preset, "g": str(self.gop)}
        if self.gop > 1:
            opts["bf"] = "0"  # no B-frames: a frame never waits for a later one
        if not self.deblock:
            opts["x264-params"] = "no-deblock=1"
        return opts


@dataclass(frozen=True)
class RetentionPolicy:
    """Which committed episodes keep their JPEG tier after transcoding: those committed less than
    `keep_jpeg_days` ago and pinned ones (`EpisodeStore.pin`). Episodes are transcoded once they
    are `transcode_after_s` old."""

    keep_jpeg_days: float = 7.0
    transcode_after_s: float = 0.0

    @classmethod
    def from_env(cls) -> "RetentionPolicy":
        env = os.environ
        try:
            keep = float(env.get("RECAP_JPEG_KEEP_DAYS", cls.keep_jpeg_days))
            after = float(env.get("RECAP_TRANSCODE_AFTER_S", cls.transcode_after_s))
        except ValueError as e:
            raise ValueError(f"RECAP_JPEG_KEEP_DAYS / RECAP_TRANSCODE_AFTER_S must be numbers: {e}") from None
        if not (keep >= 0 and after >= 0 and np.isfinite(keep) and np.isfinite(after)):
            raise ValueError("RECAP_JPEG_KEEP_DAYS and RECAP_TRANSCODE_AFTER_S must be finite and >= 0")
        return cls(keep, after)


def video_key(camera: str) -> str:
    return f"{VIDEOS}/{camera}{VIDEO_SUFFIX}"


def jpeg_keys(manifest: dict, camera: str) -> list[str]:
    prefix = f"{IMAGES}/{camera}/"
    return [k for k in manifest["files"] if k.startswith(prefix)]


def tiers(manifest: dict, cameras) -> dict[str, set[str]]:
    """camera -> the tiers its manifest lists ({"jpeg"}, {"video"} or both)."""
    video = manifest.get("video") or {}
    out = {}
    for cam in cameras:
        t = set()
        if jpeg_keys(manifest, cam):
            t.add("jpeg")
        if cam in video and video_key(cam) in manifest["files"]:
            t.add("video")
        out[cam] = t
    return out


def video_section_problem(manifest: dict) -> str | None:
    """None if the manifest's `video` section (if any) has the shape transcode_episode writes."""
    video = manifest.get("video")
    if video is None:
        return None
    if not isinstance(video, dict):
        return "manifest 'video' is not an object"
    for cam, meta in video.items():
        if not isinstance(cam, str) or not cam or "/" in cam or cam in (".", ".."):
            return f"manifest 'video' names an unsafe camera {str(cam)[:100]!r}"
        if not isinstance(meta, dict) or type(meta.get("frames")) is not int or meta["frames"] < 0:
            return f"manifest 'video' entry of {cam!r} has no frame count"
        try:
            rate = Fraction(str(meta.get("rate", "")))
        except (ValueError, ZeroDivisionError):
            rate = Fraction(0)
        if not 0 < rate <= 10_000 or meta.get("file") != video_key(cam):
            return f"manifest 'video' entry of {cam!r} has a bad rate or file"
        if video_key(cam) not in manifest["files"]:
            return f"manifest 'video' entry of {cam!r} names a file the manifest does not list"
    return None


# -- reading ---------------------------------------------------------------------------------

class VideoFrames:
    """Random and sequential access to one camera's video: `frame(t)` -> uint8 (H, W, C).

    All-intra video (every packet a keyframe: what transcode_episode writes by default) is read by
    packet from a reader's second read on (one pass over the file then gives each frame's offset and
    size): a frame is one read and one decode, with no seek and no demuxer (0.96 against 1.02 ms per
    random 480x640 frame with its RGB conversion; data/README.md). Such a reader holds no descriptor
    between reads (the container is closed after the first read and the table's pass, each packet is
    read through a descriptor opened for it), so a training set of thousands of episodes and cameras
    stays within the process's open-file limit. Other videos keep the container open and seek to the
    keyframe before t; a read right after the previous frame continues decoding without a seek."""

    def __init__(self, path: Path, meta: dict[str, Any], channels: int, *, by_packet: bool = True):
        self.path, self.meta, self.channels = path, meta, channels
        self._rate = Fraction(meta.get("rate", 30))
        self._iter = None
        self._next = None  # the index the running decoder yields next
        self._pid = os.getpid()
        self._ctx = self._offsets = self._sizes = None
        self._file_id = None  # (inode, size) of the file the packet table was read from
        self._reads = 0 if by_packet else -1  # -1: never by packet
        self._container = None
        self._closed = False
        self._open()

    def _open(self) -> None:
        import av

        self._container = av.open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "NONE"  # one frame at a time: frame threading only adds latency
        self._tb = self._stream.time_base
        self._iter = self._next = None

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._stream = None
        self._iter = self._next = None

    def _by_packet(self) -> None:
        """Read by packet from now on if the video allows it (at the second read: the table costs a
        pass over the file, which a reader opened for one frame, as the API's frame endpoint is,
        never pays)."""
        import av

        self._open()  # closed after the first read
        table = self._packet_table()
        if table is None:  # read by seeking: the container stays open
            self._container.seek(0, stream=self._stream, backward=True)
            self._iter = self._next = None
            return
        ctx = av.CodecContext.create(self._stream.codec_context.name, "r")
        ctx.extradata = self._stream.codec_context.extradata
        ctx.thread_type = "NONE"
        self._ctx, (self._offsets, self._sizes) = ctx, table
        st = os.stat(self.path)
        self._file_id = (st.st_ino, st.st_size)
        self._close_container()  # the table and the decoder are all a read needs from here

    def _index(self, frame) -> int:
        return int(round(frame.pts * self._tb * self._rate))

    def _packet_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(file offset, size) of each frame's packet, by frame index, when every packet is a keyframe
        at a known offset and the indices are exactly 0..frames-1 (the manifest's count); None
        otherwise (read by seeking). Stops at the first packet past the manifest's count."""
        n = self.meta.get("frames")
        if type(n) is not int or n <= 0:
            return None
        offsets, sizes = np.full(n, -1, np.int64), np.zeros(n, np.int64)
        seen = 0
        for pk in self._container.demux(self._stream):
            if pk.size == 0:  # the demuxer's end-of-stream marker
                continue
            i = self._index(pk) if pk.pts is not None else -1
            if (seen == n or not 0 <= i < n or offsets[i] >= 0 or not pk.is_keyframe
                    or pk.pos is None or pk.pos < 0):
                return None
            offsets[i], sizes[i] = pk.pos, pk.size
            seen += 1
        return (offsets, sizes) if seen == n else None

    def _decode_packet(self, t: int):
        import av

        off, size = int(self._offsets[t]), int(self._sizes[t])
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # ~3 us against ~1 ms of decoding
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_size) != self._file_id:  # the table would point into other bytes
                raise OSError(f"{self.path} changed since its packet table was read")
            data = os.pread(fd, size, off)
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(f"frame {t} of {self.path.name}: short read ({len(data)} of {size} bytes)")
        frames = self._ctx.decode(av.Packet(data))
        if not frames:  # a decoder that holds frames back (reordering): drain it, then reset it
            frames = self._ctx.decode(None)
            self._ctx.flush_buffers()
        if len(frames) != 1:
            raise OSError(f"frame {t} of {self.path.name} did not decode to one picture")
        return frames[0]

    def frame(self, t: int) -> np.ndarray:
        if self._closed:
            raise ValueError(f"{self.path.name}: read after close()")
        if 0 <= self._reads < 2:  # counted up to the second read, where the table is built
            self._reads += 1
            if self._reads == 2:
                self._by_packet()
        if self._offsets is not None:
            if not 0 <= t < len(self._offsets):
                raise OSError(f"frame {t} missing from {self.path.name} ({len(self._offsets)} frames)")
            fr = self._decode_packet(t)
        else:
            if self._container is None:
                self._open()
            try:
                fr = self._seek_decode(t)
            finally:
                if self._reads == 1:  # the second read opens it again for the table's pass
                    self._close_container()
        img = fr.to_ndarray(format="gray" if self.channels == 1 else "rgb24")
        return img.reshape(*img.shape[:2], self.channels)

    def _seek_decode(self, t: int):
        if self._next != t or self._iter is None:
            self._container.seek(int(round(t / (self._rate * self._tb))), stream=self._stream, backward=True)
            self._iter = self._container.decode(self._stream)
        for fr in self._iter:
            i = self._index(fr)
            if i >= t:
                if i != t:
                    break
                self._next = t + 1
                return fr
        self._iter = self._next = None
        raise OSError(f"frame {t} missing from {self.path.name}")

    def close(self) -> None:
        self._closed = True
        self._close_container()


def _decode_all(path: Path, channels: int, check: Callable[[int, np.ndarray], None]) -> int:
    import av

    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for fr in c.decode(s):
            check(n, fr)
            n += 1
    return n


# -- raw JPEG frames of the JPEG tier --------------------------------------------------------

def _shard_frames(data: bytes, n: int) -> list[bytes | None]:
    """The per-frame JPEG bytes of one shard file (zarr v3 sharding, index at the end with crc32c);
    None for a frame zarr did not write (all fill value)."""
    index_len = 16 * n + 4
    if len(data) < index_len:
        raise TranscodeError("shard shorter than its index")
    idx = np.frombuffer(data[-index_len:-4], "<u8").reshape(n, 2)
    out: list[bytes | None] = []
    for off, size in idx:
        if off == np.iinfo(np.uint64).max and size == np.iinfo(np.uint64).max:
            out.append(None)
        elif off + size > len(data) - index_len:
            raise TranscodeError("shard index points past its data")
        else:
            out.append(data[int(off):int(off + size)])
    return out


def _jpeg_frames(ep, camera: str):
    """Yield every frame of `camera` as JPEG bytes (None for an all-zero frame), in order."""
    arr = ep._image_array(camera)
    per = int(arr.shards[0]) if arr.shards else 1
    n = len(ep)
    for s in range((n + per - 1) // per):
        f = ep.path / IMAGES / camera / "c" / str(s) / "0" / "0" / "0"
        frames = _shard_frames(f.read_bytes(), per) if f.is_file() else [None] * per
        yield from frames[: min(per, n - s * per)]


# -- writing ---------------------------------------------------------------------------------

def encode_camera(ep, camera: str, dest: Path, settings: VideoSettings) -> dict[str, Any]:
    """Encode `camera` of the open episode `ep` into `dest` (fsynced); returns its manifest entry."""
    import av

    spec = ep.info.features.cameras[camera]
    if spec.channels != 3 or spec.height % 2 or spec.width % 2:
        raise TranscodeError(f"camera {camera} ({spec.height}x{spec.width}x{spec.channels}) is not even-sized RGB")
    rate = Fraction(max(1, int(round(ep.info.fps))))
    mj = av.CodecContext.create("mjpeg", "r")
    black = None
    with av.open(str(dest), "w", format="mp4") as out:
        s = out.add_stream(settings.codec, rate=rate, options=settings.options())
        s.width, s.height, s.pix_fmt = spec.width, spec.height, "yuvj420p"
        s.thread_count = 1  # one core per job; parallelism comes from running jobs side by side
        for i, jpeg in enumerate(_jpeg_frames(ep, camera)):
            if jpeg is None:
                if black is None:
                    black = av.VideoFrame.from_ndarray(np.zeros((spec.height, spec.width, 3), np.uint8), format="rgb24")
                    black = black.reformat(format="yuvj420p")
                fr = black
            else:
                frames = mj.decode(av.Packet(jpeg))
                if len(frames) != 1:
                    raise TranscodeError(f"camera {camera}: frame {i} is not one JPEG image")
                fr = frames[0]
                if fr.format.name != "yuvj420p":
                    fr = fr.reformat(format="yuvj420p")
            fr.pts = i
            fr.pict_type = av.video.frame.PictureType.NONE  # the encoder picks the frame types (GOP)
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with open(dest, "rb") as f:
        os.fsync(f.fileno())
    return {"file": video_key(camera), "frames": len(ep), "codec": "h264" if "264" in settings.codec else settings.codec,
            "crf": settings.crf, "gop": settings.gop, "preset": settings.preset, "deblock": settings.deblock,
            "rate": str(rate)}


def verify_video(ep, camera: str, path: Path, *, samples: int = 5, seed: int = 0) -> None:
    """Decode the whole video: it must hold one frame per tick, and sampled frames (first, last and
    random ones) must be within VERIFY_MAX_MEAN_ABS of the JPEG tier's. TranscodeError otherwise."""
    n = len(ep)
    rng = np.random.default_rng(seed)
    picks = {0, n - 1, *rng.integers(0, n, samples).tolist()}
    channels = ep.info.features.cameras[camera].channels
    worst = [0.0]

    def check(i: int, fr) -> None:
        if i in picks:
            got = fr.to_ndarray(format="rgb24")
            ref = ep._image_array(camera)[i]
            err = float(np.abs(got.astype(np.int16) - ref.astype(np.int16)).mean())
            worst[0] = max(worst[0], err)

    frames = _decode_all(path, channels, check)
    if frames != n:
        raise TranscodeError(f"camera {camera}: the video decodes to {frames} frames for {n} ticks")
    if worst[0] > VERIFY_MAX_MEAN_ABS:
        raise TranscodeError(f"camera {camera}: decoded frames differ from the JPEG tier by {worst[0]:.1f} "
                             f"grey levels on average (limit {VERIFY_MAX_MEAN_ABS})")


@dataclass
class TranscodeResult:
    episode_id: str
    transcoded: list[str] = field(default_factory=list)  # cameras given a video now
    skipped: dict[str, str] = field(default_factory=dict)  # camera -> why it keeps only its JPEG tier
    jpeg_dropped: bool = False
    jpeg_bytes: int = 0
    video_bytes: int = 0
    busy: bool = False  # locked by a writer, another transcoder or fsck

    def to_dict(self) -> dict:
        return asdict(self)


def _manifest(path: Path) -> dict:
    from data.store import MANIFEST

    return json.loads((path / MANIFEST).read_text())


def _rewrite_manifest(path: Path, manifest: dict, files: dict[str, dict], video: dict) -> dict:
    """A new manifest for the same committed episode: same commit time and tick count."""
    from data.store import manifest_checksum
    from data.files import atomic_write_json

    new = dict(manifest)
    new["files"] = dict(sorted(files.items()))
    new["checksum"] = manifest_checksum(new["files"])
    if video:
        new["video"] = video
    else:
        new.pop("video", None)
    from data.store import MANIFEST

    atomic_write_json(path / MANIFEST, new)
    fsync_dir(path)
    return new


def transcode_episode(store, episode_id: str, *, settings: VideoSettings = VideoSettings(),
                      drop_jpeg: bool = True, after_encode: Callable[[str], None] | None = None) -> TranscodeResult:
    """Give every camera of a committed episode a verified video, then (with `drop_jpeg`) drop its
    JPEG tier (module docstring for the steps). Idempotent: a second call finds nothing to do."""
    from data.store import LOCK

    path = store.episode_dir(episode_id)
    r = TranscodeResult(episode_id)
    lock = FileLock(path / LOCK)
    if not (path / "manifest.json").is_file():
        from data.store import EpisodeNotFound

        raise EpisodeNotFound(f"episode {episode_id} is not committed")
    if not lock.try_acquire():
        r.busy = True
        return r
    try:
        if transcode_leftovers(path):
            clean_leftovers(path)  # a transcode killed earlier: start this episode over
        ep = store.open(episode_id)
        manifest = _manifest(path)
        video = dict(manifest.get("video") or {})
        files = dict(manifest["files"])
        have = tiers(manifest, ep.cameras)
        made = {}
        for cam in ep.cameras:
            if "video" in have[cam]:
                continue
            if "jpeg" not in have[cam]:
                r.skipped[cam] = "no frames in either tier"
                continue
            final = path / video_key(cam)
            final.parent.mkdir(exist_ok=True)
            tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
            try:
                entry = encode_camera(ep, cam, tmp, settings)
                if after_encode:
                    after_encode(cam)
                verify_video(ep, cam, tmp)
            except TranscodeError as e:
                tmp.unlink(missing_ok=True)
                r.skipped[cam] = str(e)
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, final)
            made[cam] = entry
        if made:
            fsync_dir(path / VIDEOS)
            fsync_dir(path)
            for cam, entry in made.items():
                f = path / entry["file"]
                files[entry["file"]] = {"sha256": sha256_file(f), "size": f.stat().st_size}
                video[cam] = entry
            manifest = _rewrite_manifest(path, manifest, files, video)
            r.transcoded = sorted(made)
        if drop_jpeg:
            r.jpeg_dropped = drop_jpeg_tier(path, manifest)
        final_manifest = _manifest(path)
        r.video_bytes = sum(final_manifest["files"][e["file"]]["size"] for e in video.values()
                            if e["file"] in final_manifest["files"])
        r.jpeg_bytes = sum(m["size"] for k, m in final_manifest["files"].items() if k.startswith(f"{IMAGES}/"))
    finally:
        lock.release()
    return r


def drop_jpeg_tier(path: Path, manifest: dict) -> bool:
    """Unlist, then delete, the JPEG files of every camera that has a video (caller holds the lock).
    Cameras without a video keep theirs. True if anything was dropped."""
    video = manifest.get("video") or {}
    drop = [c for c in video if video_key(c) in manifest["files"] and jpeg_keys(manifest, c)]
    if not drop:
        return False
    files = {k: v for k, v in manifest["files"].items()
             if not any(k.startswith(f"{IMAGES}/{c}/") for c in drop)}
    _rewrite_manifest(path, manifest, files, video)
    delete_unlisted_jpeg(path, files)
    return True


def delete_unlisted_jpeg(path: Path, files: dict) -> list[str]:
    """Delete the JPEG folders of cameras whose frames the manifest lists only as video (what a
    crash in the middle of dropping the JPEG tier leaves). Returns the cameras cleaned."""
    cleaned = []
    images = path / IMAGES
    if not images.is_dir():
        return cleaned
    for d in sorted(images.iterdir()):
        if d.is_dir() and not d.is_symlink() and video_key(d.name) in files and not any(
                k.startswith(f"{IMAGES}/{d.name}/") for k in files):
            shutil.rmtree(d)
            cleaned.append(d.name)
    if cleaned:
        fsync_dir(images)
    return cleaned


def interrupted_videos(path: Path, manifest: dict) -> list[str]:
    """Video files of the episode that its manifest does not list: a transcode died between writing
    a verified video and recording it (relative paths)."""
    d = path / VIDEOS
    if not d.is_dir():
        return []
    return sorted(f"{VIDEOS}/{f.name}" for f in d.iterdir()
                  if f.name.endswith(VIDEO_SUFFIX) and f"{VIDEOS}/{f.name}" not in manifest["files"])


def unlisted_jpeg(path: Path, manifest: dict) -> list[str]:
    """Cameras whose JPEG files are on disk although the manifest lists only their video."""
    images = path / IMAGES
    if not images.is_dir():
        return []
    return sorted(d.name for d in images.iterdir() if d.is_dir() and video_key(d.name) in manifest["files"]
                  and not jpeg_keys(manifest, d.name))


def transcode_leftovers(path: Path) -> str:
    """What an interrupted transcode left in a committed episode ("" if nothing): a half-written
    video (`*.partial` under videos/), a video its manifest does not list yet, or JPEG files of a
    camera the manifest lists as video only."""
    try:
        manifest = _manifest(path)
        manifest["files"].items()
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return ""  # a manifest problem is fsck's verify_episode's to report
    parts = []
    half = sorted((path / VIDEOS).glob(f"*{PARTIAL_SUFFIX}")) if (path / VIDEOS).is_dir() else []
    if half:
        parts.append(f"{len(half)} half-written video(s)")
    unlisted = interrupted_videos(path, manifest)
    if unlisted:
        parts.append("video(s) not yet recorded in the manifest: " + ", ".join(unlisted))
    jpeg = unlisted_jpeg(path, manifest)
    if jpeg:
        parts.append("JPEG tier left after it was dropped: " + ", ".join(jpeg))
    return "; ".join(parts)


def clean_leftovers(path: Path) -> None:
    """Delete what an interrupted transcode left (the caller holds the episode's lock); the
    manifest's tiers are whole, so the episode reads the same before and after."""
    if (path / VIDEOS).is_dir():
        for f in (path / VIDEOS).glob(f"*{PARTIAL_SUFFIX}"):
            f.unlink(missing_ok=True)
    manifest = _manifest(path)
    for key in interrupted_videos(path, manifest):
        (path / key).unlink()
    delete_unlisted_jpeg(path, manifest["files"])
    if (path / VIDEOS).is_dir():
        fsync_dir(path / VIDEOS)
    fsync_dir(path)


# -- the policy pass -------------------------------------------------------------------------

def is_pinned(store, episode_id: str) -> bool:
    return (store.root / PINS / f"{episode_id}.json").is_file()


def transcode_pass(store, policy: RetentionPolicy = RetentionPolicy(), *, settings: VideoSettings = VideoSettings(),
                   episode_ids: list[str] | None = None, now_ns: int | None = None,
                   on_episode: Callable[[TranscodeResult], None] | None = None) -> list[TranscodeResult]:
    """Apply the policy to the store (or to `episode_ids`): transcode every committed episode old
    enough, and drop the JPEG tier of those beyond `keep_jpeg_days` and not pinned."""
    from data.store import EpisodeNotFound, StoreError

    now_ns = now_ns or time.time_ns()
    out = []
    for eid in episode_ids if episode_ids is not None else store.episode_ids():
        try:
            manifest = _manifest(store.episode_dir(eid))
            committed = int(manifest.get("committed_at_ns") or 0)
            info = dict(manifest.get("video") or {})
            cams = {k.split("/")[1] for k in manifest["files"] if k.startswith(f"{IMAGES}/") and k.count("/") >= 2}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
            continue  # unreadable: fsck's business
        age_s = (now_ns - committed) / 1e9
        if age_s < policy.transcode_after_s:
            continue
        drop = age_s >= policy.keep_jpeg_days * 86400 and not is_pinned(store, eid)
        if all(c in info for c in cams) and not (drop and cams) and not transcode_leftovers(store.episode_dir(eid)):
            continue  # nothing to do
        try:
            r = transcode_episode(store, eid, settings=settings, drop_jpeg=drop)
        except EpisodeNotFound:
            if episode_ids is not None:
                raise  # asked for by id and not there: the caller's error
            continue  # gone since it was listed (fsck quarantined it, say)
        except StoreError as e:  # one episode the store will not open (fsck reports it) stops no other's
            log.warning("video tier: episode %s skipped: %s", eid, e)
            continue
        out.append(r)
        if on_episode:
            on_episode(r)
    return out


def pin(store, episode_id: str, by: str, reason: str = "") -> None:
    """Keep the episode's JPEG tier whatever its age (pins live beside the episodes, outside their
    checksummed files)."""
    from data.files import atomic_write_json

    store.open(episode_id)  # must exist and be committed
    atomic_write_json(store.root / PINS / f"{episode_id}.json", {"by": by, "reason": reason, "at_ns": time.time_ns()})


def unpin(store, episode_id: str) -> bool:
    store.episode_dir(episode_id)  # checks the id
    f = store.root / PINS / f"{episode_id}.json"
    if f.is_file():
        f.unlink()
        return True
    return False
