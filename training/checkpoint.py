"""Step checkpoints of a training loop: model, optimizer, scheduler and every RNG, so a killed run
resumes exactly where it stopped. Tensors in safetensors, the rest in JSON; written to a temporary
directory and renamed into place (no pickle, never a torn checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from data.files import fsync_dir


def save_checkpoint(directory: Path, *, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched, rng: np.random.Generator, gen: torch.Generator | None, losses: list[float]) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if gen is not None:
        tensors["rng.gen"] = gen.get_state()
    meta = {"step": step, "param_groups": osd["param_groups"], "sched": sched.state_dict(),
            "numpy": rng.bit_generator.state, "losses": losses}
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta, default=_json_default))
    fsync_dir(tmp)
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, directory)
    fsync_dir(directory.parent)


def load_checkpoint(directory: Path, *, model: torch.nn.Module, opt: torch.optim.Optimizer, sched,
                    rng: np.random.Generator, gen: torch.Generator | None) -> tuple[int, list[float]]:
    """Restore everything; returns (next step, losses so far). (0, []) when there is no checkpoint."""
    if not (directory / "meta.json").exists():
        return 0, []
    meta = json.loads((directory / "meta.json").read_text())
    tensors = load_file(str(directory / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["sched"])
    rng.bit_generator.state = meta["numpy"]
    torch.set_rng_state(tensors["rng.torch"])
    if gen is not None and "rng.gen" in tensors:
        gen.set_state(tensors["rng.gen"])
    return int(meta["step"]), list(meta["losses"])


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def optimise_step(acc, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, loss: torch.Tensor,
                  max_grad_norm: float = 1.0) -> float:
    """One optimiser step shared by every trainer (DDP-aware through accelerate)."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()
    return loss.item()


def maybe_checkpoint(checkpoint_dir: Path | None, acc, done: int, every: int, stop_after: int | None = None,
                     **state) -> None:
    """Save on the main process every `every` steps (and at `stop_after`)."""
    if checkpoint_dir and acc.is_main_process and (done % every == 0 or done == stop_after):
        save_checkpoint(checkpoint_dir, step=done, model=acc.unwrap_model(state.pop("model")), **state)
