"""The LangGraph guard: real graphs with the scripted fake models from budget_plugins.testing."""

from __future__ import annotations

import pytest
from langchain_core.runnables import RunnableLambda

from budget_plugins import Budget, BudgetCallbackHandler, BudgetExceeded, Meter
from budget_plugins.testing import scripted_model

# -- core: the handler's chain checks can be left to a graph guard -------------------


def _nested_model_call(handler: BudgetCallbackHandler) -> str:
    model = scripted_model(["ok"])
    chain = RunnableLambda(lambda text, config: model.invoke(text, config).content)
    return str(RunnableLambda(lambda text, config: chain.invoke(text, config)).invoke("hi", {"callbacks": [handler]}))


def test_handler_checks_run_nesting_depth_by_default() -> None:
    handler = BudgetCallbackHandler(Budget(max_depth=2), hooks=[])
    with pytest.raises(BudgetExceeded) as refused:
        _nested_model_call(handler)
    assert refused.value.dimension == "depth"


def test_handler_without_chain_checks_leaves_depth_and_time_to_the_guard() -> None:
    now = [0.0]
    meter = Meter(Budget(max_depth=2, max_seconds=10), hooks=[], clock=lambda: now[0])
    handler = BudgetCallbackHandler(meter=meter, count_steps=False, chain_checks=False)
    assert _nested_model_call(handler) == "ok"
    now[0] = 11.0
    with pytest.raises(BudgetExceeded) as refused:  # time still applies to the model call itself
        _nested_model_call(handler)
    assert refused.value.dimension == "seconds"
