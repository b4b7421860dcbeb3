"""Adopting an episode directory written elsewhere (an upload, another robot's store) into a
store: verified against its own manifest first, then copied under a temporary name and renamed
into place, so a half-copied episode is never visible."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from data.files import fsync_dir
from data.fsck import verify_episode
from data.store import EpisodeStore, StoreError


def adopt_episode(store: EpisodeStore, src: str | Path) -> str:
    """Copy the committed episode at `src` into `store`; returns its id. Refuses (StoreError naming
    the problem) an uncommitted or corrupt episode, or one whose id the store already holds."""
    src = Path(src)
    problem = verify_episode(src)
    if problem:
        raise StoreError(f"episode {src.name} refused: {problem}")
    episode_id = src.name
    final = store.episode_dir(episode_id)
    if final.exists():
        raise StoreError(f"episode {episode_id} is already in the store")
    tmp = final.with_name(f".{episode_id}.{uuid.uuid4().hex[:8]}.adopt")
    shutil.copytree(src, tmp)
    fsync_dir(tmp)
    tmp.rename(final)
    fsync_dir(final.parent)
    return episode_id
