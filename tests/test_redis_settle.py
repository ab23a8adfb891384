"""A guarded chain on a real Redis: one round trip per model call, the last settlement sent soon after.

Round trips are counted on the client socket (one per packet written), as the
benchmarks do.
"""

from __future__ import annotations

import time
import uuid

from redis_server import CountingConnection, counting_client

from budget_plugins import Budget, BudgetCallbackHandler, Ceiling, RedisLedger, Scope
from budget_plugins.testing import scripted_model


def test_one_call_chains_cost_one_round_trip_each_and_the_last_settles_soon_after(redis_url: str) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]  # a namespace of its own on the session server
    ledger = RedisLedger(redis_url, client=counting_client(redis_url), namespace=namespace)
    handler = BudgetCallbackHandler(
        Budget(max_model_calls=100),
        ledger=ledger,
        tenant="acme",
        ceilings=[Ceiling(scope="tenant", max_cost_usd="5")],
        hooks=[],
    )
    model = scripted_model([f"answer {i}" for i in range(21)], model_name="gpt-4o-mini")
    model.invoke("warm up", {"callbacks": [handler]})  # loads the scripts
    before = CountingConnection.sent
    for i in range(20):
        model.invoke(f"question {i}", {"callbacks": [handler]})  # one root run per call
    assert CountingConnection.sent - before == 20  # each reservation carried the previous settlement
    tenant = Scope("tenant", "acme", tenant="acme")
    deadline = time.monotonic() + 5
    while ledger.snapshot(tenant).held and time.monotonic() < deadline:
        time.sleep(0.02)
    snap = ledger.snapshot(tenant)
    assert snap.held == {} and snap.used["model_calls"] == 21 == handler.usage().used["model_calls"]
    assert snap.used["cost_usd"] == handler.usage().used["cost_usd"] > 0
    ledger.close()
