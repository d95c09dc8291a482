"""The texts of a scenario's sessions: the shared system prompt, a task prompt per group, a tool output per turn.

Each is ``testbed_common.tokenizer.synth_text`` of its stream (``sim.workload.seeds``): the same scenario seed gives
the same texts in every run and process.
"""

from __future__ import annotations

from sim.workload.scenario import Scenario
from sim.workload.seeds import SYSTEM_STREAM, TASK_STREAM, TOOL_STREAM, stream_seed, turn_stream
from testbed_common.tokenizer import synth_noted_text, synth_text


def system_prompt(scenario: Scenario) -> str:
    return synth_text(stream_seed(scenario.seed, SYSTEM_STREAM), scenario.system_prompt_tokens)


def task_prompt(scenario: Scenario, group: int) -> str:
    return synth_text(stream_seed(scenario.seed, TASK_STREAM, group), scenario.task_prompt_tokens)


def tool_output(scenario: Scenario, session: int, turn: int, n: int) -> str:
    return synth_text(stream_seed(scenario.seed, TOOL_STREAM), n, turn_stream(session, turn))


class ToolTexts:
    """``tool_output(scenario, session, turn, n)`` with the tool stream's seed hashed once, and every text noted
    for the session server (``remember_vocab_text``), which then takes its ids instead of tokenizing it again."""

    def __init__(self, scenario: Scenario) -> None:
        self._seed = stream_seed(scenario.seed, TOOL_STREAM)

    def text(self, session: int, turn: int, n: int) -> str:
        return synth_noted_text(self._seed, n, turn_stream(session, turn))
