"""``message_matches`` (with its shortcuts) is miles' field-by-field rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from session_server.messages import message_matches

empties = st.sampled_from([None, "", []])
field_values = st.one_of(empties, st.sampled_from(["a", "b", 0, 0.0, False, 1, True, float("nan"), [1], [1.0], {}]))
message_dicts = st.dictionaries(st.sampled_from(["role", "content", "reasoning_content", "tool_calls", "name"]),
                                field_values, max_size=5)


@given(message_dicts, message_dicts)
def test_message_equality_is_miles_field_by_field_rule(a, b):
    """Equal on role, content, reasoning_content and tool_calls, with None, "" and [] alike (miles'
    ``message_matches``), whatever shortcuts the implementation takes; values of any JSON type, NaN included."""
    def norm(v):
        return None if v is None or (isinstance(v, str | list) and len(v) == 0) else v

    want = all(norm(a.get(k)) == norm(b.get(k)) or (a.get(k) is None and b.get(k) is None)
               for k in ("role", "content", "reasoning_content", "tool_calls")) or a == b
    assert message_matches(a, b) == want
