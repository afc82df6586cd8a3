"""Benchmark replica pools: judge-free evaluation throughput (prompts per minute) on 1 vs several replicas.

In one run:

- **llama.cpp**: two local ``llama_cpp.server`` processes serving the embedded SmolLM2-135M GGUF (one thread each).
  IFEval prompts answered by the ``base`` system (judge-free), first on one server, then on a pool of both, with
  ``--num-threads`` as ``drpo evaluate`` derives it (4, then 4 per replica); the answers of the two runs are compared
  (llama.cpp's prompt cache can change greedy numerics slightly). Then a failover run: the pool of both, one
  server killed after a few answers; every prompt must still be answered.
- **scripted**: pools of 1, 4 and 16 scripted replicas that answer after 0.2 s (no model, no CPU), the same
  evaluation on more prompts: what the pool machinery (DSPy, litellm's Router, our two providers) lets through.

    python bench/bench_pool.py [--prompts 20] [--max-tokens 64] [--scripted-prompts 160]

Prints a JSON report and writes it to ``bench/results/pool.json``. Ratios matter, not absolute numbers: the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SERVED = "smollm2"
# The stock ``python -m llama_cpp.server``, without repacked weight buffers (their AMX kernels fault on some VMs),
# as tests/test_server_route.py starts it.
LAUNCHER = """
import sys
import llama_cpp.llama_cpp as capi
_default = capi.llama_model_default_params
def _params():
    params = _default()
    params.use_extra_bufts = False
    return params
capi.llama_model_default_params = _params
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--model", str(model), "--model_alias", SERVED, "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False"],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return process, f"http://127.0.0.1:{port}/v1"


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), or 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_eval(lm: Any, prompts: list[dict], max_tokens: int, num_threads: int) -> dict[str, Any]:
    """One judge-free evaluation of the ``base`` system; wall time, prompts per minute, answers, usage."""
    from drpo_dspy.evaluation.runner import evaluate
    from drpo_dspy.evaluation.systems import build_systems

    systems = build_systems("base", base_lm=lm, max_tokens=max_tokens)
    started = time.perf_counter()
    result = evaluate(systems, prompts, judge_lm=None, num_threads=num_threads, write_report=False)
    wall = time.perf_counter() - started
    answers = {row["instruction"]: row.get("answer") for row in result.rows}
    answered = sum(1 for a in answers.values() if a)
    return {"wall_s": round(wall, 2), "prompts": len(prompts), "answered": answered, "num_threads": num_threads,
            "prompts_per_min": round(60 * len(prompts) / wall, 1), "answers": answers,
            "replicas": (result.usage.get("base") or {}).get("replicas"),
            "failures": (result.usage.get("base") or {}).get("failures")}


def server_lm(url: str) -> Any:
    import dspy

    return dspy.LM(f"hosted_vllm/{SERVED}", api_base=url, api_key="none", model_type="text", temperature=0.0,
                   cache=False)


def llama_cpp_part(n_prompts: int, max_tokens: int) -> dict[str, Any]:
    from drpo_dspy.clients.embedded import gguf_path
    from drpo_dspy.clients.pool_inputs import replica_pool
    from drpo_dspy.clients.replica_pool import derived_num_threads
    from drpo_dspy.evaluation.runner import resolve_eval_set

    prompts, _ = resolve_eval_set("ifeval", limit=n_prompts)
    logs = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    servers = [start_server(gguf_path(), logs / f"server{i}.log") for i in range(2)]
    try:
        for process, url in servers:
            wait_ready(process, url)
        single = server_lm(servers[0][1])
        pool = replica_pool([server_lm(url) for _, url in servers], name="bench")
        for lm in (single, pool):
            run_eval(lm, prompts[:2], max_tokens, 2)  # load pages on both servers: not measured
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
        for _ in range(2):  # interleaved, so the machine's load drifts over both alike
            for label, lm in (("one", single), ("two", pool)):
                cpu = [cpu_seconds(process.pid) for process, _ in servers]
                load = os.getloadavg()[0]
                result = run_eval(lm, prompts, max_tokens, derived_num_threads([lm], floor=4))
                result["server_cpu_s"] = [round(cpu_seconds(process.pid) - c, 1) for (process, _), c in
                                          zip(servers, cpu)]
                result["load_before"] = round(load, 2)
                runs[label].append(result)
        one, two = runs["one"][0], runs["two"][0]
        same = sum(1 for q, a in one["answers"].items() if two["answers"].get(q) == a)
        same_one = sum(1 for q, a in one["answers"].items() if runs["one"][1]["answers"].get(q) == a)
        per_min = {label: round(60 * sum(r["prompts"] for r in rs) / sum(r["wall_s"] for r in rs), 1)
                   for label, rs in runs.items()}
        # failover: a fresh pool of both servers, the second killed once the first answers are in
        failover_pool = replica_pool([server_lm(url) for _, url in servers], name="bench-failover")
        killer = threading.Timer(one["wall_s"] / max(1, n_prompts) * 3, stop, args=(servers[1][0],))
        killer.start()
        after = run_eval(failover_pool, prompts, max_tokens, derived_num_threads([failover_pool], floor=4))
        killer.cancel()
        return {
            "servers": "2 x llama_cpp.server, SmolLM2-135M-Instruct Q8 GGUF, --n_threads 1, greedy, "
                       f"{max_tokens} tokens, text completion",
            "one_server": [{k: v for k, v in r.items() if k != "answers"} for r in runs["one"]],
            "two_servers": [{k: v for k, v in r.items() if k != "answers"} for r in runs["two"]],
            "prompts_per_min": per_min,
            "speedup_2_vs_1": round(per_min["two"] / per_min["one"], 2),
            "identical_answers_1_vs_2_servers": f"{same}/{len(prompts)}",
            "identical_share": round(same / len(prompts), 3),
            "identical_answers_1_server_twice": f"{same_one}/{len(prompts)}",
            "one_killed_mid_run": {k: v for k, v in after.items() if k != "answers"},
        }
    finally:
        for process, _ in servers:
            stop(process)


def scripted_part(n_prompts: int, latency: float) -> dict[str, Any]:
    from drpo_dspy.clients.pool_inputs import replica_pool
    from drpo_dspy.clients.replica_pool import derived_num_threads
    from drpo_dspy.evaluation.runner import resolve_eval_set
    from drpo_dspy.testing.scripted_replicas import ScriptedReplicas

    prompts, _ = resolve_eval_set("ifeval", limit=n_prompts)
    rows = {}
    for n in (1, 4, 16):
        replicas = ScriptedReplicas(lambda messages, params: "A short scripted answer.\n<END>", n=n, latency=latency)
        lm = replica_pool(replicas.lms, name=f"scripted-{n}")  # one replica: the plain LM
        result = run_eval(lm, prompts, 64, derived_num_threads([lm], floor=4))
        rows[n] = {k: v for k, v in result.items() if k not in ("answers", "replicas")}
        rows[n]["answered_per_replica"] = [replicas.answered[i] for i in range(n)]
    base = rows[1]["prompts_per_min"]
    return {"latency_s": latency, "pools": rows,
            "speedup_vs_1": {n: round(row["prompts_per_min"] / base, 2) for n, row in rows.items()},
            "ideal_speedup": {n: round(row["num_threads"] / rows[1]["num_threads"], 2) for n, row in rows.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--scripted-prompts", type=int, default=160)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--skip-llama-cpp", action="store_true")
    args = parser.parse_args()
    from drpo_dspy.cli.common import configure_output

    configure_output(False)
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "load_before": os.getloadavg()[0]}}
    report["scripted"] = scripted_part(args.scripted_prompts, args.latency)
    if not args.skip_llama_cpp:
        report["llama_cpp"] = llama_cpp_part(args.prompts, args.max_tokens)
    report["machine"]["load_after"] = os.getloadavg()[0]
    text = json.dumps(report, indent=1, default=str)
    print(text)
    out = ROOT / "bench" / "results" / "pool.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
