"""The chat template's framing: how many tokens it adds around the messages of a prompt.

A prompt is its messages, each framed as ``<|im_start|> role ... <|im_end|>`` (``MESSAGE_OVERHEAD``), and the
generation prompt that asks for the answer (``testbed_common.tokenizer.GENERATION_PROMPT``).
"""

from __future__ import annotations

from testbed_common.tokenizer import GENERATION_PROMPT

MESSAGE_OVERHEAD = 3  # <|im_start|> role ... <|im_end|>
TURN_FRAMING = MESSAGE_OVERHEAD + len(GENERATION_PROMPT)  # a further turn: the tool message's frame + generation


def first_prompt_tokens(system_prompt_tokens: int, task_prompt_tokens: int) -> int:
    """Prompt length of a first turn: system + task messages + the generation prompt."""
    return system_prompt_tokens + MESSAGE_OVERHEAD + task_prompt_tokens + MESSAGE_OVERHEAD + len(GENERATION_PROMPT)
