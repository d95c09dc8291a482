"""The shared tokenizer and chat template: determinism and the token-in/token-out prefix invariant."""

import numpy as np
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from testbed_common import tokenizer as tok

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
    assert all(0 <= t < tok.VOCAB_IDS for t in tok.encode("héllo wörld ☃ \u0000x"))


def test_vocabulary_words_are_distinct_tokens():
    words = tok.vocabulary()
    assert len(set(words)) == len(words) == tok.VOCAB_SIZE
    assert len({tok.word_id(w) for w in words}) == tok.VOCAB_SIZE
    assert [tok.word_id(w) for w in words] == list(range(tok.FIRST_WORD_ID, tok.FIRST_WORD_ID + tok.VOCAB_SIZE))


@given(st.text(min_size=1, max_size=12).filter(lambda w: w.split() == [w])
       | st.sampled_from([*tok.vocabulary(), *tok.SPECIAL_TOKENS, "kalomix", "kalom", "KALOMI"]))
def test_every_word_has_an_id_of_a_real_vocabularys_size(word):
    """Ids fit a real model's vocabulary (at most 6 digits in JSON); a word outside the synthetic vocabulary
    never takes the id of one inside it (so generated text and prompt text stay distinguishable)."""
    i = tok.word_id(word)
    assert 0 <= i < tok.VOCAB_IDS
    if word in tok.SPECIAL_TOKENS:
        assert i == tok.SPECIAL_TOKENS[word]
    elif word in set(tok.vocabulary()):
        assert i == tok.FIRST_WORD_ID + tok.vocabulary().index(word)
    else:
        assert i >= tok.FIRST_WORD_ID + tok.VOCAB_SIZE


seeds64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def philox(seed: int, stream: int = 0) -> np.random.Generator:
    """A fresh generator of the documented key: ``(seed, stream)``, each mod 2**64."""
    m64 = 0xFFFFFFFFFFFFFFFF
    return np.random.Generator(np.random.Philox(key=(seed & m64) + ((stream & m64) << 64)))


@given(seeds64, st.integers(min_value=-1, max_value=300), st.integers(min_value=0, max_value=2**64 - 1))
def test_synth_words_are_the_documented_numpy_draws(seed, n, stream):
    """Words are ``Generator(Philox(key=(seed, stream))).integers(0, VOCAB_SIZE, size=n)`` vocabulary indices."""
    words, ids = tok.vocabulary(), [tok.word_id(w) for w in tok.vocabulary()]
    want = philox(seed, stream).integers(0, tok.VOCAB_SIZE, size=max(n, 0)).tolist()
    assert tok.synth_indices(seed, n, stream).tolist() == want
    assert tok.synth_text(seed, n, stream) == " ".join(words[i] for i in want)
    want0 = philox(seed).integers(0, tok.VOCAB_SIZE, size=max(n, 0)).tolist()
    assert tok.synth_words(seed, n) == ([words[i] for i in want0], [ids[i] for i in want0])


@given(seeds64, st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=2**64 - 1))
def test_a_noted_synth_text_is_synth_text_and_gives_its_ids_once(seed, n, stream):
    try:
        text = tok.synth_noted_text(seed, n, stream)
        assert text == tok.synth_text(seed, n, stream)
        got = tok.made_text_ids(text)
        assert (got is None) if n == 0 else got.tolist() == tok.encode(text)
    finally:
        tok._MADE.clear()


@given(seeds64, st.integers(min_value=0, max_value=200))
def test_synth_answer_array_matches_synth_answer(seed, n):
    text, ids, idx = tok.synth_answer_array(seed, n)
    assert ids.dtype == np.int64 and (text, ids.tolist()) == tok.synth_answer(seed, n)
    assert idx.tolist() == tok.synth_indices(seed, max(n, 1) - 1).tolist()


@given(seeds64, st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=40))
def test_request_seed_depends_on_the_ids_not_their_container(seed, ids):
    arr = np.array(ids, dtype=np.int64)
    strided = np.repeat(arr, 2)[::2]
    assert tok.request_seed(seed, ids) == tok.request_seed(seed, arr) == tok.request_seed(seed, strided)
    assert tok.request_seed(seed, ids) == xxhash.xxh64_intdigest(arr.tobytes(), seed & 0xFFFFFFFFFFFFFFFF)


@given(st.lists(st.sampled_from(["<|im_start|>", "<|im_end|>", "<pad>", "kalomi", "x"]) | texts, max_size=8))
def test_encode_is_word_id_per_word_cold_and_warm(parts):
    text = " ".join(parts)
    want = [tok.word_id(w) for w in text.split()]
    assert tok.encode(text) == want  # maybe learning the words
    assert tok.encode(text) == want  # from the known words
    rendered = tok.render_message({"role": "tool", "content": text})
    assert rendered == [tok.IM_START, tok.word_id("tool"), *want, tok.IM_END]


def plain(state: dict) -> dict:
    """A bit generator's state with lists for its arrays (comparable with ``==``)."""
    return {k: plain(v) if isinstance(v, dict) else v.tolist() if isinstance(v, np.ndarray) else v
            for k, v in state.items()}


@given(seeds64, seeds64, seeds64, st.integers(min_value=0, max_value=2**64 - 1))
def test_keyed_generator_is_a_fresh_philox_of_the_key_whatever_came_before(before, seed, stream, before_stream):
    """The reused per-thread generator is re-keyed to exactly a fresh ``Philox`` of the key, even after draws that
    left a buffered 32-bit half and a partly used block behind."""
    used = tok.keyed_generator(before, before_stream)
    used.integers(0, 7, size=3, dtype=np.uint32)  # leaves has_uint32 set and the buffer part-used
    fresh = tok.keyed_generator(seed, stream)
    assert plain(fresh.bit_generator.state) == plain(philox(seed, stream).bit_generator.state)
    assert fresh.integers(0, 7, size=5, dtype=np.uint32).tolist() == philox(seed, stream).integers(
        0, 7, size=5, dtype=np.uint32).tolist()
    assert tok.keyed_generator(seed, stream).exponential(size=3).tolist() == philox(seed, stream).exponential(
        size=3).tolist()


def test_draws_are_the_same_in_every_process():
    """The answers of a seed do not depend on the process (nor on hash randomisation): a pinned draw."""
    assert tok.synth_indices(0, 5).tolist() == [142, 47, 2506, 989, 1497]
    assert tok.synth_indices(2**64 - 1, 3, 7).tolist() == [646, 306, 2068]


@given(st.lists(st.integers(0, tok.VOCAB_SIZE - 1), min_size=1, max_size=50), st.text(max_size=20))
def test_a_made_text_gives_its_tokenizer_ids_once(idx, other):
    """``remember_vocab_text`` is a memo of ``encode`` for texts made from vocabulary words: taken once, the same
    ids the tokenizer gives; a text nobody noted gives None (its caller tokenizes it)."""
    text = " ".join(tok.vocabulary()[i] for i in idx)
    tok.remember_vocab_text(text, np.array(idx))
    got = tok.made_text_ids(text)
    assert got is not None and got.dtype == np.int64 and got.tolist() == tok.encode(text)
    assert tok.made_text_ids(text) is None
    assert other == text or tok.made_text_ids(other) is None


def test_noted_texts_are_bounded_and_the_oldest_go_first():
    """A process whose tool texts are tokenized elsewhere (an external session server) holds only the newest."""
    pairs = [(i % 4096, (i * 7) % 4096) for i in range(3000)]  # distinct texts of two vocabulary words
    texts = [" ".join(tok.vocabulary()[j] for j in p) for p in pairs]
    try:
        for t, p in zip(texts, pairs, strict=True):
            tok.remember_vocab_text(t, np.array(p))
        assert len(tok._MADE) == tok._MADE_LIMIT
        assert tok.made_text_ids(texts[0]) is None
        assert tok.made_text_ids(texts[-1]).tolist() == tok.encode(texts[-1])
    finally:
        tok._MADE.clear()
