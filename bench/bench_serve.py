"""Benchmark ``drpo serve``: its latency overhead over calling the base model directly, and its throughput.

Three processes on loopback only: a scripted fast upstream (an OpenAI-compatible app that answers every chat
completion at once with a fixed DRPO-layout answer), the DRPO server in front of it (base model
``openai/fast-upstream`` at the upstream's address, through litellm), and this client. In one run:

- latency, sequential requests interleaved one by one: direct to the upstream, through the server with a program
  that retrieves k=2 examples (the built-in seed bank, the default MiniLM embedder), and through the server with a
  k=0 program (no retrieval) -- p50/p99 and the server's overhead (served minus direct);
- throughput with 1, 8 and 32 concurrent clients, a fixed number of requests per level (bounded loops), direct
  and through the server (k=2 and k=0).

And streaming on the embedded route: a second server with the embedded model as its base (``embedded/smollm2-135m``,
a k=0 program) answers a query that yields a long answer (greedy, max_tokens 200), streamed (time to the first
content chunk, time to the end of the stream, content chunks) and not streamed (time to the full answer).

    python bench/bench_serve.py [--requests 300] [--throughput-requests 256] [--stream-runs 5]
    python bench/bench_serve.py --only embedded-stream   # just the streaming part, merged into the results file
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANNED = "<START>\nA fixed answer from the scripted upstream.\n<END>"
CONCURRENCY = (1, 8, 32)
EMBEDDED_BASE = "embedded/smollm2-135m"
LONG_QUERY = ("Explain in detail how the water cycle works, covering evaporation, condensation, precipitation and "
              "collection.")
STREAM_MAX_TOKENS = 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def upstream_app() -> Any:
    """The scripted fast upstream: every chat completion is answered at once with ``CANNED``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Any) -> JSONResponse:
        body = await request.json()
        return JSONResponse({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fast-upstream"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": CANNED}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

    async def health(_request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])


def run_upstream(port: int) -> None:
    _quiet()
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="error", access_log=False)


def run_server(port: int, programs: dict[str, str], upstream_port: int) -> None:
    _quiet()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import logging

    import litellm
    import uvicorn

    from drpo_dspy.serve import ProgramRegistry, ProgramSpec, ServeSettings, create_app

    litellm.suppress_debug_info = True
    logging.getLogger("drpo_dspy.serve").setLevel(logging.INFO)  # access log on, as with `drpo serve`
    settings = ServeSettings(base_model="openai/fast-upstream", base_api_base=f"http://127.0.0.1:{upstream_port}/v1",
                             base_api_key="bench-no-key", reload_interval=0, port=port)
    registry = ProgramRegistry([ProgramSpec(name, Path(path)) for name, path in programs.items()])
    registry.load_all()
    uvicorn.run(create_app(settings, registry), host="127.0.0.1", port=port, log_level="error", access_log=False)


def run_embedded_server(port: int, program: str) -> None:
    _quiet()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    import uvicorn

    from drpo_dspy.serve import ProgramRegistry, ProgramSpec, ServeSettings, create_app

    litellm.suppress_debug_info = True
    registry = ProgramRegistry([ProgramSpec("aligned-embedded", Path(program))])
    registry.load_all()
    settings = ServeSettings(base_model=EMBEDDED_BASE, reload_interval=0, port=port)
    uvicorn.run(create_app(settings, registry), host="127.0.0.1", port=port, log_level="error", access_log=False)


def wait_ready(url: str, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50": round(percentile(ms, 50), 3), "p99": round(percentile(ms, 99), 3),
            "mean": round(statistics.fmean(ms), 3), "n": len(ms)}


def body_for(model: str, query: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": query}], "max_tokens": 64, "temperature": 0}


def measure_latency(targets: dict[str, tuple[str, str]], queries: list[str], n: int, warmup: int
                    ) -> dict[str, list[float]]:
    """Sequential requests, interleaved across targets so drift affects them alike."""
    import httpx

    times: dict[str, list[float]] = {name: [] for name in targets}
    with httpx.Client(timeout=30) as client:
        for i in range(warmup + n):
            for name, (url, model) in targets.items():
                started = time.perf_counter()
                response = client.post(url, json=body_for(model, queries[i % len(queries)]))
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if i >= warmup:
                    times[name].append(elapsed)
    return times


async def _throughput(url: str, model: str, queries: list[str], clients: int, total: int) -> dict[str, float]:
    import httpx

    per_client = total // clients
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(offset: int) -> None:
            for i in range(per_client):
                started = time.perf_counter()
                response = await client.post(url, json=body_for(model, queries[(offset + i) % len(queries)]))
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:  # counted and reported, not hidden and not fatal
                    errors.append(f"{response.status_code}: {response.text[:300]}")

        await asyncio.gather(*(worker(c * 7) for c in range(min(clients, 4))))  # warm the connections
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(c * 7) for c in range(clients)))
        wall = time.perf_counter() - started
    return {"requests": per_client * clients, "seconds": round(wall, 3),
            "requests_per_s": round(per_client * clients / wall, 1), "latency_ms": summary(latencies),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def _stream_once(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed request: seconds to the first content chunk and to the end, content chunks, usage."""
    started = time.perf_counter()
    first, chunks, text, usage = None, 0, [], None
    with client.stream("POST", url, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            content = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if content:
                first = first if first is not None else time.perf_counter() - started
                chunks += 1
                text.append(content)
    return {"first": first, "end": time.perf_counter() - started, "chunks": chunks, "text": "".join(text),
            "completion_tokens": (usage or {}).get("completion_tokens")}


def measure_embedded_stream(url: str, runs: int, warmup: int = 1) -> dict[str, Any]:
    """Streamed and plain requests for a long answer, interleaved; medians over ``runs``."""
    import httpx

    body = {"model": "aligned-embedded", "messages": [{"role": "user", "content": LONG_QUERY}],
            "max_tokens": STREAM_MAX_TOKENS, "temperature": 0}
    streamed, plain, answer = [], [], None
    with httpx.Client(timeout=300) as client:
        for i in range(warmup + runs):
            one = _stream_once(client, url, body)
            started = time.perf_counter()
            response = client.post(url, json=body).raise_for_status()
            elapsed, answer = time.perf_counter() - started, response.json()["choices"][0]["message"]["content"]
            if one["text"] != answer:
                raise RuntimeError("the streamed answer differs from the non-streamed one")
            if i >= warmup:
                streamed.append(one)
                plain.append(elapsed)
    first = statistics.median(s["first"] for s in streamed)
    end = statistics.median(s["end"] for s in streamed)
    return {"runs": runs, "max_tokens": STREAM_MAX_TOKENS, "query": LONG_QUERY,
            "completion_tokens": streamed[-1]["completion_tokens"], "answer_chars": len(answer or ""),
            "content_chunks": statistics.median(s["chunks"] for s in streamed),
            "first_chunk_s": round(first, 3), "stream_end_s": round(end, 3),
            "full_answer_s": round(statistics.median(plain), 3),
            "first_over_full": round(first / statistics.median(plain), 3),
            "first_chunk_s_all": [round(s["first"], 3) for s in streamed],
            "full_answer_s_all": [round(p, 3) for p in plain]}


def stream_markdown(stream: dict[str, Any]) -> str:
    return "\n".join([
        "| embedded route, streamed (~200-token answer) | median |", "|---|---:|",
        f"| time to first content chunk | {stream['first_chunk_s']:.2f} s |",
        f"| time to end of stream | {stream['stream_end_s']:.2f} s |",
        f"| time to full answer, not streamed | {stream['full_answer_s']:.2f} s |",
        f"| first chunk / full answer | {stream['first_over_full']:.3f} |",
        f"| content chunks (completion tokens) | {stream['content_chunks']:.0f} ({stream['completion_tokens']}) |"])


def run_embedded_stream(runs: int) -> dict[str, Any]:
    """The streaming measurement against its own server process (embedded base model)."""
    from drpo_dspy import AlignedResponder

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        program = str(Path(tmp) / "embedded-k0.json")
        AlignedResponder(examples=[], k=0).save(program)
        port = free_port()
        child = context.Process(target=run_embedded_server, args=(port, program), daemon=True)
        child.start()
        try:
            wait_ready(f"http://127.0.0.1:{port}/health")
            return measure_embedded_stream(f"http://127.0.0.1:{port}/v1/chat/completions", runs)
        finally:
            child.terminate()
            child.join(timeout=10)


def markdown(latency: dict[str, dict[str, float]], overhead: dict[str, dict[str, float]],
             throughput: dict[str, dict[str, Any]]) -> str:
    lines = ["| path | p50 ms | p99 ms |", "|---|---:|---:|"]
    for name, stats in latency.items():
        lines.append(f"| {name} | {stats['p50']:.2f} | {stats['p99']:.2f} |")
    for name, stats in overhead.items():
        lines.append(f"| overhead, {name} | +{stats['p50']:.2f} | +{stats['p99']:.2f} |")
    retrieval = {q: overhead["k=2"][q] - overhead["k=0"][q] for q in ("p50", "p99")}
    lines.append(f"| of which retrieval (k=2 minus k=0) | {retrieval['p50']:.2f} | {retrieval['p99']:.2f} |")
    lines += ["", "| concurrent clients | direct req/s | served k=2 req/s (p50 ms) | served k=0 req/s (p50 ms) |",
              "|---:|---:|---:|---:|"]
    for clients, row in throughput.items():
        cells = [f"{row[name]['requests_per_s']:.0f} ({row[name]['latency_ms']['p50']:.0f})"
                 for name in ("served k=2", "served k=0")]
        lines.append(f"| {clients} | {row['direct']['requests_per_s']:.0f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per path (latency)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--throughput-requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="client counts, comma-separated")
    parser.add_argument("--stream-runs", type=int, default=5, help="streamed requests on the embedded route")
    parser.add_argument("--only", choices=("all", "embedded-stream"), default="all",
                        help="embedded-stream: measure only streaming and merge it into the results file")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "serve.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.only == "embedded-stream":
        return _only_embedded_stream(args)
    from drpo_dspy import AlignedResponder
    from drpo_dspy.datasets import load_train_queries

    queries = load_train_queries(limit=50)
    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        programs = {"aligned-k2": str(Path(tmp) / "k2.json"), "aligned-k0": str(Path(tmp) / "k0.json")}
        AlignedResponder(k=2).save(programs["aligned-k2"])
        AlignedResponder(examples=[], k=0).save(programs["aligned-k0"])
        upstream_port, server_port = free_port(), free_port()
        children = [context.Process(target=run_upstream, args=(upstream_port,), daemon=True),
                    context.Process(target=run_server, args=(server_port, programs, upstream_port), daemon=True)]
        for child in children:
            child.start()
        try:
            wait_ready(f"http://127.0.0.1:{upstream_port}/health")
            wait_ready(f"http://127.0.0.1:{server_port}/health")
            direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            served = f"http://127.0.0.1:{server_port}/v1/chat/completions"
            started = time.perf_counter()
            times = measure_latency({"direct": (direct, "fast-upstream"), "served k=2": (served, "aligned-k2"),
                                     "served k=0": (served, "aligned-k0")}, queries, args.requests, args.warmup)
            latency = {name: summary(values) for name, values in times.items()}
            overhead = {name.removeprefix("served "): {q: round(latency[name][q] - latency["direct"][q], 3)
                                                       for q in ("p50", "p99")}
                        for name in latency if name != "direct"}
            throughput: dict[str, dict[str, Any]] = {}
            levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
            for clients in levels:
                row = {name: asyncio.run(_throughput(url, model, queries, clients, args.throughput_requests))
                       for name, (url, model) in (("direct", (direct, "fast-upstream")),
                                                  ("served k=2", (served, "aligned-k2")),
                                                  ("served k=0", (served, "aligned-k0")))}
                for name in ("served k=2", "served k=0"):
                    row[name]["over_direct"] = round(row[name]["requests_per_s"] / row["direct"]["requests_per_s"], 3)
                throughput[str(clients)] = row
            total = time.perf_counter() - started
        finally:
            for child in children:
                child.terminate()
                child.join(timeout=10)
    stream = run_embedded_stream(args.stream_runs) if args.stream_runs > 0 else None
    import fastapi
    import litellm
    import uvicorn

    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
               "litellm": getattr(litellm, "__version__", None) or _dist_version("litellm"),
               "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}}
    config = {"requests": args.requests, "warmup": args.warmup, "throughput_requests": args.throughput_requests,
              "concurrency": levels, "upstream": "scripted OpenAI-compatible app on loopback, instant",
              "base_model": "openai/fast-upstream via litellm", "queries": "first 50 bundled training queries",
              "programs": {"k2": "built-in seed bank (16 examples), default MiniLM embedder", "k0": "no retrieval"}}
    table = markdown(latency, overhead, throughput)
    if stream is not None:
        table += "\n\n" + stream_markdown(stream)
    print(table)
    print(f"\nmeasured in {total:.0f}s on {machine['cpus']} CPUs (client, server and upstream share them); "
          f"load average {machine['load_average_1min']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "machine": machine, "latency_ms": latency,
                                    "overhead_ms": overhead, "throughput": throughput,
                                    "embedded_stream": stream, "markdown": table,
                                    "seconds": round(total, 1)}, indent=1), encoding="utf-8")
    print(f"wrote {args.out.name}")
    return 0


def _only_embedded_stream(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    stream = run_embedded_stream(args.stream_runs)
    stream["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    table = stream_markdown(stream)
    print(table)
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    results["embedded_stream"] = stream
    results["markdown"] = results.get("markdown", "").split("\n\n| embedded route")[0] + "\n\n" + table
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {args.out.name} (embedded_stream merged)")
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
