"""In-memory ledger specifics that need its injectable clock (windows, leases)."""

from __future__ import annotations

from datetime import UTC, datetime

from budget_plugins import InMemoryLedger, Scope


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_a_call_reserved_before_a_window_rollover_is_charged_to_its_window() -> None:
    now = [at(2026, 11, 30, 23, 59)]
    ledger = InMemoryLedger(clock=lambda: now[0])
    monthly = Scope("tenant", "acme", tenant="acme", limits={"cost_usd": 100}, window="month")
    ledger.reserve("late", [monthly], {"cost_usd": 60})
    now[0] = at(2026, 12, 1, 0, 1)
    assert ledger.snapshot(monthly).used == {}
    assert ledger.snapshot(monthly).held == {"cost_usd": 60}  # still held across the rollover
    ledger.commit("late", [monthly], {"cost_usd": 50})
    december = ledger.snapshot(monthly)
    assert december.used == {} and december.held == {}
    assert ledger._scopes[monthly.key].previous == ("2026-11", {"cost_usd": 50})  # November kept its spend


def test_an_expired_hold_committed_late_is_charged_to_its_window() -> None:
    now = [at(2026, 11, 30, 23, 58)]
    ledger = InMemoryLedger(clock=lambda: now[0])
    daily = Scope("tenant", "acme", tenant="acme", limits={"cost_usd": 100}, window="day")
    ledger.reserve("slow", [daily], {"cost_usd": 10}, lease_seconds=60)
    now[0] = at(2026, 11, 30, 23, 59, 30)
    assert ledger.snapshot(daily).held == {}  # the lease ran out
    settlement = ledger.commit("slow", [daily], {"cost_usd": 7})
    assert settlement.status == "expired"
    assert ledger.snapshot(daily).used == {"cost_usd": 7}


def test_idle_run_scopes_are_dropped_and_ceilings_kept() -> None:
    now = [at(2026, 11, 1)]
    ledger = InMemoryLedger(clock=lambda: now[0], run_ttl_seconds=3600)
    runs = [Scope("run", f"r{i}", tenant="acme", limits={"steps": 5}) for i in range(100)]
    tenant = Scope("tenant", "acme", tenant="acme", limits={"steps": 1000})
    for i, run in enumerate(runs):
        ledger.commit(f"c{i}", [run, tenant], {"steps": 1})
    busy = runs[0]
    ledger.reserve("in-flight", [busy], {"steps": 1}, lease_seconds=10 * 3600)
    now[0] += 2 * 3600
    ledger.sweep()
    assert {key[3] for key in ledger._scopes if key[0] == "run"} == {"r0"}  # only the one still holding
    assert ledger.snapshot(tenant).used == {"steps": 100}
