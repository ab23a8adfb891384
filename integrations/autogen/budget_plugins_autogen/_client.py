"""A ``ChatCompletionClient`` wrapper that reserves every model call before it happens."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component, ComponentModel, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from budget_plugins import Budget, BudgetExceeded, Meter, Ticket, TokenUsage
from budget_plugins._prompts import PromptSizes
from budget_plugins_autogen._shared import (
    BudgetExceededError,
    ScopeConfig,
    bind,
    is_ended,
    mark_call,
    meter_from_config,
    scope_config,
    set_ended,
)

_NO_ARGS: Mapping[str, Any] = MappingProxyType({})
STOP_PREFIX = "[budget] Stopped before this model call: "
"""How the content of the graceful-stop ``CreateResult`` begins."""


class BudgetedChatCompletionClientConfig(BaseModel):
    """Declarative config of :class:`BudgetedChatCompletionClient`."""

    client: ComponentModel
    scope: ScopeConfig
    fallback: ComponentModel | None = None
    model: str | None = None
    fallback_model: str | None = None


class BudgetedChatCompletionClient(ChatCompletionClient, Component[BudgetedChatCompletionClientConfig]):
    """Wrap any ``ChatCompletionClient`` so that every ``create``/``create_stream`` is reserved first.

    Before each call the worst case is held in the budget: input tokens estimated
    from the messages and tool schemas, output tokens from ``max_tokens`` (in
    ``extra_create_args`` or the wrapped client's settings) or
    ``Budget.default_max_output_tokens``. The actual ``RequestUsage`` settles it;
    a failed call counts as an attempt and gives its token hold back; a
    cancelled one gives everything back. Cached results count as calls without
    tokens.

    When the budget refuses a call, ``Budget.on_exhausted`` decides:

    * ``"end"`` (the default here): the call returns a ``CreateResult`` whose
      content starts with :data:`STOP_PREFIX` and says why, with no function
      calls, so the agent's tool loop ends with that text. Pair the client with
      :class:`BudgetTermination` on the same meter so that the team stops too. If
      the budget refuses again before a termination condition stopped the team,
      the client raises instead: a team cannot loop forever on refusals.
    * ``"raise"``: :class:`BudgetExceededError` (a ``BudgetExceeded``).

    After any refusal in the scope (a tool call refused by
    :class:`BudgetedWorkbench`, say), every further call is refused too. From the
    ``degrade_at`` threshold on, calls go to ``fallback``, one tier down (a
    ``fallback`` that is itself budgeted is unwrapped: never two tiers).

    Args:
        client: The model client to wrap.
        budget: A :class:`~budget_plugins.Budget` (a new run scope), or the
            :class:`~budget_plugins.Meter` shared with the workbench and termination.
        fallback: A cheaper client to switch to at the degrade threshold.
        model: Model name for pricing; read from the client's settings if omitted.
        fallback_model: The fallback's model name; read from it if omitted.

    Example:
        >>> import asyncio
        >>> from autogen_core.models import UserMessage
        >>> from autogen_ext.models.replay import ReplayChatCompletionClient
        >>> client = BudgetedChatCompletionClient(
        ...     ReplayChatCompletionClient(["one", "two"]), Budget(max_model_calls=1))
        >>> ask = [UserMessage(content="hi", source="user")]
        >>> asyncio.run(client.create(ask)).content
        'one'
        >>> print(asyncio.run(client.create(ask)).content)
        [budget] Stopped before this model call: Exceeded the model_calls limit of 1 (used=1, requested=1) in run scope
    """

    component_type = "model"
    component_config_schema = BudgetedChatCompletionClientConfig
    component_provider_override = "budget_plugins_autogen.BudgetedChatCompletionClient"

    inner: ChatCompletionClient
    meter: Meter
    fallback: ChatCompletionClient | None
    model: str | None
    fallback_model: str | None

    def __init__(
        self,
        client: ChatCompletionClient,
        budget: Budget | Meter,
        *,
        fallback: ChatCompletionClient | None = None,
        model: str | None = None,
        fallback_model: str | None = None,
    ) -> None:
        self.inner = client
        self.meter = bind(budget)
        if isinstance(fallback, BudgetedChatCompletionClient):  # one tier down, never two
            fallback_model = fallback_model or fallback.model
            fallback = fallback.inner
        self.fallback = fallback
        self.model = model or _setting(client, "model")
        self.fallback_model = fallback_model or _setting(fallback, "model")
        self._last: ChatCompletionClient = client
        self._prompts = _PromptSizes()

    @property
    def degraded(self) -> bool:
        """True once calls go to the fallback client."""
        return self.fallback is not None and self.meter.level in ("degrade", "deny")

    def _target(self) -> tuple[ChatCompletionClient, str | None]:
        if self.fallback is not None and self.degraded:
            return self.fallback, self.fallback_model
        return self.inner, self.model

    async def _admit(
        self,
        messages: Sequence[LLMMessage],
        tools: Sequence[Tool | ToolSchema],
        extra: Mapping[str, Any],
        client: ChatCompletionClient,
        model: str | None,
    ) -> Ticket | CreateResult:
        meter = self.meter
        # Refused earlier in this scope (a tool call, say): refuse this call too.
        refused = meter.exhausted if meter.level == "deny" else None
        if refused is None:
            max_tokens = extra.get("max_tokens") or extra.get("max_completion_tokens") or _setting(client, "max_tokens")
            request = meter.model_request(
                model=model,
                input_tokens=self._prompts.tokens(messages, tools) if meter.needs_prompt_estimate else 0,
                max_output_tokens=int(max_tokens) if max_tokens else None,
            )
            try:
                return await meter.areserve(request, model=model)
            except BudgetExceeded as exc:
                refused = exc
        return self._refused(refused, model)

    def _refused(self, exc: BudgetExceeded, model: str | None) -> CreateResult:
        if (self.meter.budget.on_exhausted or "end") == "raise" or is_ended(self.meter):
            raise BudgetExceededError.from_exceeded(exc) from None
        set_ended(self.meter, True)
        stop = CreateResult(
            finish_reason="stop",
            content=STOP_PREFIX + exc.message,
            usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
            cached=False,
        )
        mark_call(self.meter, stop.usage, model, stop=exc)
        return stop

    async def _settle(self, ticket: Ticket, result: CreateResult | None) -> None:
        if result is None:
            await self.meter.acommit(ticket)
            return
        usage = result.usage
        # A cached result (e.g. from ChatCompletionCache) counts as a call that spent no tokens.
        await self.meter.acommit(
            ticket, TokenUsage() if result.cached else TokenUsage(usage.prompt_tokens, usage.completion_tokens)
        )
        mark_call(self.meter, usage, ticket.model)

    async def _failed(self, ticket: Ticket, exc: BaseException) -> None:
        if isinstance(exc, Exception):
            await self.meter.acommit(ticket, failed=True)
        else:  # cancelled or abandoned before a result: as if it never happened
            await self.meter.arelease(ticket, failed=False)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = _NO_ARGS,
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """Reserve, call the wrapped (or fallback) client, settle; see the class docs."""
        client, model = self._target()
        admitted = await self._admit(messages, tools, extra_create_args, client, model)
        if isinstance(admitted, CreateResult):
            return admitted
        self._last = client
        try:
            result = await client.create(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra_create_args,
                cancellation_token=cancellation_token,
            )
        except BaseException as exc:
            await self._failed(admitted, exc)
            raise
        await self._settle(admitted, result)
        return result

    def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = _NO_ARGS,
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """Streaming twin of :meth:`create`: settles when the final ``CreateResult`` arrives."""
        return self._stream(messages, tools, tool_choice, json_output, extra_create_args, cancellation_token)

    async def _stream(
        self,
        messages: Sequence[LLMMessage],
        tools: Sequence[Tool | ToolSchema],
        tool_choice: Tool | Literal["auto", "required", "none"],
        json_output: bool | type[BaseModel] | None,
        extra: Mapping[str, Any],
        cancellation_token: CancellationToken | None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        client, model = self._target()
        admitted = await self._admit(messages, tools, extra, client, model)
        if isinstance(admitted, CreateResult):
            yield admitted
            return
        self._last = client
        result: CreateResult | None = None
        try:
            async for chunk in client.create_stream(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra,
                cancellation_token=cancellation_token,
            ):
                if isinstance(chunk, CreateResult):
                    result = chunk
                yield chunk
        except BaseException as exc:
            if result is None:
                await self._failed(admitted, exc)
            else:  # the consumer stopped listening after the result
                await self._settle(admitted, result)
            raise
        await self._settle(admitted, result)

    # -- the rest of the interface delegates ------------------------------------------

    async def close(self) -> None:
        """Close the wrapped client and the fallback."""
        await self.inner.close()
        if self.fallback is not None:
            await self.fallback.close()

    def actual_usage(self) -> RequestUsage:
        """The usage of the last call, from whichever client made it."""
        return self._last.actual_usage()

    def total_usage(self) -> RequestUsage:
        """The wrapped client's and the fallback's usage together."""
        total = self.inner.total_usage()
        extra = self.fallback.total_usage() if self.fallback is not None else RequestUsage(0, 0)
        return RequestUsage(
            total.prompt_tokens + extra.prompt_tokens, total.completion_tokens + extra.completion_tokens
        )

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """Token count by the client the next call would go to."""
        return self._target()[0].count_tokens(messages, tools=tools)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """Remaining context tokens of the client the next call would go to."""
        return self._target()[0].remaining_tokens(messages, tools=tools)

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        """Deprecated by AutoGen; the wrapped client's."""
        return self.inner.capabilities  # type: ignore[no-any-return]

    @property
    def model_info(self) -> ModelInfo:
        """The wrapped client's model info."""
        return self.inner.model_info

    def _to_config(self) -> BudgetedChatCompletionClientConfig:
        return BudgetedChatCompletionClientConfig(
            client=self.inner.dump_component(),
            scope=scope_config(self.meter),
            fallback=self.fallback.dump_component() if self.fallback is not None else None,
            model=self.model,
            fallback_model=self.fallback_model,
        )

    @classmethod
    def _from_config(cls, config: BudgetedChatCompletionClientConfig) -> Self:
        return cls(
            ChatCompletionClient.load_component(config.client),
            meter_from_config(config.scope),
            fallback=ChatCompletionClient.load_component(config.fallback) if config.fallback else None,
            model=config.model,
            fallback_model=config.fallback_model,
        )


def _setting(client: ChatCompletionClient | None, key: str) -> Any:
    """A create argument the wrapped client was configured with (OpenAI, Anthropic, Ollama... keep them there)."""
    args = getattr(client, "_create_args", None)
    return args.get(key) if isinstance(args, Mapping) else None


class _PromptSizes:
    """Prompt estimates that measure only what an agent added since its previous call.

    The messages are measured incrementally by the core :class:`PromptSizes` (one
    history per agent sharing the client, up to four, as their contexts keep them).
    The estimate is the one of the whole prompt: about 4 characters a token over
    the message texts, function calls and results, and tool schemas.
    """

    __slots__ = ("messages", "tool_chars", "tools")

    def __init__(self) -> None:
        self.messages: PromptSizes[LLMMessage] = PromptSizes(_message_chars)  # each part counts its separator
        self.tools: list[Tool | ToolSchema] = []
        self.tool_chars = 0

    def tokens(self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]) -> int:
        chars = self.messages.size(messages)
        if tools:
            schemas = list(tools)
            if schemas != self.tools:  # fresh but equal dicts on every call of an agent
                self.tools = schemas
                self.tool_chars = sum(
                    len(json.dumps(tool.schema if isinstance(tool, Tool) else tool, default=str)) + 1 for tool in tools
                )
            chars += self.tool_chars
        return (max(chars - 1, 0) + 3) // 4  # the parts joined by newlines, 4 characters a token, rounded up


def _message_chars(message: LLMMessage) -> int:
    content = message.content
    chars = 0
    for item in [content] if isinstance(content, str) else content:
        if isinstance(item, str):
            chars += len(item) + 1
        elif isinstance(item, FunctionCall):
            chars += len(item.name) + len(item.arguments) + 1
        elif isinstance(item, FunctionExecutionResult):
            chars += len(item.content) + 1
    return chars
