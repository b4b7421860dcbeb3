"""Benchmark: our inference server against LeRobot's async-inference PolicyServer and an
openpi-style websocket server, all serving the same LeRobot ACT built from a local config; then a
tiny SmolVLA (config, tokenizer and processor built locally) on our server.

    python -m bench.serving [--duration 10] [--promotions 10]

Measures, per server and for 1 and 8 concurrent robots: round trip p50/p99, throughput, whether
each robot got the chunk computed from its own observation, and the overhead: per request, the
round trip minus the model time the server itself reported for the call that answered it (same
process, same moment). Ours reports it in each answer (`timing.infer_ms`: pre-processing, model and
post-processing of the batch); the openpi-style server in its reply (`server_timing.infer_ms`);
LeRobot's PolicyServer logs it per observation ("Observation N | Total time: X ms": observation
conversion, pre-processing, model, post-processing), read from its log by timestep. The model's own
gain from batching is the same answers' model time at batch 1 against batch 8, in the same run.
For LeRobot, 8 robots are run against 8 servers (its server keeps one pending observation, reset
by each new client) and, for correctness only, against one. Then promote-to-serving latency on our
stack (deploy call -> first answer from the new version, 8 robots running, failed requests
counted), the SmolVLA rows (batched answers checked against single ones), whether the API process
imports torch, and a schemathesis run against the API.
Writes bench/results/serving.md and serving.json ({"command", "date", "figures"}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STATE_DIM, ACTION_DIM, CHUNK = 14, 14, 50
CAMERAS = {"top": (96, 128, 3)}  # wire (H, W, C)
ACT_KWARGS = dict(chunk_size=CHUNK, n_action_steps=CHUNK, dim_model=256, n_heads=4, dim_feedforward=1024,
                  n_encoder_layers=2, n_decoder_layers=1, use_vae=False, pretrained_backbone_weights=None)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_policy(work: Path, promotions: int) -> tuple[Path, list[Path]]:
    """One ACT from config: LeRobot's pretrained folder (for its server) and our artifacts of the
    same weights (one per version to promote)."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from training.policies.lerobot_adapter.export import write_lerobot_artifact

    torch.manual_seed(0)
    h, w, c = CAMERAS["top"]
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
              "observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(c, h, w))}
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))}
    cfg = make_policy_config("act", input_features=inputs, output_features=outputs, device="cpu", **ACT_KWARGS)
    policy = get_policy_class("act")(cfg)
    rng = np.random.default_rng(0)
    stats = {"observation.state": {"mean": rng.normal(size=STATE_DIM), "std": 1 + rng.random(STATE_DIM)},
             "action": {"mean": rng.normal(size=ACTION_DIM), "std": 1 + rng.random(ACTION_DIM)},
             "observation.images.top": {"mean": np.full((3, 1, 1), 0.45), "std": np.full((3, 1, 1), 0.25)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    lerobot_dir = work / "act_lerobot"
    policy.save_pretrained(lerobot_dir)
    pre.save_pretrained(lerobot_dir)
    post.save_pretrained(lerobot_dir)
    artifacts = []
    for i in range(promotions + 1):
        d = work / f"act_artifact_{i}"
        write_lerobot_artifact(d, policy, pre, post, lineage={"run": f"bench-serving-{i}"})
        artifacts.append(d)
    return lerobot_dir, artifacts


def observations(n: int, seed: int, state_dim: int = STATE_DIM, cameras: dict = CAMERAS,
                 instruction: str | None = None) -> list[tuple]:
    """(state, images) per request; with an instruction, (state, images, instruction, seed)."""
    rng = np.random.default_rng(seed)
    obs = [(rng.normal(size=state_dim).astype(np.float32),
            {k: rng.integers(0, 255, hwc, dtype=np.uint8) for k, hwc in cameras.items()}) for _ in range(n)]
    return obs if instruction is None else [(s, im, instruction, 1000 * seed + i) for i, (s, im) in enumerate(obs)]


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if len(xs) else float("nan")


def run_clients(make_client, n_clients: int, duration: float, refs: dict) -> dict:
    """n_clients threads, each its own client and observations, for `duration` seconds."""
    lat: list[list[float]] = [[] for _ in range(n_clients)]
    overhead: list[list[float]] = [[] for _ in range(n_clients)]  # round trip - the server's model time, ms
    model_ms: list[tuple[int, float]] = []  # (batch size, the server's model time) per answer
    ok, wrong, empty, errors = [0] * n_clients, [0] * n_clients, [0] * n_clients, [0] * n_clients
    start = threading.Barrier(n_clients + 1)
    stop = threading.Event()
    batch_sizes: list[int] = []

    def worker(k):
        try:
            client = make_client(k)
            client.act(*refs[k]["obs"][0])  # warm-up
            client.model_ms()
        except Exception:
            start.abort()  # the run fails loudly instead of waiting for this client
            raise
        obs = refs[k]["obs"]
        try:
            start.wait()
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    got = client.act(*obs[i % len(obs)])
                except Exception:
                    errors[k] += 1
                    continue
                rtt = time.perf_counter() - t0
                lat[k].append(rtt)
                m = client.model_ms()  # outside the timed span: LeRobot's is read from its log
                if m is not None:
                    overhead[k].append(rtt * 1e3 - m)
                    model_ms.append((getattr(client, "batch_size", 1), m))
                if getattr(client, "batch_size", None):
                    batch_sizes.append(client.batch_size)
                if got is None:
                    empty[k] += 1
                elif np.allclose(got, refs[k]["chunks"][i % len(obs)], atol=1e-3, rtol=1e-3):
                    ok[k] += 1
                else:
                    wrong[k] += 1
                i += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - t0
    flat = [x for xs in lat for x in xs]
    n = sum(ok) + sum(wrong) + sum(empty)
    out = {"clients": n_clients, "requests": n, "p50_ms": pct(flat, 50), "p99_ms": pct(flat, 99),
           "throughput_per_s": n / elapsed, "own_chunk_rate": sum(ok) / n if n else 0.0,
           "wrong_chunks": sum(wrong), "empty_answers": sum(empty), "errors": sum(errors)}
    if batch_sizes:  # our server says how many requests shared each model call
        out["mean_batch_size"] = float(np.mean(batch_sizes))
    over = [x for xs in overhead for x in xs]
    if over:
        out |= {"overhead_p50_ms": float(np.percentile(over, 50)), "overhead_p99_ms": float(np.percentile(over, 99)),
                "overhead_answers": len(over)}
        out["model_ms_p50"] = float(np.percentile([m for _, m in model_ms], 50))
        for b in (1, n_clients):  # the model time of the calls that answered b requests at once
            ms = [m for size, m in model_ms if size == b]
            if ms:
                out[f"model_ms_p50_batch{b}"] = float(np.percentile(ms, 50))
    return out


class OursHTTP:
    def __init__(self, url, token):
        import httpx

        from services.inference.wire import MSGPACK

        self.http, self.url = httpx.Client(timeout=30), url + "/v1/act"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK}
        self.version, self.infer_ms = None, None

    def act(self, state, images, instruction="", seed=0):
        from services.inference.wire import decode_answer, encode_request

        r = self.http.post(self.url, content=encode_request(state, images, instruction, seed), headers=self.headers)
        r.raise_for_status()
        ans = decode_answer(r.content, binary=True)
        self.version, self.batch_size, self.infer_ms = ans["version"], ans["timing"]["batch_size"], ans["timing"]["infer_ms"]
        return ans["actions"]

    def model_ms(self):
        return self.infer_ms

    def close(self):
        self.http.close()


class OursWS:
    def __init__(self, url, token):
        from websockets.sync.client import connect

        self.ws = connect(url.replace("http", "ws") + "/v1/stream", max_size=None, compression=None,
                          additional_headers={"Authorization": f"Bearer {token}"})

    def act(self, state, images, instruction="", seed=0):
        from services.inference.wire import decode_answer, encode_request

        self.ws.send(encode_request(state, images, instruction, seed))
        ans = decode_answer(self.ws.recv(), binary=True)
        self.batch_size, self.infer_ms = ans["timing"]["batch_size"], ans["timing"]["infer_ms"]
        return ans["actions"]

    def model_ms(self):
        return self.infer_ms

    def close(self):
        self.ws.close()


def stop_all(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Terminate the processes and wait until they are gone (killed after `timeout`)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 400) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port}")


class _Partial(Exception):
    """--servers ours: stop after our server's runs (for quick comparisons; nothing is written)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds per client configuration.")
    ap.add_argument("--promotions", type=int, default=10)
    ap.add_argument("--name", default="serving")
    ap.add_argument("--servers", default="ours,openpi,lerobot", help="Which to run (a partial run writes no headline ratios).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx
    import torch

    from services.inference.runtime import Observation
    from services.inference.runtime_lerobot import LeRobotRuntime
    from services.launch import free_port, start_redis, start_uvicorn
    from services.settings import ServiceSettings
    from bench.serving_peers import LeRobotClient, OpenpiStyleClient, lerobot_server_cmd

    started = time.time()
    load_at_start = "load average %.1f / %.1f / %.1f at the start" % os.getloadavg()  # the machine may be shared
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list = []
    figures: dict = {"torch_threads": torch.get_num_threads(), "act": ACT_KWARGS | {"image": CAMERAS["top"]},
               "batch_company_ms": float(os.environ.get("RECAP_BATCH_COMPANY_MS", "10")),
               "batch_company_share": float(os.environ.get("RECAP_BATCH_COMPANY_SHARE", "0.25"))}
    try:
        log("building the ACT policy from config")
        lerobot_dir, artifacts = build_policy(work, args.promotions)
        ref = LeRobotRuntime("ref", artifacts[0])
        refs = {}
        for k in range(8):
            obs = observations(4, seed=k)
            refs[k] = {"obs": obs, "chunks": [ref.act([Observation(s, im, "", 0)])[0] for s, im in obs]}

        # -- our stack -------------------------------------------------------------------------
        redis = start_redis(work / "redis")
        procs.append(redis)
        settings = ServiceSettings(home=str(work / "home"), redis_url=redis.url)
        env = settings.to_env() | {"RECAP_BOOTSTRAP_ADMIN_TOKEN": "bench-admin"}
        api = start_uvicorn("api", "services.api.app:create_app", work / "logs", env)
        procs.append(api)
        admin = httpx.Client(base_url=api.url, headers={"Authorization": "Bearer bench-admin"}, timeout=60)
        tokens = []
        for k in range(9):
            admin.post("/v1/robots", json={"id": f"arm-{k}"}).raise_for_status()
            tokens.append(admin.post("/v1/tokens", json={"name": f"arm-{k}", "role": "robot",
                                                         "robot_id": f"arm-{k}"}).json()["token"])
        v1 = admin.post("/v1/versions", json={"artifact_dir": str(artifacts[0])}).json()["id"]
        admin.post("/v1/deployments", json={"version": v1}).raise_for_status()
        inf = start_uvicorn("inference", "services.inference.server:create_app", work / "logs", env)
        procs.append(inf)
        while v1 not in httpx.get(inf.url + "/v1/serving").json()["versions"]:
            time.sleep(0.1)
        results = {}
        for name, cls in (("ours_http", OursHTTP), ("ours_ws", OursWS)):
            for n in (1, 8):
                log(f"{name}, {n} robot(s)")
                results[f"{name}_{n}"] = run_clients(lambda k: cls(inf.url, tokens[k]), n, args.duration, refs)

        servers = set(args.servers.split(","))
        if servers == {"ours"}:
            figures["runs"] = results
            raise _Partial()
        # -- openpi-style websocket server -----------------------------------------------------
        port = free_port()
        op = subprocess.Popen([sys.executable, "-m", "bench.serving_peers", "openpi", str(artifacts[0]), str(port)],
                              stdout=open(work / "openpi.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(op)
        wait_port(port, op)
        for n in (1, 8):
            log(f"openpi-style, {n} robot(s)")
            results[f"openpi_style_{n}"] = run_clients(lambda k: OpenpiStyleClient(f"ws://127.0.0.1:{port}"), n,
                                                       args.duration, refs)
        stop_all([op])  # gone before LeRobot's servers are timed

        # -- LeRobot PolicyServer: 1 server, then 8 servers for 8 robots; 8 robots on 1 server ----
        ports = [free_port() for _ in range(8)]
        lr = [subprocess.Popen(lerobot_server_cmd(p), stdout=open(work / f"lerobot-{p}.log", "wb"),
                               stderr=subprocess.STDOUT, cwd=work) for p in ports]  # it writes logs/ in its cwd
        procs.extend(lr)
        for p, pr in zip(ports, lr):
            wait_port(p, pr)
        mk = lambda k, p: LeRobotClient(f"127.0.0.1:{p}", str(lerobot_dir), STATE_DIM, CAMERAS, CHUNK,  # noqa: E731
                                        log_path=work / f"lerobot-{p}.log")
        log("lerobot, 1 robot")
        results["lerobot_1"] = run_clients(lambda k: mk(k, ports[0]), 1, args.duration, refs)
        log("lerobot, 8 robots on 8 servers")
        results["lerobot_8"] = run_clients(lambda k: mk(k, ports[k]), 8, args.duration, refs)
        log("lerobot, 8 robots on 1 server (correctness)")  # timesteps of 8 robots clash in one log: no overhead
        results["lerobot_8_on_1_server"] = run_clients(
            lambda k: LeRobotClient(f"127.0.0.1:{ports[0]}", str(lerobot_dir), STATE_DIM, CAMERAS, CHUNK), 8,
            min(args.duration, 5.0), refs)
        stop_all(lr)  # gone before the promotions are timed (8 servers tearing down would share the cores)
        figures["runs"] = results

        # -- promote to serving, under load from 8 robots ----------------------------------------
        log(f"promote-to-serving x{args.promotions}, 8 robots running")
        stop, fails, seen = threading.Event(), [], {k: [] for k in range(8)}

        def load(k):
            c = OursHTTP(inf.url, tokens[k])
            s, im = refs[k]["obs"][0]
            while not stop.is_set():
                try:
                    c.act(s, im)
                    seen[k].append(int(c.version[1:]))
                except Exception as e:
                    fails.append(repr(e))
            c.close()

        threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        probe = OursHTTP(inf.url, tokens[8])
        promote = []
        for i in range(1, args.promotions + 1):
            vid = admin.post("/v1/versions", json={"artifact_dir": str(artifacts[i])}).json()["id"]
            s, im = refs[0]["obs"][0]
            t0 = time.perf_counter()
            admin.post("/v1/deployments", json={"version": vid}).raise_for_status()
            while True:
                probe.act(s, im)
                if probe.version == vid:
                    break
            promote.append(time.perf_counter() - t0)
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        monotone = all(v == sorted(v) for v in seen.values())
        figures["promote_to_serving_s"] = {"p50": float(np.percentile(promote, 50)),
                                           "p99": float(np.percentile(promote, 99)), "all": promote}
        figures["hot_swap_requests"] = sum(len(v) for v in seen.values())
        figures["hot_swap_versions_monotone_per_robot"] = monotone

        # -- a tiny SmolVLA: prompts of different lengths, per-request seeds, batched --------------
        log("SmolVLA-tiny: building, then 1 and 8 robots")
        from tests.services.test_language_batching import INSTRUCTIONS, smolvla_tiny_artifact
        from tests.services.test_language_batching import IMAGE as SMOL_IMAGE, STATE_DIM as SMOL_STATE

        smol_art = smolvla_tiny_artifact(work / "smolvla")
        smol = LeRobotRuntime("ref-smolvla", smol_art)
        smol_refs = {}
        for k in range(8):
            obs = observations(4, seed=100 + k, state_dim=SMOL_STATE, cameras={"top": SMOL_IMAGE},
                               instruction=INSTRUCTIONS[k])
            smol_refs[k] = {"obs": obs, "chunks": [smol.act([Observation(*o)])[0] for o in obs]}
        batch8 = smol.act([Observation(*smol_refs[k]["obs"][0]) for k in range(8)])
        inproc = float(max(np.abs(batch8[k] - smol_refs[k]["chunks"][0]).max() for k in range(8)))
        vs = admin.post("/v1/versions", json={"artifact_dir": str(smol_art)}).json()["id"]
        admin.post("/v1/deployments", json={"version": vs}).raise_for_status()
        while httpx.get(inf.url + "/v1/serving").json()["fleet_version"] != vs:
            time.sleep(0.1)
        for n in (1, 8):
            results[f"smolvla_http_{n}"] = run_clients(lambda k: OursHTTP(inf.url, tokens[k]), n, args.duration, smol_refs)
        s8 = results["smolvla_http_8"]
        figures["smolvla"] = {"inprocess_batch8_max_abs_diff": inproc, "instructions": INSTRUCTIONS,
                              "served_batch8_own_chunk_rate": s8["own_chunk_rate"],
                              "served_mean_batch_size": s8.get("mean_batch_size", 0.0)}

        figures["api_imports_torch"], figures["api_imports_torch_source"] = api_imports_torch()

        # -- schemathesis against the API ------------------------------------------------------
        log("schemathesis against the API")
        from tests.services.test_schemathesis import run_schemathesis

        token = admin.post("/v1/tokens", json={"name": "bench-fuzz-0001", "role": "admin"}).json()["token"]
        st = run_schemathesis(api.url, token, work / "junit.xml")
        junit = (work / "junit.xml").read_text() if (work / "junit.xml").exists() else ""
        figures["schemathesis"] = {"returncode": st.returncode, "failures": junit.count("<failure")}

        # -- headline figures (every overhead from the model time its own server reported) ----------
        h1, h8, w1, w8 = (results[k] for k in ("ours_http_1", "ours_http_8", "ours_ws_1", "ours_ws_8"))
        def gain(one, eight):  # None when no call of the 8-robot run held all 8 (a loaded machine)
            if "model_ms_p50_batch1" in one and "model_ms_p50_batch8" in eight:
                return 8 * one["model_ms_p50_batch1"] / eight["model_ms_p50_batch8"]
            return None

        model_gain, model_gain_ws = gain(h1, h8), gain(w1, w8)
        ratio = lambda a, b, g: None if g is None else a["throughput_per_s"] / b["throughput_per_s"] / g  # noqa: E731
        smol_gain = gain(results["smolvla_http_1"], results["smolvla_http_8"])
        figures.update({
            "overhead_p99_ms": h1["overhead_p99_ms"],
            "overhead_p99_ms_ws": w1["overhead_p99_ms"],
            "lerobot_overhead_p99_ms": results["lerobot_1"]["overhead_p99_ms"],
            "overhead_p99_ratio_vs_lerobot": h1["overhead_p99_ms"] / results["lerobot_1"]["overhead_p99_ms"],
            "overhead_p99_ratio_vs_lerobot_ws": w1["overhead_p99_ms"] / results["lerobot_1"]["overhead_p99_ms"],
            "batch8_throughput_ratio": h8["throughput_per_s"] / h1["throughput_per_s"],
            "batch8_throughput_ratio_ws": w8["throughput_per_s"] / w1["throughput_per_s"],
            # the model's own gain from batch 1 to 8: 8 x its batch-1 time / its batch-8 time, as the server timed them
            "batch8_model_gain": model_gain,
            "batch8_model_gain_ws": model_gain_ws,
            "batch8_ratio_of_ceiling": ratio(h8, h1, model_gain),
            "batch8_ratio_of_ceiling_ws": ratio(w8, w1, model_gain_ws),
            "throughput_8_ratio_vs_lerobot_8_servers": h8["throughput_per_s"] / results["lerobot_8"]["throughput_per_s"],
            "smolvla_overhead_p99_ms": results["smolvla_http_1"]["overhead_p99_ms"],
            "smolvla_batch8_ratio_of_ceiling": ratio(results["smolvla_http_8"], results["smolvla_http_1"], smol_gain),
            # the benchmark's own check: served batches of ~8 and the in-process batch equal single answers
            "smolvla_batch_equals_single": bool(figures["smolvla"]["inprocess_batch8_max_abs_diff"] <= 1e-4
                                                and figures["smolvla"]["served_batch8_own_chunk_rate"] == 1.0
                                                and figures["smolvla"]["served_mean_batch_size"] > 1.5),
            "promote_to_serving_p99_s": figures["promote_to_serving_s"]["p99"],
            "hot_swap_failed_requests": len(fails),
            "schemathesis_5xx": figures["schemathesis"]["failures"] + (1 if st.returncode else 0),
            "elapsed_s": time.time() - started,
        })
    except _Partial:
        print(json.dumps({k: {m: round(v[m], 2) for m in ("p50_ms", "p99_ms", "overhead_p50_ms", "overhead_p99_ms",
                                                           "throughput_per_s", "mean_batch_size") if m in v}
                          for k, v in results.items()}, indent=1))
        return
    finally:
        for p in procs:
            try:
                p.stop() if hasattr(p, "stop") else (p.terminate(), p.wait(10))
            except Exception:
                pass
        shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench.serving " + " ".join(sys.argv[1:])
    out = {"command": command.strip(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{os.cpu_count()} cores", "load": load_at_start, "figures": figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{args.name}.md").write_text(render(out))
    print(render(out))


def api_imports_torch() -> tuple[bool, str]:
    """Does importing the API app pull in torch? bench/api_footprint.py's figure where it has run,
    else measured here in a fresh interpreter."""
    fp = RESULTS / "api_footprint.json"
    if fp.exists():
        f = json.loads(fp.read_text()).get("figures", {})
        if "api_imports_torch" in f:
            return bool(f["api_imports_torch"]), "bench/results/api_footprint.json"
    code = "import sys, services.api.app; print(int('torch' in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=os.environ | {"PYTHONPATH": str(ROOT)})
    return r.stdout.strip().endswith("1"), "python -c 'import services.api.app' and sys.modules"


def render(out: dict) -> str:
    f = out["figures"]

    def ms(r, k):
        return f"{r[k]:.1f}" if k in r else "-"

    rows = ["| server | robots | p50 ms | p99 ms | server model ms p50 | overhead p50 / p99 ms | answers/s | own chunk "
            "| mean batch | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in f["runs"].items():
        b = r["clients"]
        model = r.get("model_ms_p50")
        rows.append(f"| {k.rsplit('_', 1)[0] if not k.endswith('server') else 'lerobot (8 on 1 server)'} | "
                    f"{b} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {'-' if model is None else '%.1f' % model} | "
                    f"{ms(r, 'overhead_p50_ms')} / {ms(r, 'overhead_p99_ms')} | {r['throughput_per_s']:.1f} | "
                    f"{100 * r['own_chunk_rate']:.0f}% | "
                    f"{'%.1f' % r['mean_batch_size'] if 'mean_batch_size' in r else '-'} | "
                    f"{r['errors'] + r['empty_answers']} |")
    heads = {k: f[k] for k in ["overhead_p99_ms", "overhead_p99_ms_ws", "lerobot_overhead_p99_ms",
                               "overhead_p99_ratio_vs_lerobot", "overhead_p99_ratio_vs_lerobot_ws",
                               "batch8_throughput_ratio", "batch8_throughput_ratio_ws", "batch8_model_gain",
                               "batch8_model_gain_ws", "batch8_ratio_of_ceiling", "batch8_ratio_of_ceiling_ws",
                               "throughput_8_ratio_vs_lerobot_8_servers", "smolvla_overhead_p99_ms",
                               "smolvla_batch8_ratio_of_ceiling", "smolvla_batch_equals_single", "api_imports_torch",
                               "promote_to_serving_p99_s", "hot_swap_failed_requests", "schemathesis_5xx"] if k in f}
    smol = f.get("smolvla", {})
    return "\n".join([
        "# Serving: our inference server vs LeRobot's PolicyServer and an openpi-style server", "",
        f"Command: `{out['command']}` — {out['date']} — {out['machine']}, {out.get('load', '')}. Same ACT (from config: "
        f"{json.dumps(f['act'])}) behind every server; the smolvla rows serve a tiny SmolVLA (config, tokenizer and "
        "processor built locally) on our server, each robot with its own instruction and seeds. "
        "Overhead = per request, the round trip minus the model time the answering server reported for that very "
        "call (ours and the openpi-style server: in the answer, pre-processing + model + post-processing of the batch; "
        "LeRobot's PolicyServer: its log line 'Observation N | Total time', observation conversion + pre-processing + "
        "model + post-processing, matched by timestep). 'server model ms' = that reported time at the run's batch size. "
        "8 LeRobot robots run against 8 LeRobot servers; 'own chunk' = the answer equals the chunk computed in process "
        "from the robot's own observation (and seed) alone; 'mean batch' = requests per model call as our server "
        "reports them (micro-batching waits for the robots of the previous call that ask again within "
        f"max({f.get('batch_company_ms', 0)} ms, {f.get('batch_company_share', 0)} x that call's model time), "
        "RECAP_BATCH_COMPANY_MS and RECAP_BATCH_COMPANY_SHARE).", "",
        *rows, "",
        f"Promote to serving (deploy call -> first answer from the new version, 8 robots running): "
        f"p50 {f['promote_to_serving_s']['p50']:.2f} s, p99 {f['promote_to_serving_s']['p99']:.2f} s over "
        f"{len(f['promote_to_serving_s']['all'])} promotions; {f['hot_swap_requests']} requests during them, "
        f"{f['hot_swap_failed_requests']} failed, versions monotone per robot: {f['hot_swap_versions_monotone_per_robot']}.", "",
        f"SmolVLA-tiny batching check: a batch of 8 in process differs from the 8 single answers by at most "
        f"{smol.get('inprocess_batch8_max_abs_diff', float('nan')):.2e}; served to 8 robots in batches of "
        f"{smol.get('served_mean_batch_size', 0):.1f}, {100 * smol.get('served_batch8_own_chunk_rate', 0):.0f}% of "
        "answers equal the single-request chunk (atol 1e-3). API process imports torch: "
        f"{f.get('api_imports_torch')} ({f.get('api_imports_torch_source', '-')}).", "",
        "## Headline figures", "", *[f"- `{k}`: {v:.3f}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in heads.items()],
        "", "Targets: `overhead_p99_ratio_vs_lerobot` <= 0.34; `batch8_ratio_of_ceiling` >= 0.9 (8-robot throughput "
        "over one robot's, divided by `batch8_model_gain`: 8 x the model time of a batch-1 call / that of a batch-8 "
        "call, both as the server timed them in this run); `smolvla_batch_equals_single` true; `api_imports_torch` "
        "false; promote-to-serving p99 <= 2 s; 0 failed requests during swaps; no 5xx under schemathesis.", ""])


if __name__ == "__main__":
    main()
