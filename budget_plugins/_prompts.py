"""Prompt sizes measured incrementally: an agent loop re-sends its history on every call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

M = TypeVar("M")


class PromptSizes(Generic[M]):
    """The summed size of a prompt, measuring only the messages added since the previous one.

    An agent loop re-sends its whole history, as the same message objects, with a
    few more each call. Each history is remembered (one per first message, i.e. per
    agent sharing the adapter, up to ``keep`` of them) with running sums of
    ``measure``; the messages a prompt still starts with are not measured again,
    so a call costs O(new messages) instead of O(history). A history that was
    shortened or rewritten is measured again from where it changed.

    Example:
        >>> sizes = PromptSizes(len)
        >>> history = ["hello", "world"]
        >>> sizes.size(history)
        10
        >>> sizes.size([*history, "again"])  # only "again" is measured
        15
    """

    __slots__ = ("_histories", "_keep", "_measure")

    def __init__(self, measure: Callable[[M], int], keep: int = 4) -> None:
        self._measure = measure
        self._keep = keep
        # per history: its messages and the running sums (sums[i] = size of the first i messages)
        self._histories: list[tuple[list[M], list[int]]] = []

    def size(self, messages: Sequence[M]) -> int:
        """The sum of ``measure`` over ``messages``."""
        history, sums = self._history(messages)
        same = len(history)
        if list(messages[:same]) != history:  # the usual case (an agent adding to its history) compares in C
            pairs = enumerate(zip(history, messages, strict=False))
            same = next((i for i, (a, b) in pairs if a is not b), min(same, len(messages)))
            del history[same:], sums[same + 1 :]
        total = sums[-1]
        for message in messages[same:]:
            total += self._measure(message)
            history.append(message)
            sums.append(total)
        return total

    def forget(self) -> None:
        """Drop every remembered history (e.g. when a run ends)."""
        self._histories = []

    def _history(self, messages: Sequence[M]) -> tuple[list[M], list[int]]:
        first = messages[0] if messages else None
        latest = self._histories[0] if self._histories else None
        if latest is not None and latest[0] and latest[0][0] is first:  # the same agent again
            return latest
        for index, entry in enumerate(self._histories):
            if entry[0] and entry[0][0] is first:
                if index:
                    self._histories.insert(0, self._histories.pop(index))
                return entry
        fresh: tuple[list[M], list[int]] = ([], [0])
        self._histories = [fresh, *self._histories[: self._keep - 1]]
        return fresh


__all__ = ["PromptSizes"]
