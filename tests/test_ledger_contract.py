"""The contract every ledger passes (in-memory here; Redis joins via conftest).

Scopes use a fresh uuid per test so that stores shared between tests (a Redis
server) never see each other's counters.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from budget_plugins import BudgetConfigError, Ledger, ReservationError, Scope


def run_scope(limits: dict[str, int] | None = None, tenant: str = "t") -> Scope:
    return Scope("run", uuid.uuid4().hex, tenant=tenant, limits=limits or {})


def test_reserve_within_limit_is_granted_and_held(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 2})
    grant = ledger.reserve("r1", [scope], {"tool_calls": 1})
    assert grant.granted and grant.denial is None
    assert grant.usage[0].held == {"tool_calls": 1}
    assert ledger.snapshot(scope).held == {"tool_calls": 1}


def test_exactly_the_limit_is_granted_then_denied(ledger: Ledger) -> None:
    scope = run_scope({"model_calls": 3})
    for i in range(3):
        assert ledger.reserve(f"r{i}", [scope], {"model_calls": 1}).granted
    grant = ledger.reserve("r3", [scope], {"model_calls": 1})
    assert not grant.granted
    assert grant.denial is not None
    assert (grant.denial.dimension, grant.denial.limit, grant.denial.used, grant.denial.requested) == (
        "model_calls",
        3,
        3,
        1,
    )
    assert ledger.snapshot(scope).held == {"model_calls": 3}


def test_denied_request_changes_nothing_in_any_scope(ledger: Ledger) -> None:
    tenant = Scope("tenant", "acme", tenant=uuid.uuid4().hex, limits={"cost_usd": 10})
    run = run_scope({"cost_usd": 100}, tenant=tenant.tenant)
    assert ledger.reserve("a", [run, tenant], {"cost_usd": 8}).granted
    grant = ledger.reserve("b", [run, tenant], {"cost_usd": 4})
    assert not grant.granted
    assert grant.denial is not None and grant.denial.scope == "tenant"
    assert ledger.snapshot(run).held == {"cost_usd": 8}
    assert ledger.snapshot(tenant).held == {"cost_usd": 8}


def test_commit_replaces_hold_with_actual(ledger: Ledger) -> None:
    scope = run_scope({"cost_usd": 1000})
    ledger.reserve("a", [scope], {"cost_usd": 500, "model_calls": 1})
    settlement = ledger.commit("a", [scope], {"cost_usd": 120, "model_calls": 1})
    assert settlement.status == "committed"
    snap = ledger.snapshot(scope)
    assert snap.used == {"cost_usd": 120, "model_calls": 1}
    assert snap.held == {}


def test_commit_is_idempotent(ledger: Ledger) -> None:
    scope = run_scope({"cost_usd": 1000})
    ledger.reserve("a", [scope], {"cost_usd": 500})
    assert ledger.commit("a", [scope], {"cost_usd": 300}).status == "committed"
    assert ledger.commit("a", [scope], {"cost_usd": 300}).status == "duplicate"
    assert ledger.snapshot(scope).used == {"cost_usd": 300}


def test_reserve_is_idempotent_by_id(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 5})
    assert ledger.reserve("a", [scope], {"tool_calls": 1}).granted
    again = ledger.reserve("a", [scope], {"tool_calls": 1})
    assert again.granted and again.duplicate
    assert ledger.snapshot(scope).held == {"tool_calls": 1}


def test_reserve_same_id_other_amounts_is_an_error(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 5})
    ledger.reserve("a", [scope], {"tool_calls": 1})
    with pytest.raises(ReservationError):
        ledger.reserve("a", [scope], {"tool_calls": 2})


def test_release_returns_the_hold_once(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 1})
    ledger.reserve("a", [scope], {"tool_calls": 1})
    assert ledger.release("a", [scope]) is True
    assert ledger.release("a", [scope]) is False
    assert ledger.snapshot(scope).held == {}
    assert ledger.reserve("b", [scope], {"tool_calls": 1}).granted


def test_overage_is_recorded_never_lost(ledger: Ledger) -> None:
    scope = run_scope({"output_tokens": 100})
    ledger.reserve("a", [scope], {"output_tokens": 50})
    settlement = ledger.commit("a", [scope], {"output_tokens": 130})
    assert settlement.overage == {"output_tokens": 80}
    assert ledger.snapshot(scope).used == {"output_tokens": 130}
    assert not ledger.reserve("b", [scope], {"output_tokens": 1}).granted


def test_commit_without_reservation_still_records_spend(ledger: Ledger) -> None:
    scope = run_scope({"cost_usd": 100})
    settlement = ledger.commit("never-reserved", [scope], {"cost_usd": 7})
    assert settlement.status == "unknown"
    assert ledger.snapshot(scope).used == {"cost_usd": 7}


def test_lease_expiry_returns_the_hold_and_late_commit_counts(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 1})
    assert ledger.reserve("a", [scope], {"tool_calls": 1}, lease_seconds=0.2).granted
    assert not ledger.reserve("b", [scope], {"tool_calls": 1}).granted
    time.sleep(0.35)
    assert ledger.snapshot(scope).held == {}
    late = ledger.commit("a", [scope], {"tool_calls": 1})
    assert late.status == "expired"
    assert ledger.snapshot(scope).used == {"tool_calls": 1}


def test_extend_keeps_a_long_call_alive(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 1})
    ledger.reserve("a", [scope], {"tool_calls": 1}, lease_seconds=0.3)
    time.sleep(0.15)
    assert ledger.extend("a", [scope], 5.0)
    time.sleep(0.3)
    assert ledger.snapshot(scope).held == {"tool_calls": 1}
    assert not ledger.extend("missing", [scope], 5.0)


def test_shadow_reserve_holds_and_reports_would_deny(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 1})
    ledger.reserve("a", [scope], {"tool_calls": 1})
    grant = ledger.reserve("b", [scope], {"tool_calls": 1}, enforce=False)
    assert grant.granted
    assert grant.denial is not None and grant.denial.dimension == "tool_calls"
    assert ledger.snapshot(scope).held == {"tool_calls": 2}


def test_settle_in_reserve_commits_first(ledger: Ledger) -> None:
    scope = run_scope({"model_calls": 2})
    ledger.reserve("a", [scope], {"model_calls": 1, "cost_usd": 100})
    grant = ledger.reserve("b", [scope], {"model_calls": 1}, settle=[("a", {"model_calls": 1, "cost_usd": 40})])
    assert grant.granted
    snap = ledger.snapshot(scope)
    assert snap.used == {"model_calls": 1, "cost_usd": 40}
    assert snap.held == {"model_calls": 1}


def test_negative_or_fractional_amounts_are_config_errors(ledger: Ledger) -> None:
    scope = run_scope({"cost_usd": 100})
    with pytest.raises(BudgetConfigError, match="cost_usd"):
        ledger.reserve("a", [scope], {"cost_usd": -1})
    with pytest.raises(BudgetConfigError, match="integer"):
        ledger.reserve("a", [scope], {"cost_usd": 1.5})  # type: ignore[dict-item]
    assert ledger.snapshot(scope).held == {}


def test_scope_ids_with_separators_never_collide(ledger: Ledger) -> None:
    tenant = uuid.uuid4().hex
    a = Scope("workflow", "x", tenant=tenant + ":a", workflow="b", limits={"steps": 1})
    b = Scope("workflow", "x", tenant=tenant, workflow="a:b", limits={"steps": 1})
    c = Scope("workflow", "x", tenant=tenant + "{a}", workflow="b}", limits={"steps": 1})
    for i, scope in enumerate((a, b, c)):
        assert ledger.reserve(f"s{i}", [scope], {"steps": 1}).granted
    for scope in (a, b, c):
        assert ledger.snapshot(scope).held == {"steps": 1}


def test_windows_are_separate_scopes(ledger: Ledger) -> None:
    tenant = uuid.uuid4().hex
    monthly = Scope("tenant", tenant, tenant=tenant, limits={"cost_usd": 10}, window="month")
    daily = Scope("tenant", tenant, tenant=tenant, limits={"cost_usd": 5}, window="day")
    assert ledger.reserve("a", [monthly, daily], {"cost_usd": 5}).granted
    grant = ledger.reserve("b", [monthly, daily], {"cost_usd": 1})
    assert grant.denial is not None and grant.denial.dimension == "cost_usd"
    assert grant.denial.limit == 5


def test_concurrent_reservations_never_exceed_the_limit(ledger: Ledger) -> None:
    scope = run_scope({"cost_usd": 100})
    granted: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(10):
            rid = f"w{n}-{i}"
            if ledger.reserve(rid, [scope], {"cost_usd": 1}).granted:
                with lock:
                    granted.append(rid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100
    for rid in granted:
        ledger.commit(rid, [scope], {"cost_usd": 1})
    snap = ledger.snapshot(scope)
    assert snap.used == {"cost_usd": 100}
    assert snap.held == {}


def test_async_twin_shares_the_storage(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 2})
    aledger = ledger.as_async()

    async def main() -> None:
        results = await asyncio.gather(*(aledger.reserve(f"a{i}", [scope], {"tool_calls": 1}) for i in range(5)))
        assert sum(r.granted for r in results) == 2
        first_granted = next(r for r in results if r.granted)
        await aledger.commit(first_granted.reservation_id, [scope], {"tool_calls": 1})

    asyncio.run(main())
    snap = ledger.snapshot(scope)
    assert snap.used == {"tool_calls": 1}
    assert snap.held.get("tool_calls") == 1


def test_a_scope_listed_twice_is_held_once(ledger: Ledger) -> None:
    scope = run_scope({"tool_calls": 3})
    assert ledger.reserve("a", [scope, scope], {"tool_calls": 2}).granted
    assert ledger.snapshot(scope).held == {"tool_calls": 2}
    ledger.commit("a", [scope, scope], {"tool_calls": 2})
    assert ledger.snapshot(scope).used == {"tool_calls": 2}
