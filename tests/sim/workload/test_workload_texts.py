"""Texts and their seeds: each text is ``synth_text`` of its named stream, the same in every run, distinct per
stream; the tool texts the agents take are ``tool_output`` and noted with the tokenizer's ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.workload.scenario import Scenario
from sim.workload.seeds import SYSTEM_STREAM, TASK_STREAM, TOOL_STREAM, stream_seed, turn_stream
from sim.workload.texts import ToolTexts, system_prompt, task_prompt, tool_output
from testbed_common import tokenizer

keys32 = st.integers(0, 2**32 - 1)


@given(st.integers(0, 2**64 - 1), st.lists(keys32, max_size=3))
def test_a_stream_seed_is_its_seed_sequences_first_word(seed, keys):
    want = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *keys]).generate_state(2, np.uint64)[0]
    assert stream_seed(seed, *keys) == int(want)


@given(keys32, keys32, keys32, keys32)
def test_turn_streams_are_distinct_per_session_and_turn(s1, t1, s2, t2):
    assert (turn_stream(s1, t1) == turn_stream(s2, t2)) == ((s1, t1) == (s2, t2))
    assert 0 <= turn_stream(s1, t1) < 2**64


@pytest.mark.parametrize("session, turn", [(-1, 0), (0, -1), (2**32, 0), (0, 2**32)])
def test_a_turn_stream_outside_32_bits_is_refused(session, turn):
    with pytest.raises(ValueError):
        turn_stream(session, turn)


def test_texts_are_synth_text_of_their_streams():
    s = Scenario(seed=7, system_prompt_tokens=30, task_prompt_tokens=20)
    assert system_prompt(s) == tokenizer.synth_text(stream_seed(7, SYSTEM_STREAM), 30)
    assert task_prompt(s, 2) == tokenizer.synth_text(stream_seed(7, TASK_STREAM, 2), 20)
    assert tool_output(s, 3, 4, 25) == tokenizer.synth_text(stream_seed(7, TOOL_STREAM), 25, turn_stream(3, 4))
    assert len(system_prompt(s).split()) == 30 and len(tool_output(s, 3, 4, 25).split()) == 25
    assert task_prompt(s, 2) != task_prompt(s, 3)
    assert len({tool_output(s, i, k, 25) for i in range(3) for k in range(3)}) == 9
    assert system_prompt(s) != system_prompt(s.replace(seed=8))


@given(st.integers(0, 2**32), st.integers(1, 12), st.lists(st.integers(-2, 700), min_size=1, max_size=6))
def test_tool_texts_are_tool_output(seed, sessions, lengths):
    s = Scenario(seed=seed, sessions=sessions, group_size=3)
    tools = ToolTexts(s)
    try:
        for session in (0, sessions - 1, sessions + 5):
            for turn in range(3):
                for n in lengths:
                    text = tools.text(session, turn, n)
                    assert text == tool_output(s, session, turn, n)
                    made = tokenizer.made_text_ids(text)  # the ids it noted are the tokenizer's
                    assert made is None if n <= 0 else made.tolist() == tokenizer.encode(text)
    finally:
        tokenizer._MADE.clear()
