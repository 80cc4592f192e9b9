"""Token usage of one request, learned from the engine's answers (what billing is based on).

vLLM's streams carry, with ``continuous_usage_stats``, a ``usage`` object on every chunk that
covers *that chunk's choice only*: the prompt tokens of the prompt the choice answers and
the completion tokens that choice has generated so far. A stream with ``n > 1`` (or several
prompts) that is cut short must therefore be summed per (prompt, choice), never read from
the last chunk. The final usage chunk (no choices) is the engine's own total and wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmplat.observability.record import Usage


@dataclass
class UsageTracker:
    """Sums per-choice usage of a stream; choice ``i`` answers prompt ``i // n``."""

    n: int = 1
    final: Usage | None = None
    """The engine's total (its final usage chunk, or a non-streaming response's usage)."""
    _prompt: dict[int, int] = field(default_factory=dict)
    _completion: dict[int, int] = field(default_factory=dict)

    def observe(self, data: dict[str, Any]) -> None:
        """One decoded stream chunk (or a full response object's dict)."""
        choices = data.get("choices")
        usage = data.get("usage")
        if not choices:
            if isinstance(usage, dict):
                self.final = Usage.from_dict(usage)
            return
        for choice in choices:
            index = int(choice.get("index") or 0)
            if isinstance(usage, dict):
                done = int(usage.get("completion_tokens") or 0)
                self._completion[index] = max(self._completion.get(index, 0), done)
                self._prompt[index // self.n] = int(usage.get("prompt_tokens") or 0)
            elif _has_output(choice):
                # No per-chunk usage (an engine without continuous stats): a chunk is at
                # least one token.
                self._completion[index] = self._completion.get(index, 0) + 1

    def delivered(self, prompt_fallback: int) -> Usage:
        """What the engine did: its total when it sent one, else the per-choice sums (the
        prompt as counted at admission when no chunk said)."""
        if self.final is not None:
            return Usage(self.final.prompt_tokens, self.final.completion_tokens)
        prompt = sum(self._prompt.values()) if self._prompt else prompt_fallback
        return Usage(prompt, sum(self._completion.values()))


def _has_output(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("tool_calls"))
    return bool(choice.get("text"))
