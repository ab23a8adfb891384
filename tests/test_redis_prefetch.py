"""Prefetched holds (``RedisLedger(prefetch=N)``) on a real Redis: fewer round trips, the same books.

Round trips are counted on the client socket (one per packet written), as the
benchmarks do. Every test checks the ledger's books against the meters' own
counts after the fact: nothing may be lost, counted twice, or left held.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from redis_server import CountingConnection, counting_client

from budget_plugins import (
    AsyncRedisLedger,
    Budget,
    BudgetCallbackHandler,
    BudgetConfigError,
    BudgetExceeded,
    Ceiling,
    Meter,
    RedisLedger,
    Scope,
    TokenUsage,
    ledger_from_url,
)
from budget_plugins.testing import ScriptedChatModel, Turn, counting_tool, scripted_model

CTX = multiprocessing.get_context("fork")
USD = 1_000_000
MODEL = "gpt-4o-mini"  # $0.15 / $0.60 per million input / output tokens


@pytest.fixture(params=["redis", "redis_cluster"])
def any_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


def tenant(name: str) -> Scope:
    return Scope("tenant", name, tenant=name)


def wait_until_settled(ledger: RedisLedger, scope: Scope, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while ledger.snapshot(scope).held and time.monotonic() < deadline:
        time.sleep(0.02)


def call(meter: Meter, output_tokens: int = 50) -> None:
    ticket = meter.before_model_call(model=MODEL, input_tokens=100, max_output_tokens=200)
    meter.after_model_call(ticket, TokenUsage(input_tokens=100, output_tokens=output_tokens))


def test_prefetch_must_be_a_whole_number_of_calls(redis_url: str) -> None:
    for bad in (-1, 2.5, True, "16"):
        with pytest.raises(BudgetConfigError, match="prefetch") as info:
            RedisLedger(redis_url, prefetch=bad)  # type: ignore[arg-type]
        assert info.value.field == "prefetch"
    ledger = ledger_from_url(redis_url, prefetch=16)
    assert isinstance(ledger, RedisLedger)
    assert ledger.prefetch == ledger.as_async().prefetch == 16


def test_an_agent_loop_with_prefetch_costs_a_fraction_of_the_round_trips_and_books_agree(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, client=counting_client(redis_url), namespace=ns(), prefetch=16)
    shared: dict[str, Any] = {"tenant": "acme", "ceilings": [Ceiling(scope="tenant", max_cost_usd="50")]}
    warm = BudgetCallbackHandler(Budget(), ledger=ledger, hooks=[], **shared)
    scripted_model(["hi"], model_name=MODEL).invoke("warm up", {"callbacks": [warm]})  # loads the scripts
    warm.meter.flush()
    script = [Turn("again", tools=[("search", {"query": "q"})])] * 99 + [Turn("done")]
    agent = create_agent(ScriptedChatModel(turns=lambda: iter(script), model_name=MODEL), [counting_tool()])
    handler = BudgetCallbackHandler(Budget(max_model_calls=1000), ledger=ledger, hooks=[], **shared)
    before = CountingConnection.sent
    agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [handler], "recursion_limit": 1000})
    trips = CountingConnection.sent - before
    assert trips <= 100 / 8, trips  # without prefetch: 100, one per model call
    wait_until_settled(ledger, tenant("acme"))
    snap = ledger.snapshot(tenant("acme"))
    used = handler.report()["used"]
    assert snap.held == {}
    assert used["model_calls"] == 100 and snap.used["model_calls"] == 101
    assert snap.used["cost_usd"] == used["cost_usd"] + warm.report()["used"]["cost_usd"] > 0
    ledger.close()


def test_the_unused_part_comes_back_when_the_meter_goes_idle(any_url: str) -> None:
    ledger = RedisLedger(any_url, namespace=ns(), prefetch=16)
    meter = Meter(
        Budget(), ledger=ledger, tenant="acme", ceilings=[Ceiling(scope="tenant", max_cost_usd="10")], hooks=[]
    )
    for _ in range(5):
        call(meter)
    assert ledger.snapshot(tenant("acme")).held  # the prefetched hold is out
    meter.flush(force=False)  # what adapters do when a run ends: the settler sends it soon
    wait_until_settled(ledger, tenant("acme"))
    snap = ledger.snapshot(tenant("acme"))
    assert snap.held == {}
    assert snap.used == {k: v for k, v in meter.usage().used.items() if k != "steps"}
    assert snap.used["model_calls"] == 5


def test_a_refused_prefetch_is_asked_again_for_the_call_alone(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, client=counting_client(redis_url), namespace=ns(), prefetch=16)
    ceiling = Ceiling(scope="tenant", max_model_calls=100)
    meter = Meter(Budget(), ledger=ledger, tenant="acme", ceilings=[ceiling], hooks=[])
    call(meter)  # exact: the room is not known yet; now it is (99 calls)
    other = Meter(Budget(), ledger=ledger, tenant="acme", ceilings=[ceiling], hooks=[])
    for _ in range(98):  # another meter leaves room for exactly one more call...
        call(other)
    other.flush()
    meter.flush()  # ...and this meter's idea of the room (99) is stale
    before = CountingConnection.sent
    call(meter)  # asks for 12 calls' worth, is refused, asks for one: granted
    assert CountingConnection.sent - before == 2
    with pytest.raises(BudgetExceeded, match="model_calls"):
        call(meter)
    meter.flush()
    snap = ledger.snapshot(tenant("acme"))
    assert snap.used["model_calls"] == 100 and snap.held == {}


def _ask_small_then_four(url: str, namespace: str, tenants: list[str], barrier: Any, out: Any) -> None:
    ledger = RedisLedger(url, namespace=namespace, timeout=5.0, prefetch=16)
    wins = []
    for name in tenants:
        meter = Meter(
            Budget(), ledger=ledger, tenant=name, ceilings=[Ceiling(scope="tenant", max_cost_usd="10")], hooks=[]
        )
        for _ in range(5):  # small calls first: from the second on, served from a prefetched hold
            ticket = meter.reserve(_dollars(0.01))
            meter.commit(ticket)
        barrier.wait()
        try:
            ticket = meter.reserve(_dollars(4))
        except BudgetExceeded:
            wins.append(False)
        else:
            meter.commit(ticket)
            wins.append(True)
        meter.flush()
    out.put(wins)


def _dollars(usd: float) -> Any:
    from budget_plugins import Request

    return Request("tool_call", {"tool_calls": 1, "cost_usd": round(usd * USD)}, "paid_api")


def test_five_dollars_left_two_prefetching_processes_ask_four_exactly_one_wins(any_url: str) -> None:
    namespace = ns()
    ledger = RedisLedger(any_url, namespace=namespace)
    tenants = [uuid.uuid4().hex for _ in range(60)]
    for name in tenants:
        limited = Scope("tenant", name, tenant=name, limits={"cost_usd": 10 * USD})
        # $5 left once the two processes made their ten small calls
        ledger.commit(f"earlier-{name}", [limited], {"cost_usd": 5 * USD - 10 * 10_000})
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_ask_small_then_four, args=(any_url, namespace, tenants, barrier, out)) for _ in "ab"]
    for p in procs:
        p.start()
    a, b = (out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert [x + y for x, y in zip(a, b, strict=True)] == [1] * len(tenants)
    for name in tenants[::10]:
        snap = ledger.snapshot(tenant(name))
        assert snap.used == {"cost_usd": 9 * USD, "tool_calls": 11} and snap.held == {}


def test_threads_drawing_at_once_never_overspend_and_every_call_is_booked(any_url: str) -> None:
    ledger = RedisLedger(any_url, namespace=ns(), prefetch=16)
    ceiling = Ceiling(scope="tenant", max_cost_usd="0.25")  # about 1,600 worst-case calls
    meters = [
        Meter(Budget(), ledger=ledger, tenant="acme", ceilings=[ceiling], hooks=[], lease_seconds=30) for _ in range(4)
    ]
    granted = [0] * len(meters)

    def spend(index: int) -> None:
        meter = meters[index]
        while True:
            try:
                call(meter, output_tokens=200)  # actual = worst case: every grant is spent in full
            except BudgetExceeded:
                break
            granted[index] += 1
        meter.flush()

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(len(meters))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    snap = ledger.snapshot(tenant("acme"))
    per_call = meters[0].usage().used["cost_usd"] // granted[0]
    assert snap.held == {}
    assert snap.used["model_calls"] == sum(granted) == sum(m.usage().used["model_calls"] for m in meters)
    assert snap.used["cost_usd"] == sum(m.usage().used["cost_usd"] for m in meters) <= 250_000
    # Near the limit the holds shrink to one call: at most one call's worth per meter is left unused.
    assert snap.used["cost_usd"] > 250_000 - len(meters) * per_call


class CountingAsyncRedisLedger(AsyncRedisLedger):
    reserves = 0

    async def reserve(self, *args: Any, **kwargs: Any) -> Any:
        CountingAsyncRedisLedger.reserves += 1
        return await super().reserve(*args, **kwargs)


class PrefetchingRedisLedger(RedisLedger):
    def as_async(self) -> AsyncRedisLedger:
        return CountingAsyncRedisLedger(_core=self._core, prefetch=self.prefetch)


async def test_an_autogen_tool_loop_on_the_async_door_prefetches_and_books_agree(redis_url: str) -> None:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_core import FunctionCall
    from autogen_core.models import CreateResult, ModelInfo, RequestUsage
    from autogen_core.tools import FunctionTool
    from autogen_ext.models.replay import ReplayChatCompletionClient

    from budget_plugins_autogen import BudgetScope

    ledger = PrefetchingRedisLedger(redis_url, namespace=ns(), prefetch=16)
    scope = BudgetScope(
        Budget(max_model_calls=1000),
        ledger=ledger,
        tenant="acme",
        ceilings=[Ceiling(scope="tenant", max_cost_usd="5")],
        hooks=[],
    )
    usage = RequestUsage(prompt_tokens=100, completion_tokens=20)
    replies = [
        CreateResult(
            finish_reason="function_calls",
            content=[FunctionCall(id=f"call-{i}", name="search", arguments='{"query": "q"}')],
            usage=usage,
            cached=False,
        )
        for i in range(40)
    ]
    info = ModelInfo(vision=False, function_calling=True, json_output=False, family="unknown", structured_output=False)
    model = ReplayChatCompletionClient(
        [*replies, CreateResult(finish_reason="stop", content="done", usage=usage, cached=False)], model_info=info
    )

    def search(query: str) -> str:
        return "nothing new"

    agent = AssistantAgent(
        "researcher",
        model_client=scope.client(model, model=MODEL),
        workbench=scope.workbench([FunctionTool(search, description="Search.")]),
        max_tool_iterations=100,
    )
    before = CountingAsyncRedisLedger.reserves
    await agent.run(task="research budgets")
    assert 1 <= CountingAsyncRedisLedger.reserves - before <= 41 / 8  # without prefetch: 41, one per model call
    await scope.meter.aflush()
    snap = ledger.snapshot(tenant("acme"))
    used = scope.report()["used"]
    assert used["model_calls"] == snap.used["model_calls"] == 41
    assert snap.used["cost_usd"] == used["cost_usd"] > 0 and snap.held == {}


def test_a_call_drawn_late_is_covered_for_a_whole_lease(redis_url: str) -> None:
    ledger = RedisLedger(redis_url, namespace=ns(), prefetch=16)
    ceiling = [Ceiling(scope="tenant", max_cost_usd="1")]
    a = Meter(Budget(), ledger=ledger, tenant="acme", ceilings=ceiling, hooks=[], lease_seconds=1.0)
    b = Meter(Budget(), ledger=ledger, tenant="acme", ceilings=ceiling, hooks=[])
    a.commit(a.reserve(_dollars(0.01)))  # exact: the room is not known yet
    a.commit(a.reserve(_dollars(0.01)))  # opens a prefetched hold
    for _ in range(8):  # busy (never idle for SETTLE_DELAY): the hold stays out
        time.sleep(0.1)
        a.commit(a.reserve(_dollars(0.001)))
    late = a.reserve(_dollars(0.01))  # drawn near the end of the drawing window...
    assert late.credit is not None and not late.reservation_id
    time.sleep(0.8)  # ...and running for most of a lease: its hold must still be there
    with pytest.raises(BudgetExceeded, match="cost_usd"):
        b.reserve(_dollars(0.95))
    a.commit(late)
    a.flush()
    snap = ledger.snapshot(tenant("acme"))
    assert snap.used["cost_usd"] == 38_000 and snap.held == {}
