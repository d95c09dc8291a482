"""What a mock worker answers: the JSON body or the stream events of one served request.

Bodies follow OpenAI/SGLang (``/v1/chat/completions``, ``/v1/completions``, ``/generate``), plus a top-level
``"sim"`` object (``arrival``, ``start``, ``first_token``, ``finish``, ``worker``, ``cached_tokens``,
``evicted_tokens``; see ``testbed_common.vtime``) in JSON answers and in the last stream event. ``meta_info``
(``output_token_logprobs`` as ``[logprob, token_id, null]``, ``prompt_tokens``, ``completion_tokens``,
``cached_tokens``; with HiCache also ``cached_tokens_details``) is always present, whatever ``return_meta_info``
says. Log-probabilities are deterministic
draws from the answer's seed. A stream groups the output tokens evenly into at most ``STREAM_CHUNKS`` content
events, each due at its last token's modelled time.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import xxhash

from sim.engine.types import HiCacheConfig, RequestTiming
from sim.worker.request import ParsedRequest
from testbed_common import fastjson, tokenizer, vtime

STREAM_CHUNKS = 16  # content events per streamed answer at most (tokens are grouped evenly)


def sim_object(timing: RequestTiming, worker: str, pd: dict[str, Any] | None = None,
               hicache: bool = False) -> dict[str, Any]:
    """The answer's ``"sim"`` object: its virtual timeline, the worker and its cache outcome (and a PD leg's
    ``"pd"`` figures: ``WorkerCore``'s module docstring). With HiCache (``hicache``): ``cached_tokens_details``
    (``device``, ``host``, ``storage``: they sum to ``cached_tokens``), ``load_back_seconds`` and
    ``prefetch_seconds`` (``IterationTiming``'s fields)."""
    out = {
        "arrival": timing.arrival,
        "start": timing.start,
        "first_token": timing.first_token,
        "finish": timing.finish,
        "worker": worker,
        "cached_tokens": timing.cached_tokens,
        "evicted_tokens": timing.evicted_tokens,
        **({"retractions": timing.retractions, "recomputed_tokens": timing.recomputed_tokens}
           if hasattr(timing, "retractions") else {}),
    }
    if hicache:
        t: Any = timing  # an IterationTiming: HiCache runs on the iteration-level engine only
        out["cached_tokens_details"] = {"device": t.cached_device, "host": t.cached_host, "storage": t.cached_storage}
        out["load_back_seconds"] = t.load_back_seconds
        out["prefetch_seconds"] = t.prefetch_seconds
    if pd is not None:
        out["pd"] = pd
    return out


STORAGE_BACKEND = "L3Store"  # ``cached_tokens_details.storage_backend``: SGLang writes its backend's class name


def cached_tokens_details(timing: Any, storage: bool) -> dict[str, Any] | None:
    """``meta_info.cached_tokens_details`` as SGLang writes it (``output_streamer.py``
    ``get_cached_tokens_details``): None without cached tokens; else ``device`` and ``host``, plus ``storage`` when
    the worker has an L3 or the tokens came from one (a PD decode relays its prefill's) and ``storage_backend`` when
    it has an L3."""
    if not timing.cached_tokens:
        return None
    details: dict[str, Any] = {"device": timing.cached_device, "host": timing.cached_host}
    if storage or timing.cached_storage:
        details["storage"] = timing.cached_storage
    if storage:
        details["storage_backend"] = STORAGE_BACKEND
    return details


def _logprobs(rseed: int, n: int) -> list[float]:
    """Deterministic plausible log-probabilities for an answer's tokens."""
    return _neg_round6(tokenizer.keyed_generator(rseed, 0x5EED_10C9).exponential(0.3, size=n))  # the words: stream 0


def _neg_round6(x: np.ndarray) -> list[float]:
    """``[round(-v, 6) for v in x.tolist()]``, bit for bit, vectorised for longer arrays.

    ``k / -1e6`` is the double nearest ``-k / 10**6`` (an exact quotient, correctly rounded), which is what
    ``round`` returns for the correctly rounded ``k = x * 10**6``. ``rint`` of the rounded product gives that
    ``k`` unless the product lies near a half-integer: below 2**32 the product is off by at most 2**-21, so
    anything within 1e-5 of a half-integer is recomputed with ``round`` (and larger values all are).
    """
    if len(x) < 16:
        return [round(-v, 6) for v in x.tolist()]
    z = x * 1e6
    k = _rint(z)
    if not _max_of(_abs(k)) < 2.0**32:  # also NaN
        return [round(-v, 6) for v in x.tolist()]
    out: list[float] = (k / -1e6).tolist()
    z -= k
    off = _abs(z, out=z)  # <= 0.5
    if _max_of(off) > 0.5 - 1e-5:
        xs = x.tolist()
        for i in np.flatnonzero(off > 0.5 - 1e-5).tolist():
            out[i] = round(-xs[i], 6)
    return out


_rint, _abs, _max_of = np.rint, np.absolute, np.maximum.reduce


@functools.cache
def _logprob_columns() -> tuple[tuple[str, ...], tuple[list[int], ...], list[Any]]:
    """The ``token`` and ``bytes`` of an OpenAI ``logprobs.content`` entry per vocabulary word, then for
    ``<|im_end|>`` (index ``VOCAB_SIZE``), and the empty ``top_logprobs`` list. Answers share these lists
    (fewer objects to build and free per token): they are read-only, as is every answer body."""
    tokens = (*tokenizer.vocabulary(), _IM_END_TEXT)
    return tokens, tuple(list(t.encode()) for t in tokens), []


_IM_END_TEXT = "<|im_end|>"


class Answer(fastjson.ChatAnswer):
    """Builds the JSON body or the stream events of one served request.

    Only what every caller needs is made up front (the timing, the text, the output ids as an array); the
    per-token objects of a body (logprobs, ``[logprob, id, None]`` entries), its id and the body itself wait for
    the first call that needs them, and give the same values whenever that is: everything they depend on is
    fixed here. As a ``fastjson.ChatAnswer`` (``Reply.answer``) a chat answer is handed over typed, its body built
    only if somebody reads it (the HTTP adapter, to write it)."""

    def __init__(
        self,
        req: ParsedRequest,
        timing: RequestTiming,
        text: str,
        output_arr: np.ndarray,
        rseed: int,
        vocab_idx: np.ndarray | None,
        *,
        worker: str,
        model_name: str,
        serial: int,
        finish_reason: str = "stop",
        pd: dict[str, Any] | None = None,
        hicache: HiCacheConfig | None = None,
    ) -> None:
        self.req, self.timing = req, timing
        self.text, self.output_ids = text, output_arr
        self.output_ids.flags.writeable = False
        self.vocab_idx = vocab_idx  # the content words' vocabulary indices (synth_answer_array)
        self.worker, self.model_name = worker, model_name
        self._rseed, self._serial = rseed, serial  # with the worker: the answer id when the request has no rid
        self._words: list[str] | None = None
        self._body: dict[str, Any] | None = None
        self._id: str | None = None
        self._lps: list[float] | None = None
        self._output_list: list[int] | None = None
        self.created = int(timing.arrival)
        self.message = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None}
        # "stop" (the last token is <|im_end|>) or "length" (a PD prefill leg: its one token, then the decode's)
        self.finish_reason = finish_reason
        self.matched_stop = tokenizer.IM_END if finish_reason == "stop" else None
        self.sim = sim_object(timing, worker, pd, hicache is not None)
        self._details = cached_tokens_details(timing, hicache.storage) if hicache is not None else None
        self._hicache = hicache is not None

    # built on first use (plain properties: functools.cached_property takes a lock per read on Python 3.11)
    @property
    def id(self) -> str:
        if self._id is None:
            req = self.req
            if req.rid:
                self._id = req.rid
            else:
                prefix = {"chat": "chatcmpl", "completions": "cmpl", "generate": "gen"}[req.route]
                key = f"{self.worker}/{self._serial}/{self._rseed}".encode()
                self._id = f"{prefix}-{xxhash.xxh64_hexdigest(key)}"
        return self._id

    @property
    def lps(self) -> list[float]:
        if self._lps is None:
            self._lps = _logprobs(self._rseed, len(self.output_ids))
        return self._lps

    @property
    def output_list(self) -> list[int]:
        if self._output_list is None:
            self._output_list = self.output_ids.tolist()
        return self._output_list

    @property
    def prompt_ids(self) -> np.ndarray:  # type: ignore[override]
        """``prompt_token_ids``: the request's read-only int64 ids, the caller's own array when it sent one."""
        return self.req.prompt_ids

    def value(self) -> dict[str, Any]:
        if self._body is None:
            self._body = self.body()
        return self._body

    def usage(self) -> dict[str, Any]:
        p, c = self.timing.prompt_tokens, self.timing.output_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": self.timing.cached_tokens},
        }

    def meta_info(self, upto: int | None = None) -> dict[str, Any]:
        n = len(self.output_ids) if upto is None else upto
        t = self.timing
        meta = {
            "id": self.id,
            "finish_reason": self._meta_finish_reason() if n == len(self.output_ids) else None,
            "prompt_tokens": t.prompt_tokens,
            "completion_tokens": n,
            "cached_tokens": t.cached_tokens,
            "output_token_logprobs": [
                [lp, tid, None] for lp, tid in zip(self.lps[:n], self.output_list[:n], strict=True)
            ],
            "e2e_latency": t.finish - t.arrival,
            "queue_time": t.start - t.arrival,
            "weight_version": "default",
        }
        if self._hicache:
            meta["cached_tokens_details"] = self._details
        return meta

    def _meta_finish_reason(self) -> dict[str, Any]:
        if self.finish_reason == "stop":
            return {"type": "stop", "matched": tokenizer.IM_END}
        return {"type": "length", "length": len(self.output_ids)}

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = self.text.split() if self.text else []
        return self._words

    def _openai_logprobs(self) -> dict[str, Any]:
        n = len(self.output_ids)
        assert len(self.lps) == n
        if self.vocab_idx is not None and len(self.vocab_idx) == n - 1:
            tokens, nbytes, no_top = _logprob_columns()
            idx = self.vocab_idx.tolist()
            idx.append(len(tokens) - 1)  # <|im_end|>
            entries = [
                {"token": tokens[i], "logprob": lp, "bytes": nbytes[i], "top_logprobs": no_top}
                for i, lp in zip(idx, self.lps, strict=True)
            ]
        else:
            words = self.words[:n] + [_IM_END_TEXT] * (n - len(self.words))
            entries = [
                {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []}
                for tok, lp in zip(words, self.lps, strict=True)
            ]
        return {"content": entries}

    def body(self) -> dict[str, Any]:
        r = self.req
        if r.route == "generate":
            out: dict[str, Any] = {
                "text": self.text,
                "output_ids": list(self.output_list),
                "meta_info": self.meta_info(),
            }
        elif r.route == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": self.message,
                "logprobs": self._openai_logprobs() if r.logprobs else None,
                "finish_reason": self.finish_reason,
                "matched_stop": self.matched_stop,
            }
            if r.return_prompt_token_ids:
                choice["prompt_token_ids"] = self.req.prompt_ids
            choice["meta_info"] = self.meta_info()
            out = {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model_name,
                "choices": [choice],
                "usage": self.usage(),
            }
        else:
            choice = {
                "index": 0,
                "text": self.text,
                "logprobs": None,
                "finish_reason": self.finish_reason,
                "matched_stop": self.matched_stop,
                "meta_info": self.meta_info(),
            }
            if r.return_prompt_token_ids:
                choice["prompt_token_ids"] = self.req.prompt_ids
            out = {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model_name,
                "choices": [choice],
                "usage": self.usage(),
            }
        out[vtime.SIM_RESPONSE_FIELD] = self.sim
        return out

    def _pieces(self) -> list[int]:
        """Token end indices of the content events (tokens grouped evenly into <= STREAM_CHUNKS events)."""
        n = len(self.output_ids)
        k = min(n, STREAM_CHUNKS)
        return [round(n * (i + 1) / k) for i in range(k)]

    def _time_of(self, end: int) -> float:
        t, n = self.timing, len(self.output_ids)
        if n <= 1 or end >= n:
            return t.finish
        return min(t.finish, t.first_token + (t.finish - t.first_token) * (end - 1) / (n - 1))

    def events(self) -> tuple[list[dict[str, Any]], list[float]]:
        r, t = self.req, self.timing
        events: list[dict[str, Any]] = []
        times: list[float] = []
        ends = self._pieces()
        nw = len(self.words)

        def text_upto(end: int) -> str:
            return " ".join(self.words[: min(end, nw)])

        if r.route == "generate":
            for end in ends:
                events.append(
                    {"text": text_upto(end), "output_ids": self.output_list[:end], "meta_info": self.meta_info(end)}
                )
                times.append(self._time_of(end))
            events[-1][vtime.SIM_RESPONSE_FIELD] = self.sim
            return events, times
        obj = "chat.completion.chunk" if r.route == "chat" else "text_completion"
        base = {"id": self.id, "object": obj, "created": self.created, "model": self.model_name}
        if r.route == "chat":
            events.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
            times.append(t.first_token)
        prev = ""
        for i, end in enumerate(ends):
            cur = text_upto(end)
            delta, prev = cur[len(prev) :], cur
            last = i == len(ends) - 1
            finish = self.finish_reason if last else None
            if r.route == "chat":
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": delta},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            else:
                choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
            if last:
                choice["matched_stop"] = self.matched_stop
                if r.return_prompt_token_ids:
                    choice["prompt_token_ids"] = self.req.prompt_ids
                choice["meta_info"] = self.meta_info()
            events.append({**base, "choices": [choice]})
            times.append(self._time_of(end))
        if r.include_usage:
            events.append({**base, "choices": [], "usage": self.usage()})
            times.append(t.finish)
        events[-1][vtime.SIM_RESPONSE_FIELD] = self.sim
        return events, times
