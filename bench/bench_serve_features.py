"""Benchmark ``drpo serve``'s overhead for tool and structured-output requests, against a direct litellm call.

In one run, sequential requests interleaved one by one (so load drift affects every path alike):

- a scripted upstream with a fixed latency (an OpenAI-compatible app on loopback that sleeps ``--latency-ms``, then
  answers a tool request with a tool call and a ``json_schema`` request with JSON), called directly by litellm with
  exactly the messages the server would send, and through ``drpo serve`` (programs with k=2 MiniLM retrieval and
  k=0): a tools request and a json_schema request;
- the embedded model (SmolLM2-135M, llama.cpp grammar) answering a json_schema request: litellm in this process
  with the server's exact messages, versus a ``drpo serve`` process on the same model.

Reported: p50/p99 per path, the server's overhead (served minus direct) and the ratio served / direct, all measured
in the same run. Results go to ``bench/results/serve_features.json``.

    python bench/bench_serve_features.py [--requests 100] [--embedded-requests 15] [--latency-ms 50]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# Bounded strings: the grammar ends every answer well within --max-tokens, so each one is whole JSON.
SCHEMA = {"type": "object", "properties": {"topic": {"type": "string", "maxLength": 30},
                                           "advice": {"type": "string", "maxLength": 60}},
          "required": ["topic", "advice"]}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "advice", "schema": SCHEMA}}
EMBEDDED = "embedded/smollm2-135m"
EMBEDDED_WARMUP = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def upstream_app(latency: float) -> Any:
    """Answers after ``latency`` seconds: a tool call when tools are offered, else a fixed JSON answer."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Any) -> JSONResponse:
        body = await request.json()
        await asyncio.sleep(latency)
        message: dict[str, Any] = {"role": "assistant", "content": json.dumps({"topic": "tea", "advice": "Steep."})}
        finish = "stop"
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        return JSONResponse({"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
                             "model": body.get("model"), "choices": [{"index": 0, "finish_reason": finish,
                                                                       "message": message}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

    async def health(_request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)])


def run_upstream(port: int, latency: float) -> None:
    _quiet()
    import uvicorn

    uvicorn.run(upstream_app(latency), host="127.0.0.1", port=port, log_level="error", access_log=False)


def run_server(port: int, programs: dict[str, str], base_model: str, api_base: str | None) -> None:
    _quiet()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import logging

    import litellm
    import uvicorn

    from drpo_dspy.serve import ProgramRegistry, ProgramSpec, ServeSettings, create_app

    litellm.suppress_debug_info = True
    logging.getLogger("drpo_dspy.serve").setLevel(logging.INFO)  # access log on, as with `drpo serve`
    settings = ServeSettings(base_model=base_model, base_api_base=api_base, base_api_key="bench-no-key" if api_base
                             else None, reload_interval=0, port=port)
    registry = ProgramRegistry([ProgramSpec(name, Path(path)) for name, path in programs.items()])
    registry.load_all()
    uvicorn.run(create_app(settings, registry), host="127.0.0.1", port=port, log_level="error", access_log=False)


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50": round(percentile(ms, 50), 2), "p99": round(percentile(ms, 99), 2),
            "mean": round(statistics.fmean(ms), 2), "n": len(ms)}


def interleaved(paths: dict[str, Callable[[int], Any]], n: int, warmup: int) -> dict[str, dict[str, float]]:
    """Each path called ``warmup + n`` times, one call of each in turn (a call raises on a wrong answer)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(warmup + n):
        for name, call in paths.items():
            started = time.perf_counter()
            call(i)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: summary(values) for name, values in times.items()}


def compare(latency: dict[str, dict[str, float]], direct: str) -> dict[str, dict[str, float]]:
    """Overhead (ms) and ratio of every served path over its direct one."""
    base = latency[direct]
    return {name: {"overhead_p50_ms": round(stats["p50"] - base["p50"], 2),
                   "ratio_p50": round(stats["p50"] / base["p50"], 3),
                   "ratio_mean": round(stats["mean"] / base["mean"], 3)}
            for name, stats in latency.items() if name != direct}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per scripted path")
    parser.add_argument("--embedded-requests", type=int, default=15, help="sequential requests per embedded path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the scripted upstream's fixed latency")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer cap of the embedded json_schema requests")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "serve_features.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from drpo_dspy import AlignedResponder
    from drpo_dspy.clients.embedded import register_embedded_provider
    from drpo_dspy.datasets import load_train_queries
    from drpo_dspy.serve.plain_layout import plain_messages, prompt_conversation

    litellm.suppress_debug_info = True
    base = load_train_queries(limit=50)
    counts = {"tools": args.warmup + args.requests, "json": args.warmup + args.requests,
              "embedded": EMBEDDED_WARMUP + args.embedded_requests}
    # every request asks a query of its own (a numbered variant), so no query-embedding cache hides retrieval
    queries = {group: [f"{base[i % len(base)]} (request {group} {i})" for i in range(count)]
               for group, count in counts.items()}
    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        programs = {"aligned-k2": str(Path(tmp) / "k2.json"), "aligned-k0": str(Path(tmp) / "k0.json")}
        AlignedResponder(k=2).save(programs["aligned-k2"])
        AlignedResponder(examples=[], k=0).save(programs["aligned-k0"])
        loaded = {}
        for name, path in programs.items():
            loaded[name] = AlignedResponder(examples=[], k=0)
            loaded[name].load(path)
        # what the server sends upstream for each query, built here once: the direct calls send the same
        sent = {(group, name): [plain_messages(program, prompt_conversation(q)) for q in asked]
                for group, asked in queries.items() for name, program in loaded.items()}
        ports = {"upstream": free_port(), "scripted": free_port(), "embedded": free_port()}
        upstream_base = f"http://127.0.0.1:{ports['upstream']}/v1"
        children = [
            context.Process(target=run_upstream, args=(ports["upstream"], args.latency_ms / 1000), daemon=True),
            context.Process(target=run_server, args=(ports["scripted"], programs, "openai/fixed-latency",
                                                     upstream_base), daemon=True),
            context.Process(target=run_server, args=(ports["embedded"], programs, EMBEDDED, None), daemon=True)]
        for child in children:
            child.start()
        try:
            for port in ports.values():
                wait_ready(f"http://127.0.0.1:{port}/health")
            direct = {"api_base": upstream_base, "api_key": "bench-no-key", "model": "openai/fixed-latency"}

            def served(server: str, program: str) -> dict[str, Any]:
                return {"api_base": f"http://127.0.0.1:{ports[server]}/v1", "api_key": "none",
                        "model": f"openai/{program}"}

            def user(group: str, i: int) -> list[dict[str, str]]:
                return [{"role": "user", "content": queries[group][i]}]

            def tool_call(options: dict[str, Any], messages: list[dict[str, Any]]) -> None:
                response = litellm.completion(messages=messages, tools=TOOLS, **options)
                assert response.choices[0].message.tool_calls[0].function.name == "get_weather"

            def json_call(options: dict[str, Any], messages: list[dict[str, Any]], **extra: Any) -> None:
                response = litellm.completion(messages=messages, response_format=JSON_FORMAT, **options, **extra)
                # strict JSON from the server; the embedded model alone may leave a raw newline inside a string
                strict = options["model"] != EMBEDDED
                answer = json.loads(response.choices[0].message.content, strict=strict)
                assert set(SCHEMA["required"]) <= set(answer)

            started = time.perf_counter()
            tools = interleaved({
                "direct": lambda i: tool_call(direct, sent["tools", "aligned-k2"][i]),
                "served k=2": lambda i: tool_call(served("scripted", "aligned-k2"), user("tools", i)),
                "served k=0": lambda i: tool_call(served("scripted", "aligned-k0"), user("tools", i))},
                args.requests, args.warmup)
            schema = interleaved({
                "direct": lambda i: json_call(direct, sent["json", "aligned-k2"][i]),
                "served k=2": lambda i: json_call(served("scripted", "aligned-k2"), user("json", i)),
                "served k=0": lambda i: json_call(served("scripted", "aligned-k0"), user("json", i))},
                args.requests, args.warmup)
            register_embedded_provider()
            greedy = {"temperature": 0, "max_tokens": args.max_tokens}
            own = {"model": EMBEDDED}
            embedded = interleaved({
                "direct k=2": lambda i: json_call(own, sent["embedded", "aligned-k2"][i], **greedy),
                "served k=2": lambda i: json_call(served("embedded", "aligned-k2"), user("embedded", i), **greedy),
                "direct k=0": lambda i: json_call(own, sent["embedded", "aligned-k0"][i], **greedy),
                "served k=0": lambda i: json_call(served("embedded", "aligned-k0"), user("embedded", i), **greedy)},
                args.embedded_requests, EMBEDDED_WARMUP)
            total = time.perf_counter() - started
        finally:
            for child in children:
                child.terminate()
                child.join(timeout=10)
    results = {
        "tools (scripted upstream)": {"latency_ms": tools, "vs_direct": compare(tools, "direct")},
        "json_schema (scripted upstream)": {"latency_ms": schema, "vs_direct": compare(schema, "direct")},
        "json_schema (embedded model)": {"latency_ms": embedded, "vs_direct": {
            **compare({k: v for k, v in embedded.items() if k.endswith("k=2")}, "direct k=2"),
            **compare({k: v for k, v in embedded.items() if k.endswith("k=0")}, "direct k=0")}},
    }
    lines = ["| request | path | p50 ms | p99 ms | served / direct (p50) | overhead p50 ms |",
             "|---|---|---:|---:|---:|---:|"]
    for request, block in results.items():
        for path, stats in block["latency_ms"].items():
            versus = block["vs_direct"].get(path)
            ratio = f"{versus['ratio_p50']:.2f}" if versus else "1 (direct)"
            extra = f"+{versus['overhead_p50_ms']:.1f}" if versus else ""
            lines.append(f"| {request} | {path} | {stats['p50']:.1f} | {stats['p99']:.1f} | {ratio} | {extra} |")
    table = "\n".join(lines)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}}
    config = {"requests": args.requests, "embedded_requests": args.embedded_requests, "warmup": args.warmup,
              "latency_ms": args.latency_ms, "max_tokens": args.max_tokens,
              "queries": "the first 50 training queries, numbered: every request's query is new",
              "client": "litellm.completion, sequential, paths interleaved",
              "direct": "litellm to the same upstream with the exact messages the server sends (plain layout, k=2)",
              "programs": {"k2": "built-in seed bank, default MiniLM embedder", "k0": "no retrieval"}}
    print(table)
    print(f"\nmeasured in {total:.0f}s on {machine['cpus']} CPUs; load average {machine['load_average_1min']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "machine": machine, "results": results, "markdown": table,
                                    "seconds": round(total, 1)}, indent=1), encoding="utf-8")
    print(f"wrote {args.out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
