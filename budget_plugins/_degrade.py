"""The degradation ladder for LangChain models: one tier down at ``degrade_at``.

:class:`TieredChatModel` is a chat model that delegates to ``primary`` until the
meter reaches the degrade threshold, then to ``cheaper`` — one tier down, never
two — optionally telling the agent to wrap up. The decision itself (which level
the run is at) is the meter's; this class only routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict

from budget_plugins._meter import Meter, current_meter

WRAP_UP_NOTE = (
    "Budget note: this run is close to its budget. Finish now: give your best final answer "
    "from what you have, without calling more tools."
)


class TieredChatModel(BaseChatModel):
    """Route calls to a cheaper model once the run's budget reaches ``degrade_at``.

    Args:
        primary: The model used while the budget is comfortable.
        cheaper: The model one tier down, used from the degrade threshold on.
        meter: The run's meter (e.g. ``handler.meter``), whose ``level`` decides.
            ``None`` (the default): the meter of whichever budget guards each call
            — a :class:`BudgetCallbackHandler` in its callbacks, the LangGraph
            ``guard()`` or ``BudgetMiddleware`` of its invocation, or the enclosing
            ``with budget(...)`` block.
        wrap_up_note: Add a system note asking the agent to wrap up once degraded
            (``None`` to disable).

    Example:
        >>> from budget_plugins import Budget, BudgetCallbackHandler
        >>> from budget_plugins.testing import runaway_model
        >>> handler = BudgetCallbackHandler(Budget(max_model_calls=10), hooks=[])
        >>> big, small = runaway_model(model_name="gpt-4o"), runaway_model(model_name="gpt-4o-mini")
        >>> model = TieredChatModel(primary=big, cheaper=small, meter=handler.meter)
        >>> for _ in range(10):
        ...     _ = model.invoke("go", config={"callbacks": [handler]})
        >>> big.calls, small.calls  # the ninth call reaches 90 % and is the first to go cheaper
        (8, 2)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    primary: BaseChatModel
    cheaper: BaseChatModel
    meter: Meter | None = None
    wrap_up_note: str | None = WRAP_UP_NOTE
    disable_streaming: bool = True  # type: ignore[assignment]

    @property
    def degraded(self) -> bool:
        """Whether the next call goes to the cheaper model (for a fixed or ambient meter)."""
        return _is_degraded(self.meter or current_meter.get())

    @property
    def _current(self) -> BaseChatModel:
        return self.cheaper if self.degraded else self.primary

    def _meter_for(self, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> Meter | None:
        if self.meter is not None:
            return self.meter
        if run_manager is not None:
            for handler in run_manager.handlers:
                find = getattr(handler, "meter_for", None)
                found = find(run_manager.run_id) if callable(find) else None
                if isinstance(found, Meter):
                    return found
        return current_meter.get()

    def _route(
        self,
        messages: list[BaseMessage],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> tuple[BaseChatModel, list[BaseMessage]]:
        if not _is_degraded(self._meter_for(run_manager)):
            return self.primary, messages
        if self.wrap_up_note:
            messages = [*messages, SystemMessage(self.wrap_up_note)]
        return self.cheaper, messages

    @property
    def _llm_type(self) -> str:
        return "budget-tiered"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # What the handler reads to price the reservation: the tier about to be called.
        current = self._current
        params = dict(current._identifying_params)
        params.setdefault("model_name", getattr(current, "model_name", None) or getattr(current, "model", None))
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        model, routed = self._route(messages, run_manager)
        return model._generate(routed, stop=stop, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        model, routed = self._route(messages, run_manager)
        return await model._agenerate(routed, stop=stop, **kwargs)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:  # type: ignore[override]
        """Bind tools to both tiers (the routing happens per call)."""
        bound = self.model_copy(
            update={
                "primary": _bound(self.primary, tools, kwargs),
                "cheaper": _bound(self.cheaper, tools, kwargs),
            }
        )
        return bound


def _is_degraded(meter: Meter | None) -> bool:
    return meter is not None and meter.level in ("degrade", "deny")


def _bound(model: BaseChatModel, tools: Sequence[Any], kwargs: dict[str, Any]) -> BaseChatModel:
    result = model.bind_tools(tools, **kwargs)
    # A RunnableBinding around a chat model: keep routing to the model with its bound kwargs.
    if isinstance(result, BaseChatModel):
        return result
    return _BoundChatModel(bound=result, inner=model)


class _BoundChatModel(BaseChatModel):
    """A bound chat model (``model.bind_tools(...)``) exposed as a chat model again."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    bound: Any
    inner: BaseChatModel

    @property
    def _llm_type(self) -> str:
        return self.inner._llm_type

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return dict(self.inner._identifying_params)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        merged = {**getattr(self.bound, "kwargs", {}), **kwargs}
        return self.inner._generate(messages, stop=stop, **merged)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        merged = {**getattr(self.bound, "kwargs", {}), **kwargs}
        return await self.inner._agenerate(messages, stop=stop, **merged)
