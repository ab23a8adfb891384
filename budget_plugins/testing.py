"""Scripted fake models and tools for testing guards without network or keys.

LangChain's own fakes do not fit agent loops: none supports ``bind_tools``,
``FakeMessagesListChatModel`` reuses one message object (whose id then gets
rewritten so that messages replace each other), and ``GenericFakeChatModel``
drops tool calls and usage when streaming. :class:`ScriptedChatModel` returns a
fresh ``AIMessage`` on every call, with distinct ids, tool calls, usage and a
model name (so calls are priced as the real model), and can loop forever: the
runaway agent.

Example:
    >>> model = runaway_model(tool="search")
    >>> reply = model.invoke("go")
    >>> reply.tool_calls[0]["name"], reply.usage_metadata["output_tokens"]
    ('search', 20)
    >>> model.calls
    1
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ConfigDict, Field, PrivateAttr

__all__ = [
    "ScriptedChatModel",
    "Turn",
    "counting_tool",
    "runaway_model",
    "scripted_model",
]


class Turn:
    """One scripted model reply: text and/or tool calls, with its token usage.

    Example:
        >>> Turn(tools=[("search", {"q": "x"})]).message("m").tool_calls[0]["args"]
        {'q': 'x'}
    """

    def __init__(
        self,
        text: str = "",
        *,
        tools: Sequence[tuple[str, dict[str, Any]]] = (),
        input_tokens: int = 100,
        output_tokens: int = 20,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        self.text = text
        self.tools = list(tools)
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read_tokens = cache_read_tokens
        self.cache_write_tokens = cache_write_tokens

    def message(self, model_name: str) -> AIMessage:
        """A fresh ``AIMessage`` for this turn (new ids every time)."""
        tool_calls = [
            ToolCall(name=name, args=dict(args), id=f"call_{uuid.uuid4().hex[:12]}", type="tool_call")
            for name, args in self.tools
        ]
        details: dict[str, int] = {}
        if self.cache_read_tokens:
            details["cache_read"] = self.cache_read_tokens
        if self.cache_write_tokens:
            details["cache_creation"] = self.cache_write_tokens
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        if details:
            usage["input_token_details"] = details
        return AIMessage(
            content=self.text,
            id=f"fake-{uuid.uuid4().hex}",
            tool_calls=tool_calls,
            usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": model_name, "finish_reason": "tool_calls" if tool_calls else "stop"},
        )


class ScriptedChatModel(BaseChatModel):
    """A chat model that replays scripted turns and supports ``bind_tools``.

    Args:
        turns: Factory of the turn sequence; it may be endless (a runaway agent).
        model_name: Reported in ``response_metadata`` so calls are priced as this model.
        max_tokens: Shown in the invocation params (the guard reserves it as the
            worst-case output).
        fail_times: The first N calls raise ``fail_with`` (to drive retries).
        latency: Seconds each call takes, like a provider's response time.

    ``calls`` counts the provider calls that really happened: a guard that
    refuses before the call leaves it unchanged.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    turns: Callable[[], Iterator[Turn]]
    model_name: str = "gpt-4o-mini"
    max_tokens: int | None = None
    fail_times: int = 0
    latency: float = 0.0
    fail_with: Callable[[], BaseException] = Field(default=lambda: ConnectionError("scripted failure"))
    disable_streaming: bool = True  # type: ignore[assignment]
    _iterator: Iterator[Turn] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: int = PrivateAttr(default=0)
    _attempts: int = PrivateAttr(default=0)

    @property
    def calls(self) -> int:
        """Provider calls that returned a reply."""
        return self._calls

    @property
    def attempts(self) -> int:
        """Provider calls attempted, failed ones included."""
        return self._attempts

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_tokens": self.max_tokens}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            self._attempts += 1
            if self._attempts <= self.fail_times:
                raise self.fail_with()
            if self._iterator is None:
                self._iterator = self.turns()
            try:
                turn = next(self._iterator)
            except StopIteration:
                raise RuntimeError("ScriptedChatModel ran out of scripted turns") from None
            self._calls += 1
        if self.latency:
            time.sleep(self.latency)
        return ChatResult(generations=[ChatGeneration(message=turn.message(self.model_name))])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:  # type: ignore[override]
        """Accept tools and return the model itself (the script decides the calls)."""
        return self  # type: ignore[return-value]


def scripted_model(turns: Sequence[Turn | str], *, model_name: str = "gpt-4o-mini", **kwargs: Any) -> ScriptedChatModel:
    """A model that plays ``turns`` once, in order (strings are plain text replies).

    Example:
        >>> scripted_model(["hello"]).invoke("hi").content
        'hello'
    """
    fixed = [t if isinstance(t, Turn) else Turn(t) for t in turns]
    return ScriptedChatModel(turns=lambda: iter(fixed), model_name=model_name, **kwargs)


def runaway_model(
    *,
    tool: str = "search",
    args: dict[str, Any] | None = None,
    parallel: int = 1,
    model_name: str = "gpt-4o-mini",
    input_tokens: int = 100,
    output_tokens: int = 20,
    cache_read_tokens: int = 0,
    **kwargs: Any,
) -> ScriptedChatModel:
    """A model that calls ``tool`` on every turn, forever: the runaway agent.

    ``parallel`` tool calls are requested per turn.

    Example:
        >>> m = runaway_model(parallel=3)
        >>> len(m.invoke("go").tool_calls)
        3
    """
    turn = Turn(
        f"Calling {tool} again.",
        tools=[(tool, dict(args or {"query": "more"}))] * parallel,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
    )
    return ScriptedChatModel(turns=lambda: itertools.repeat(turn), model_name=model_name, **kwargs)


def counting_tool(name: str = "search", *, result: str = "nothing new", fail: bool = False) -> BaseTool:
    """A trivial tool that counts its executions in ``tool.metadata["calls"]``.

    Example:
        >>> t = counting_tool("search")
        >>> t.invoke({"query": "x"}), t.metadata["calls"]
        ('nothing new', 1)
    """
    lock = threading.Lock()
    holder: list[BaseTool] = []

    def run(query: str = "") -> str:
        with lock:
            metadata = holder[0].metadata
            assert metadata is not None
            metadata["calls"] += 1
        if fail:
            raise ValueError(f"{name} failed")
        return result

    built = StructuredTool.from_function(
        func=run, name=name, description=f"Fake {name} tool for tests.", metadata={"calls": 0}
    )
    holder.append(built)
    return built
