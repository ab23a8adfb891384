"""An exclusive run scope on a remote ledger: enforced in process, recorded in the ledger.

The ledger here is a real InMemoryLedger told to behave as a remote one
(``defer_commits=True``) and counting the operations it serves, so the tests
can see which requests cost a round trip.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from budget_plugins import (
    Budget,
    BudgetExceeded,
    Ceiling,
    Grant,
    InMemoryLedger,
    LedgerUnavailable,
    Meter,
    Scope,
    TokenUsage,
)


class CountingLedger(InMemoryLedger):
    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.reserves = 0
        self.commits = 0

    def reserve(self, reservation_id: str, scopes: Sequence[Scope], amounts: Mapping[str, int], **kw: Any) -> Grant:
        self.reserves += 1
        return super().reserve(reservation_id, scopes, amounts, **kw)

    def commit(self, reservation_id: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Any:
        self.commits += 1
        return super().commit(reservation_id, scopes, actual)


def meter(budget: Budget, ledger: CountingLedger, **kwargs: Any) -> Meter:
    return Meter(budget, ledger=ledger, hooks=[], tenant="acme", workflow="wf", **kwargs)


def test_run_only_limits_cost_no_round_trip_and_stay_exact() -> None:
    ledger = CountingLedger()
    m = meter(Budget(max_tool_calls=3, max_steps=10), ledger)
    for _ in range(3):
        m.before_step("tools")
        m.after_tool_call(m.before_tool_call("search"))
    with pytest.raises(BudgetExceeded, match="tool_calls"):
        m.before_tool_call("search")
    assert (ledger.reserves, ledger.commits) == (0, 0)
    assert m.usage().used["tool_calls"] == 3
    m.flush()  # what the handler does when the root run ends
    assert ledger.commits == 1
    recorded = ledger.snapshot(m.scopes()[0])
    assert recorded.used == {"steps": 3, "tool_calls": 3, "tool_calls:search": 3} and recorded.held == {}


def test_shared_limits_go_to_the_ledger_with_the_local_usage_settled_on_the_way() -> None:
    ledger = CountingLedger()
    ceiling = [Ceiling(scope="workflow", max_cost_usd="10")]
    m = meter(Budget(max_model_calls=5, max_tool_calls=5), ledger, ceilings=ceiling)
    for _ in range(3):
        m.after_model_call(m.before_model_call(model="gpt-4o-mini", input_tokens=100), TokenUsage(100, 10))
        m.after_tool_call(m.before_tool_call("search"))
        m.before_step("tools")
    assert ledger.reserves == 3  # one round trip per model call; steps and tools ride along
    run_in_ledger = m.scopes()[0]
    assert ledger.snapshot(run_in_ledger).used == {}  # the exclusive run scope is written once, at the end
    m.flush()
    assert ledger.snapshot(run_in_ledger).used == m.usage().used
    assert ledger.snapshot(run_in_ledger).held == {}
    workflow = ledger.snapshot(Scope("workflow", "wf", tenant="acme", workflow="wf"))
    assert workflow.used["model_calls"] == 3 and workflow.used["tool_calls"] == 3 and workflow.used["steps"] == 3
    assert workflow.held == {}
    assert m.usage().used["model_calls"] == 3


def test_run_limits_still_refuse_a_shared_request_in_process() -> None:
    ledger = CountingLedger()
    m = meter(Budget(max_model_calls=2), ledger, ceilings=[Ceiling(scope="tenant", max_cost_usd="10")])
    for _ in range(2):
        m.after_model_call(m.before_model_call(model="gpt-4o-mini"), TokenUsage(10, 10))
    before = ledger.reserves
    with pytest.raises(BudgetExceeded) as info:
        m.before_model_call(model="gpt-4o-mini")
    assert info.value.scope == "run" and ledger.reserves == before  # refused without asking the ledger


def test_a_ceiling_refusal_gives_the_in_process_hold_back() -> None:
    ledger = CountingLedger()
    ceiling = [Ceiling(scope="tenant", max_model_calls=1)]
    first = meter(Budget(max_model_calls=5), ledger, ceilings=ceiling)
    second = meter(Budget(max_model_calls=5), ledger, ceilings=ceiling)
    first.before_model_call(model=None)
    with pytest.raises(BudgetExceeded) as info:
        second.before_model_call(model=None)
    assert info.value.scope == "tenant"
    assert second.usage().held == {}


def test_a_given_run_id_is_shared_and_checked_in_the_ledger() -> None:
    ledger = CountingLedger()
    a = meter(Budget(max_tool_calls=2), ledger, run_id="shared")
    b = meter(Budget(max_tool_calls=2), ledger, run_id="shared")
    a.before_tool_call("t")
    b.before_tool_call("t")
    with pytest.raises(BudgetExceeded):
        a.before_tool_call("t")
    assert ledger.reserves == 3


def _wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_finished_runs_settlement_rides_with_the_next_reservation_or_is_sent_soon_after() -> None:
    ledger = CountingLedger()
    tenant = Scope("tenant", "acme", tenant="acme")
    m = meter(Budget(max_model_calls=50), ledger, ceilings=[Ceiling(scope="tenant", max_cost_usd="10")])
    for _ in range(5):  # one root run per call, as a one-call chain has
        m.after_model_call(m.before_model_call(model="gpt-4o-mini", input_tokens=100), TokenUsage(100, 10))
        m.flush(force=False)  # what the handler does when the root run ends
    assert ledger.reserves == 5 and ledger.commits == 0  # each settlement rode with the next reservation
    assert _wait_for(lambda: ledger.snapshot(tenant).held == {})  # the last one is sent by the settler
    assert _wait_for(lambda: ledger.commits == 2)  # that settlement, and the run scope's copy
    assert ledger.snapshot(tenant).used["model_calls"] == 5 == m.usage().used["model_calls"]
    assert ledger.snapshot(m.scopes()[0]).used == m.usage().used


class FlakyLedger(CountingLedger):
    """A remote ledger whose next commit fails, as a dropped connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def commit(self, reservation_id: str, scopes: Sequence[Scope], actual: Mapping[str, int]) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise LedgerUnavailable("connection dropped")
        return super().commit(reservation_id, scopes, actual)


def test_a_failed_flush_keeps_what_it_could_not_send_and_never_counts_twice() -> None:
    ledger = FlakyLedger()
    tenant = Scope("tenant", "acme", tenant="acme")
    m = meter(Budget(max_tool_calls=50), ledger, ceilings=[Ceiling(scope="tenant", max_model_calls=10)])
    m.after_model_call(m.before_model_call(model="gpt-4o-mini"), TokenUsage(10, 1))
    for _ in range(3):
        m.after_tool_call(m.before_tool_call("search"))  # no shared limit: sent later, in one entry
    ledger.fail_next = True
    with pytest.raises(LedgerUnavailable):
        m.flush()
    m.flush()
    m.flush()
    used = ledger.snapshot(tenant).used
    assert used["model_calls"] == 1 and used["tool_calls"] == 3 and ledger.snapshot(tenant).held == {}
    assert ledger.snapshot(m.scopes()[0]).used == m.usage().used  # the run scope's copy, written once


def test_a_busy_meter_still_reaches_the_ledger_once_a_second() -> None:
    ledger = CountingLedger()
    m = meter(Budget(max_model_calls=10_000), ledger, ceilings=[Ceiling(scope="tenant", max_cost_usd="100")])
    deadline = time.monotonic() + 1.6
    calls = 0
    while time.monotonic() < deadline:  # back-to-back one-call runs: each settlement rides with the next
        m.after_model_call(m.before_model_call(model="gpt-4o-mini", input_tokens=100), TokenUsage(100, 10))
        m.flush(force=False)
        calls += 1
        time.sleep(0.005)
    assert ledger.reserves == calls
    assert ledger.commits >= 1  # the settler did not wait for the meter to go idle
    assert ledger.snapshot(m.scopes()[0]).used["model_calls"] >= 1  # the run scope's copy, at most ~1 s old
