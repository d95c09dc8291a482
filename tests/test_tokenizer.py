"""The shared tokenizer and chat template: determinism and the token-in/token-out prefix invariant."""

from hypothesis import given
from hypothesis import strategies as st

from sim import tokenizer as tok

roles = st.sampled_from(["system", "user", "assistant", "tool"])
texts = st.text(min_size=0, max_size=60)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=0, max_size=6)


@given(texts)
def test_encode_is_deterministic_and_whitespace_insensitive(text):
    assert tok.encode(text) == tok.encode(text)
    assert tok.encode(text) == tok.encode("  " + "\n".join(text.split()) + " ")
    assert len(tok.encode(text)) == len(text.split())


@given(messages, messages)
def test_render_is_additive(a, b):
    assert tok.render(a + b, add_generation_prompt=False) == tok.render(a, False) + tok.render(b, False)
    assert tok.render(a) == tok.render(a, False) + list(tok.GENERATION_PROMPT)


@given(messages, st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=1, max_value=200))
def test_prompt_plus_answer_is_the_rendered_conversation(history, seed, n):
    prompt = tok.render(history)
    text, out = tok.synth_answer(seed, n)
    assert len(out) == n and out[-1] == tok.IM_END
    following = [*history, {"role": "assistant", "content": text}]
    assert prompt + out == tok.render(following, add_generation_prompt=False)


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=0, max_value=300))
def test_synth_text_has_exactly_n_tokens(seed, n):
    assert len(tok.encode(tok.synth_text(seed, n))) == n
    assert tok.synth_text(seed, n) == tok.synth_text(seed, n)


def test_content_parts_and_none():
    assert tok.content_text(None) == ""
    assert tok.content_text([{"type": "text", "text": "a b"}, {"type": "image_url"}, "c"]) == "a b c"
    assert all(0 <= t < 2**32 for t in tok.encode("héllo wörld ☃ \u0000x"))


def test_vocabulary_words_are_distinct_tokens():
    words = tok.vocabulary()
    assert len(set(words)) == len(words) == tok.VOCAB_SIZE
    assert len({tok.word_id(w) for w in words}) == tok.VOCAB_SIZE
