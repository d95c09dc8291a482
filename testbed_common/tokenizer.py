"""A deterministic word-level tokenizer and chat template, shared by every component.

Equal text gives equal token ids everywhere (session server, mock workers, simulator), which is
what makes radix-cache reuse measurable without a real tokenizer.

Rules:
- A word is a maximal run of non-whitespace characters (``str.split()``); whitespace is not a token.
- Special tokens have small fixed ids; the synthetic vocabulary's words (``vocabulary()``) have the ids
  ``FIRST_WORD_ID + index``; every other word hashes (xxh32) into the rest of ``[0, VOCAB_IDS)``, a real
  vocabulary's size, so there is no vocabulary file and no out-of-vocabulary word.
- The chat template renders each message on its own, so rendering is additive:
  ``render(a + b) == render(a) + render(b)``. A message is
  ``<|im_start|> role <content words> <|im_end|>`` and the generation prompt is
  ``<|im_start|> assistant``. A model answer is its content words followed by ``<|im_end|>``, so
  ``prompt_ids + output_ids == render(messages + [answer])``: the token-in/token-out prefix
  invariant holds by construction, and a worker that re-renders the messages gets the same ids.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xxhash

IM_START = 1
IM_END = 2
PAD = 0
SPECIAL_TOKENS: dict[str, int] = {"<pad>": PAD, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
FIRST_WORD_ID = 1000
EOS_TOKEN_ID = IM_END
# Ids are below this, as in a real model's vocabulary (Qwen2.5's 151,936 embedding rows; Llama 3 has 128,256):
# at most 6 digits in JSON, so the bodies that carry ids (input_ids, echoed prompt ids, records) have the size
# they have against real workers.
VOCAB_IDS = 151_936

# the synthetic vocabulary (what simulated models and tools emit): every word of three of these syllables
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "zu", "gi", "fo", "he", "jo", "wy")
VOCAB_SIZE = 4096
_SYLLABLE_INDEX = {x: i for i, x in enumerate(_SYLLABLES)}
_HASHED_FIRST = FIRST_WORD_ID + VOCAB_SIZE
_HASHED_SPACE = VOCAB_IDS - _HASHED_FIRST


def _vocab_index(word: str) -> int | None:
    """Index of a synthetic vocabulary word (``vocabulary()[i]``), else None."""
    if len(word) != 6:
        return None
    a, b, c = (_SYLLABLE_INDEX.get(word[i : i + 2]) for i in (0, 2, 4))
    if a is None or b is None or c is None:
        return None
    return a + 16 * b + 256 * c


@functools.lru_cache(maxsize=1 << 18)
def word_id(word: str) -> int:
    """Token id of one whitespace-free word: the vocabulary words have ids of their own (so no two of them
    share one); any other word hashes into the rest of the id space."""
    special = SPECIAL_TOKENS.get(word)
    if special is not None:
        return special
    index = _vocab_index(word)
    if index is not None:
        return FIRST_WORD_ID + index
    return _HASHED_FIRST + xxhash.xxh32_intdigest(word.encode("utf-8", "surrogatepass")) % _HASHED_SPACE


_KNOWN: dict[str, int] = {}  # word -> id for words seen before (a plain dict lookup is cheaper than word_id's)
_KNOWN_LIMIT = 1 << 18


def _word_ids(words: list[str]) -> list[int]:
    try:
        return list(map(_KNOWN.__getitem__, words))
    except KeyError:
        ids = list(map(word_id, words))
        if len(_KNOWN) + len(ids) > _KNOWN_LIMIT:
            _KNOWN.clear()
        _KNOWN.update(zip(words, ids, strict=True))
        return ids


def encode(text: str) -> list[int]:
    """Token ids of a text: one id per whitespace-separated word."""
    return _word_ids(text.split())


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, a list of parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def render_message(message: Mapping[str, Any]) -> list[int]:
    """Token ids of one chat message under the template."""
    role = str(message.get("role", "user"))
    return [IM_START, word_id(role), *_word_ids(content_text(message.get("content")).split()), IM_END]


GENERATION_PROMPT: tuple[int, ...] = (IM_START, word_id("assistant"))


def render(messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation, optionally followed by the generation prompt."""
    ids: list[int] = []
    for m in messages:
        ids.extend(render_message(m))
    if add_generation_prompt:
        ids.extend(GENERATION_PROMPT)
    return ids


# --- deterministic "model output" -------------------------------------------------------------

@functools.cache
def _vocab() -> tuple[tuple[str, ...], np.ndarray]:
    words = []
    for i in range(VOCAB_SIZE):
        a, b, c = i % 16, (i // 16) % 16, (i // 256) % 16
        words.append(_SYLLABLES[a] + _SYLLABLES[b] + _SYLLABLES[c])
    ids = np.array([word_id(w) for w in words], dtype=np.int64)
    _KNOWN.update(zip(words, ids.tolist(), strict=True))
    return tuple(words), ids


@functools.cache
def _vocab_spaced() -> np.ndarray:
    """Every vocabulary word followed by one space, as fixed-width bytes (all words are 6 ASCII letters)."""
    words = _vocab()[0]
    width = len(words[0]) + 1
    assert all(len(w) + 1 == width and w.isascii() for w in words)
    return np.array([(w + " ").encode() for w in words], dtype=f"S{width}")


def vocabulary() -> tuple[str, ...]:
    """The words a simulated model or tool emits (synthetic, pronounceable, all distinct)."""
    return _vocab()[0]


_M64 = (1 << 64) - 1
_per_thread = threading.local()


def keyed_generator(seed: int, stream: int = 0) -> np.random.Generator:
    """This thread's one ``Generator``, its ``Philox`` keyed ``(seed, stream)`` (each mod 2**64) at counter zero:
    it draws what ``np.random.Generator(np.random.Philox(key=(seed % 2**64) + (stream % 2**64 << 64)))`` draws.
    Valid until the next call in the same thread: draw from it at once, never keep it.

    Every draw of the testbed's texts and answers comes from here (results version 2, docs/results-versions.md).
    Philox is counter-based: its 128-bit key *is* the seed, and distinct keys give independent streams with no
    seeding hash in between, so a seed that already is a hash (``request_seed``, ``stream_seed``) keys it as it is,
    and one stream seed plus an index (a session's turn) keys many streams at no cost. The key is set through the
    bit generator's public ``state`` property (the counter and the buffers reset with it). Measured with
    ``timeit`` (one 250-word draw, a loaded 2-core VM, so ratios rather than figures): re-keying ~1.3 µs, the
    whole draw ~9.5 µs; a fresh ``Philox(key=...)`` costs ~12 µs by itself (it gathers OS entropy for a
    ``SeedSequence`` the key then overrides), ``default_rng(seed)`` ~20 µs (SeedSequence hashing), and version
    1's draw, which rebuilt ``default_rng(seed)``'s PCG64 state on Python ints, ~22 µs. Per simulated request
    (``benchmarks/instr_bench.py --sessions 100``, ``direct`` on ``large``): 818.1 k instructions, as before.
    """
    try:
        gen, bitgen, state = _per_thread.philox
    except AttributeError:
        bitgen = np.random.Philox(key=0)
        gen = np.random.Generator(bitgen)
        state = bitgen.state  # counter zero, empty buffers: what every re-keying restores
        _per_thread.philox = gen, bitgen, state
    state["state"]["key"] = (seed & _M64, stream & _M64)
    bitgen.state = state
    return gen


def synth_indices(seed: int, n: int, stream: int = 0) -> np.ndarray:
    """Vocabulary indices of ``synth_words(seed, n)`` (uint32): ``n`` uniform integers in ``[0, VOCAB_SIZE)``
    from ``keyed_generator(seed, stream)``."""
    if n <= 0:
        return np.empty(0, dtype=np.uint32)
    return keyed_generator(seed, stream).integers(0, VOCAB_SIZE, size=n, dtype=np.uint32)


def _synth_text(idx: np.ndarray) -> str:
    """The words of vocabulary indices ``idx`` joined by single spaces (vectorised)."""
    if not len(idx):
        return ""
    return _vocab_spaced()[idx].tobytes()[:-1].decode("ascii")


def synth_words(seed: int, n: int) -> tuple[list[str], list[int]]:
    """``n`` deterministic words for a seed, with their token ids."""
    if n <= 0:
        return [], []
    words, ids = _vocab()
    idx = synth_indices(seed, n)
    return [words[i] for i in idx.tolist()], ids[idx].tolist()


def synth_text(seed: int, n: int, stream: int = 0) -> str:
    """A deterministic text of exactly ``n`` tokens (for tool outputs, prompts, tasks)."""
    return _synth_text(synth_indices(seed, n, stream))


def synth_noted_text(seed: int, n: int, stream: int = 0) -> str:
    """``synth_text(seed, n, stream)``, noted with ``remember_vocab_text``: a session server in this process takes
    its ids instead of tokenizing it again."""
    idx = synth_indices(seed, n, stream)
    text = _synth_text(idx)
    if n > 0:
        remember_vocab_text(text, idx)
    return text


def synth_answer(seed: int, completion_tokens: int) -> tuple[str, list[int]]:
    """A model answer of exactly ``completion_tokens`` tokens: content words then ``<|im_end|>``.

    Returns the content text (what ``choices[0].message.content`` carries) and the output ids
    (what ``meta_info.output_token_logprobs`` carries). ``completion_tokens`` is at least 1.
    """
    text, ids, _ = synth_answer_array(seed, completion_tokens)
    return text, ids.tolist()


def synth_answer_array(seed: int, completion_tokens: int) -> tuple[str, np.ndarray, np.ndarray]:
    """``synth_answer`` with the output ids as an int64 array, plus the content words' vocabulary indices
    (unsigned integers)."""
    idx = synth_indices(seed, max(completion_tokens, 1) - 1)
    ids = np.empty(len(idx) + 1, dtype=np.int64)
    _vocab()[1].take(idx, out=ids[:-1])
    ids[-1] = IM_END
    return _synth_text(idx), ids, idx


def request_seed(seed: int, prompt_ids: Sequence[int]) -> int:
    """A seed for a request's output: the same prompt and seed give the same answer."""
    arr = np.asarray(prompt_ids, dtype=np.int64)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return xxhash.xxh64_intdigest(arr, seed & 0xFFFFFFFFFFFFFFFF)


# Texts of vocabulary words (what the simulated tools and model emit) tokenized in numpy: every word of
# ``vocabulary()`` is three two-letter syllables, so a text of n words joined by single spaces is n rows of
# 7 bytes whose syllables index a table. Shorter texts are cheaper in the tokenizer's own Python.
VOCAB_TEXT_MIN_CHARS = 420  # 60 words: below this the tokenizer is about as fast (measured on `large`)
_ROW = np.dtype([("syl", "<u2", (3,)), ("sep", "u1")])
_NOT_A_SYLLABLE = -(1 << 40)


@functools.cache
def _vocab_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Per syllable position, 2-byte code -> offset into ``ids`` (negative: not a syllable); ``ids``: the word
    ids by syllable triple. None when the vocabulary is not built that way (then nothing takes the fast path)."""
    words = vocabulary()
    if not all(len(w) == 6 and w.isascii() and w.isalpha() for w in words):
        return None
    syl = sorted({w[i : i + 2] for w in words for i in (0, 2, 4)})
    ns = len(syl)
    pos = {x: k for k, x in enumerate(syl)}
    tables = [np.full(1 << 16, _NOT_A_SYLLABLE, np.int64) for _ in range(3)]
    for k, x in enumerate(syl):
        code = x.encode("ascii")
        for i, t in enumerate(tables):
            t[code[0] | code[1] << 8] = k * ns**i
    ids = np.full(ns**3, -1, np.int64)
    for w in words:
        ids[pos[w[:2]] + pos[w[2:4]] * ns + pos[w[4:]] * ns * ns] = word_id(w)
    if (ids < 0).any():  # not every syllable triple is a word
        return None
    ids.flags.writeable = False
    return tables[0], tables[1], tables[2], ids


# Texts this process made from vocabulary indices (the simulated tools' outputs), with their ids, until somebody
# tokenizes them: the session server then takes the ids instead of reading the text again. A memo of ``encode``
# (same ids by construction), so a text made elsewhere, or dropped from here, is simply tokenized.
_MADE: dict[str, np.ndarray] = {}
# texts held at most (the oldest go first): one per session between two of its turns in the simulator, and never
# more than ~15 MB when nobody takes them (a session server in another process)
_MADE_LIMIT = 2048


def remember_vocab_text(text: str, idx: np.ndarray) -> None:
    """Note that ``text`` is the vocabulary words ``idx`` (indices into ``vocabulary()``) joined by single spaces:
    the next ``made_text_ids(text)`` gives ``encode(text)`` as an int64 array without reading the text."""
    while len(_MADE) >= _MADE_LIMIT:
        try:
            del _MADE[next(iter(_MADE))]
        except (StopIteration, KeyError, RuntimeError):  # another thread took or noted one meanwhile
            break
    _MADE[text] = _vocab()[1].take(idx)


def made_text_ids(text: str) -> np.ndarray | None:
    """``encode(text)`` (int64) for a text noted by ``remember_vocab_text`` and not taken since, else None."""
    return _MADE.pop(text, None)


def vocab_text_ids(text: str) -> np.ndarray | None:
    """``encode(text)`` as an int64 array when ``text`` is vocabulary words joined by single spaces (no
    other whitespace), else None."""
    tables = _vocab_tables()
    if tables is None:
        return None
    try:
        b = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    n, r = divmod(len(b) + 1, 7)
    if r or not n:
        return None
    b += b" "
    if b[6::7].count(32) != n:  # a single space after every word (other bytes fail the syllable lookup)
        return None
    t0, t1, t2, ids = tables
    syl = np.frombuffer(b, _ROW)["syl"]
    at = t0[syl[:, 0]]
    at += t1[syl[:, 1]]
    at += t2[syl[:, 2]]
    if at.min() < 0:
        return None
    return ids[at]


def render_ids(appended: list[Mapping[str, Any]]) -> list[int] | np.ndarray:
    """``render(appended, add_generation_prompt=True)``, contents whose ids are known (``made_text_ids``)
    taken as they are and long vocabulary-word contents tokenized in numpy (then an int64 array, else the
    tokenizer's list)."""
    parts: list[Any] | None = None
    for i, m in enumerate(appended):
        c = m.get("content")
        if type(c) is str and (
            (ids := made_text_ids(c)) is not None
            or (len(c) >= VOCAB_TEXT_MIN_CHARS and (ids := vocab_text_ids(c)) is not None)
        ):
            if parts is None:  # every part non-empty (an empty list would be float64 to numpy)
                parts = [render(appended[:i], add_generation_prompt=False)] if i else []
            parts += ((IM_START, word_id(str(m.get("role", "user")))), ids, (IM_END,))
        elif parts is not None:
            parts.append(render_message(m))
    if parts is None:
        return render(appended, add_generation_prompt=True)
    parts.append(GENERATION_PROMPT)
    return np.concatenate(parts, dtype=np.int64)
