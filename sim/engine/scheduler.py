"""The iteration-level worker engine: one SGLang worker's scheduler, stepped from event to event.

``IterationEngine.submit(now, prompt_ids, output_ids)`` only enqueues; ``next_event_time()`` tells when
the engine next decides something; ``advance(until)`` runs every scheduling decision up to ``until``
and returns the requests finished by then. Pure: no I/O, no clock, time passed in. The caller's order
is the semantics: ``submit(now)`` first runs the decisions before ``now``, so a request submitted at
``t`` is seen by the first decision at or after ``t`` (SGLang receives requests at the top of each
scheduler loop).

What SGLang does (0.5.23, the wheel's ``srt/``), and what is followed here:

- **The loop** (``managers/scheduler.py``, ``get_next_batch_to_run``): the last prefill batch's requests
  join the running batch (a still-chunked request stays out of it); a prefill batch is built if it can
  be (``get_new_batch_prefill``) and runs first; otherwise one decode step over the running batch
  (``update_running_batch``). Prefill and decode never share a forward unless ``enable_mixed_chunk``
  and chunked prefill are both on (``Scheduler.is_mixed_chunk``); then the running requests ride along
  in the prefill forward (``mix_with_running``) if their next token's KV fits; a mixed step never
  retracts and never decays the ratio.
- **The waiting queue** is FCFS (``schedule_policy`` defaults to ``fcfs``; ``SchedulePolicy.calc_priority``
  leaves the order alone); retracted requests go to its back (``_add_request_to_queue``).
- **Admission** (``managers/schedule_policy.py``, ``PrefillAdder`` with ``mem_cache/prefill_budget.py``'s
  ``PrefillBudget``): the chunked request first (``add_chunked_req``: it keeps its place, its next chunk
  is ``min(rem_chunk_tokens, remaining_total)``), then the waiting queue in order (``add_one_req``):
  a request is admitted iff ``extend + min(max_new - generated, 4096) + page < remaining_total``, where
  ``remaining_total = free + evictable - offset``, the request's own matched prefix pinned (not
  evictable), and ``offset`` starts at ``sum(min(max_new - generated, 4096) * new_token_ratio)`` over the
  running requests (``_get_running_request_total_token_offset``) and grows by ``extend + page + reserve``
  per admitted request, the reserve being ``min(max_new, 4096)`` (``_select_prefill_admission``; 0 for a
  chunk that is not the last). A prompt longer than ``rem_chunk_tokens`` is cut there and becomes the
  chunked request. The pass stops when ``rem_input_tokens`` (``max_prefill_tokens``) or
  ``rem_chunk_tokens`` run out (``budget_state`` OTHER), at the first refused request (NO_TOKEN), or at
  ``max_running_requests`` (``get_num_allocatable_reqs``). NO_TOKEN and a full batch set
  ``batch_is_full``, which skips every later prefill attempt until a request leaves the running batch or
  a prefill batch (``filter_batch``), so **a waiting request never becomes admissible while the batch is
  unchanged**: the ratio's decay matters only at the next finish, retraction or chunk.
- **new_token_ratio** (``scheduler_components/new_token_ratio_tracker.py``): starts at ``0.7 *
  schedule_conservativeness``, decays by ``(init - min) / 600`` per decode step that did not retract,
  floor ``0.14 * init``; after a retraction it becomes ``(sum generated + 20 * batch) / (sum max_new + 1)``
  over the requests kept (``estimate_new_token_ratio_after_retract``), at most 1; an idle engine resets
  it to ``init`` (``Scheduler.on_idle``).
- **Decode KV and retraction** (``managers/schedule_batch.py``): each decode step needs one token per
  running request (``check_decode_mem``: free after evicting the LRU cache). If it does not fit,
  ``retract_decode`` sorts the batch by ``(generated, -prompt)``, descending, and retracts from the end
  (fewest generated tokens first, then longest prompt; ties: the later one in the batch) at least one
  request and until the rest fits, keeping at least one. ``release_req`` frees the request's KV without
  inserting its decoded tokens into the tree (``release_kv_cache(checkpoint=False)``: "we need the space
  instantly"); what its prefill put in the tree stays, unlocked, and is evicted LRU like any cache
  (``evict_from_tree_cache`` makes ``remaining * 20`` tokens free at once). The request keeps its
  generated tokens and is later re-prefilled over prompt + generated, from whatever the tree still
  holds (``reset_for_retract``, ``init_next_round_input``).
- **The radix tree** (``mem_cache/common.py``): each prefill chunk's tokens enter the tree when the
  chunk is done, locked by the request (``checkpoint_kv_cache``, SGLang's ``cache_unfinished_req``); at
  finish prompt + output up to the last token with KV enter it and the lock is released
  (``release_kv_cache(checkpoint=True)``, SGLang's ``cache_finished_req``): the last sampled token never
  gets KV, so a request leaves ``prompt + output - 1`` tokens. Matching covers ``fill[:-1]`` (at least one
  token is computed). LRU eviction of unlocked leaves is ``radix.RadixCache``'s; a request's node is
  unlocked just before its checkpoint is inserted, so a session's leaf grows in place (radix.py's
  documented divergence: one node per session instead of SGLang's one per turn, same matched lengths).

Durations (``latency.py``, times ``config.slowdown``): a prefill forward of several requests' chunks
costs ``max(prefill_floor, prefill_per_token * sum(new)) + sum(attention_per_token2 * new * (cached +
new / 2))``: one weight read and one GEMM over all the batch's tokens (what the floor and the linear
term model), attention per sequence over its own context. It equals ``prefill_time`` for one request,
and chunks of one prompt sum to its unchunked attention exactly (a chunk's ``cached`` includes the
earlier chunks). A decode step is ``decode_step_time(batch, context)``, ``context`` counting each
request's KV including the token it writes in this step; a mixed forward is the prefill form over the
prefill tokens plus the decode rows as extra linear tokens plus the decode step's per-sequence and
context terms. Alone, a request's TTFT and finish are therefore the arrival-time ``Engine``'s closed forms.

**Event-to-event.** A decode step changes nothing that the next decision looks at, unless a request
finishes, the pool runs out, or a new request could be tried (``batch_is_full`` clear and an arrival).
So a decision that decodes plans a segment of ``k = min(steps to the first finish, steps the free +
evictable KV allows)`` steps; its duration is ``k * (floor + per_seq * B + per_ctx * C0) + per_ctx * B *
k * (k - 1) / 2`` (times slowdown; the context sum grows by ``B`` a step) and its effects (KV, evictions,
ratio decay, tokens) are applied at its end in O(batch). A ``submit`` into a segment that could react
to it (``batch_is_full`` clear) cuts the segment at the first step boundary at or after the arrival;
``load`` applies the steps that ended by its time. The ratio is kept as a base and a step count, so a
run of ``k`` steps and ``k`` single steps give the same value. A decode step's KV is taken when the
step ends (SGLang allocates it as the step starts; no decision falls in between, only a ``load``
during the step sees the difference).

HiCache (``config.hicache``; ``hicache.py``, docs/engine.md "HiCache"): a host part after the device match is
loaded back in the prefill forward (``max(compute, load / pcie)``), inserts and evictions back pages up per the
write policy, and a request whose L3 prefetch the policy still waits for is skipped by the admission pass.

Simplifications (and why):
- ``max_new_tokens`` is the request's exact output length (the simulator knows it; SGLang's clients
  usually send a larger limit, which only makes SGLang's reserve larger).
- Only FCFS (SGLang's default); no priorities, no overlap scheduler (its one-step lag of results), no
  ``prefill_delayer``, no speculative decoding; KV is counted in tokens (a page only rounds the radix
  match and is the per-request overhead of the admission check). The waiting queue's prefixes are not
  matched (so not LRU-touched) at every pass.
- A request whose ``prompt + output + 1`` is not below the pool is refused at ``submit`` (``ValueError``):
  SGLang refuses over-long inputs too (``validate_input_length``), and no schedule could admit it.
- Where SGLang would abort (the last running request cannot grow even alone, which needs a chunked
  prefill holding the rest of the pool), that request is retracted instead, so every request finishes.
  A chunk never takes more than the free + evictable KV (SGLang's continuing chunk may and then fails).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from .core import GEN_THROUGHPUT_WINDOW, _join
from .hicache import HiCacheTier, Prefetch
from .radix import Node, RadixCache, TokenIds, as_ids
from .storage import StorageTier, page_keys
from .types import EngineLoad, EngineStats, FinishedRequest, IterationTiming, WorkerConfig

_UNBOUNDED = 1 << 62  # the pool size standing for "no capacity"


class _Req:
    """One request's scheduling state (SGLang's ``Req``, reduced to what scheduling reads)."""

    __slots__ = (
        "arrival",
        "cached",
        "computed",
        "evicted",
        "extend_end",
        "finish",
        "first_scheduled",
        "first_token",
        "generated",
        "handle",
        "hit_pages",
        "keys",
        "kv_refused_at",
        "last_extend",
        "load",
        "load_back_seconds",
        "n_out",
        "n_prompt",
        "node",
        "prefetch",
        "prefetch_seconds",
        "prefix",
        "private",
        "ready",
        "recomputed",
        "retractions",
        "seq",
        "storage_span",
        "tiers",
    )

    def __init__(self, handle: int, arrival: float, seq: np.ndarray, n_prompt: int, n_out: int) -> None:
        self.handle = handle
        self.arrival = arrival
        self.seq = seq  # prompt + output ids; the fill of a round is seq[:n_prompt + generated]
        self.n_prompt = n_prompt
        self.n_out = n_out
        self.generated = 0  # output tokens sampled so far (SGLang's len(output_ids))
        self.prefix = 0  # fill tokens whose KV is in the tree, locked by this request
        self.extend_end = 0  # where the prefill forward in flight ends
        self.node: Node | None = None  # the locked tree node ending at ``prefix``
        self.private = 0  # decode KV outside the tree
        self.computed = 0  # tokens that had KV before the last retraction
        self.first_scheduled = math.nan
        self.first_token = math.nan
        self.finish = math.nan
        self.cached = -1  # prompt tokens found in the tree at the first admission
        self.evicted = 0
        self.retractions = 0
        self.recomputed = 0
        self.kv_refused_at = math.nan
        self.last_extend = 0  # tokens computed in its last prefill forward
        self.ready = math.nan  # decode role: when the prefill's KV transfer is complete
        # HiCache (docs/engine.md, "HiCache")
        self.keys: list[bytes] | None = None  # page keys of ``seq``'s full pages, computed when first needed
        self.load = 0  # host tokens the prefill forward in flight loads back to the GPU (before its extend)
        self.hit_pages = -1  # device pages matched at the last admission, until its first insert counts their hit
        self.prefetch: Prefetch | None = None  # its L3 -> host prefetch, until an admission pass ends it
        self.storage_span = (0, 0)  # (first page, pages) that prefetch brought into host memory
        self.tiers = (0, 0, 0)  # cached tokens at the first admission: device, host, storage
        self.load_back_seconds = 0.0
        self.prefetch_seconds = 0.0

    @property
    def fill(self) -> int:
        return self.n_prompt + self.generated


class IterationEngine:
    """One worker as SGLang schedules it: waiting queue, chunked prefill, running batch, retraction."""

    def __init__(self, config: WorkerConfig | None = None, storage: StorageTier | None = None) -> None:
        self.config = config or WorkerConfig()
        cfg = self.config
        sc = cfg.scheduler
        if cfg.max_running_requests < 1:
            raise ValueError("max_running_requests must be >= 1")
        if cfg.slowdown <= 0:
            raise ValueError("slowdown must be > 0")
        if sc.chunked_prefill_size is not None and sc.chunked_prefill_size < 1:
            raise ValueError("chunked_prefill_size must be >= 1 or None")
        self.cache = RadixCache(capacity=None, page_size=cfg.page_size)  # the engine evicts
        if storage is not None and storage.page_size != cfg.page_size:
            raise ValueError(f"the storage's page size {storage.page_size} is not the worker's {cfg.page_size}")
        self.storage = storage  # the pool's shared L3 (used only with config.hicache.storage)
        self.stats = EngineStats()
        self._capacity = cfg.kv_capacity_tokens
        self._cap = _UNBOUNDED if self._capacity is None else self._capacity
        init = min(sc.init_new_token_ratio * sc.schedule_conservativeness, 1.0)
        self._ratio_min = min(init * sc.min_new_token_ratio_factor, 1.0)
        self._ratio_decay = (init - self._ratio_min) / sc.new_token_ratio_decay_steps
        self._mixed_chunk = sc.enable_mixed_chunk and sc.chunked_prefill_size is not None
        self._ratio_init = init
        self._ratio_base = init  # ratio = max(base - decay * decode steps since it was set, min)
        self._ratio_steps = 0
        self._waiting: list[_Req] = []
        self._running: list[_Req] = []
        self._chunked: _Req | None = None
        self._batch_is_full = False
        self._private = 0  # KV outside the tree: running requests' decode tokens and prefills in flight
        self._next_handle = 0
        self._t = math.inf  # time of the next decision (end of the forward in flight); inf when idle
        self._last = -math.inf  # the latest time seen
        # the forward in flight: a prefill batch (with the decode rows mixed into it), or a decode segment
        self._prefill: list[_Req] | None = None
        self._mixed: list[_Req] = []
        self._seg: tuple[float, int, int, float] | None = None  # decode segment: (start, steps, batch, 1st step's cost)
        self._seg_decays = True  # whether the segment's steps decay new_token_ratio
        self._finished: list[FinishedRequest] = []
        # the decode role of PD disaggregation (``docs/engine.md``, "PD"): pre-allocation, then the KV transfer
        self._decode = cfg.disaggregation_mode == "decode"
        self._prealloc: list[_Req] = []  # SGLang's DecodePreallocQueue, FCFS
        self._transfer: dict[int, _Req] = {}  # pre-allocated, waiting for the KV (DecodeTransferQueue), by handle
        self._preallocated: list[tuple[int, float, int]] = []  # (handle, at, decode prefix) not yet taken
        # tokens generated lately (gen_throughput): (start, decode steps, batch, 1st step's cost, tokens at start, end)
        self._recent: deque[tuple[float, int, int, float, int, float]] = deque()
        # HiCache: the host tier and the L3 links (None: off, bit for bit as without). A decode worker's host pool
        # is only the offload's staging buffer (decode_kvcache_offload_manager.py): it caches nothing.
        hc = cfg.hicache
        self._hicache: HiCacheTier | None = None
        if hc is not None:
            host_tokens = 0 if self._decode else hc.host_capacity_tokens(self._capacity, cfg.kv_bytes_per_token)
            self._hicache = HiCacheTier(hc, cfg.page_size, cfg.kv_bytes_per_token, host_tokens, storage, self.stats)
        self._prefetch_wake = math.inf  # the earliest time a request skipped for its prefetch may stop waiting
        self._idle_wake = False  # idle but for such a request: the next decision is that wake-up
        self._evict_at = 0.0  # the time of the eviction in progress (write_back backs up what it evicts)

    # ------------------------------------------------------------------ the public API
    @property
    def now(self) -> float:
        return self._last

    @property
    def new_token_ratio(self) -> float:
        r = self._ratio_base - self._ratio_decay * self._ratio_steps
        return r if r > self._ratio_min else self._ratio_min

    def submit(self, now: float, prompt_ids: TokenIds, output_ids: TokenIds) -> int:
        """Enqueue a request arriving at ``now`` (after running the decisions before ``now``); return its handle."""
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        now = max(now, self._last)
        prompt = as_ids(prompt_ids)
        output = as_ids(output_ids)
        n_prompt, n_out = len(prompt), len(output)
        refused = self.refusal(n_prompt, n_out)
        if refused is not None:
            raise ValueError(refused)
        self._run(now, inclusive=False)
        self._last = now
        if self._seg is not None and not (self._prealloc if self._decode else self._batch_is_full):
            self._cut_segment(now)
        req = _Req(self._next_handle, now, _join(prompt, output), n_prompt, n_out)
        self._next_handle += 1
        (self._prealloc if self._decode else self._waiting).append(req)
        if self._hicache is not None and not self._decode:
            self._issue_prefetch(req, now)
        st = self.stats
        st.requests += 1
        st.prompt_tokens += n_prompt
        st.output_tokens += n_out
        if self._t == math.inf or (self._idle_wake and now < self._t):
            self._t = now
        return req.handle

    def refusal(self, n_prompt: int, n_out: int) -> str | None:
        """Why ``submit`` would refuse a request of these sizes (None: it would not)."""
        if n_prompt == 0:
            return "empty prompt"
        if n_out == 0:
            return "a request generates at least one token"
        if n_prompt + n_out + 1 >= self._cap:
            return f"prompt + output ({n_prompt} + {n_out}) does not fit a pool of {self._capacity} tokens"
        if self._decode and self._prealloc_need(n_prompt, n_out) > self._cap:
            return (f"prompt ({n_prompt}) + max(reserved decode tokens, output) does not fit a pool of "
                    f"{self._capacity} tokens")
        return None

    def flush_cache(self) -> int:
        """Drop every unlocked cached token (SGLang's ``/flush_cache``, refused by the worker while requests are
        in flight); return how many."""
        return self.cache.flush()

    def next_event_time(self) -> float:
        """Time of the next scheduling decision (a forward ends or the engine wakes up); ``math.inf`` when idle."""
        return self._t

    def advance(self, until: float) -> list[FinishedRequest]:
        """Run every decision at or before ``until``; return the requests finished since the last call."""
        self._run(float(until), inclusive=True)
        if self._last < until < math.inf:
            self._last = until
        done, self._finished = self._finished, []
        return done

    # ------------------------------------------------------------------ PD: the decode role
    def take_preallocated(self) -> list[tuple[int, float, int]]:
        """The requests pre-allocated since the last call: (handle, time, decode prefix tokens) each, in order."""
        done, self._preallocated = self._preallocated, []
        return done

    def transfer_ready(self, handle: int, at: float) -> None:
        """The KV of pre-allocated request ``handle`` is complete at ``at``: it joins the running batch at the first
        decision at or after ``at`` (no prefill forward) and decodes its ``n_out`` tokens there."""
        req = self._transfer.get(handle)
        if req is None or not math.isnan(req.ready):
            raise KeyError(f"request {handle} is not waiting for its KV transfer")
        at = float(at)
        if not math.isfinite(at):
            raise ValueError(f"at must be finite, got {at}")
        req.ready = at
        self._wake_at(max(at, self._last))  # (the engine's past is decided)

    def abort_transfer(self, handle: int) -> bool:
        """The KV transfer of pre-allocated request ``handle`` failed (SGLang: ``KVPoll.Failed``, the request aborted):
        drop it and release its KV as ``release_kv_cache(checkpoint=False)`` does, inserting nothing (its matched
        prefix is unlocked and stays cached). False, and nothing changes, if ``handle`` is not waiting for its KV."""
        req = self._transfer.pop(handle, None)
        if req is None:
            return False
        self._preallocated = [p for p in self._preallocated if p[0] != handle]
        self._private -= req.private + req.prefix % self.config.page_size
        req.private = 0
        if req.node is not None:
            self.cache.unlock(req.node)
            req.node = None
        self._batch_is_full = False
        if self._prealloc or self._waiting:  # the freed KV may admit them: a decision now
            self._wake_at(self._last)
        return True

    def _wake_at(self, at: float) -> None:
        """Make a decision happen at the first step boundary at or after ``at`` (a transfer's end)."""
        if self._t == math.inf:
            self._t = at
        elif self._seg is not None and self._t > at:
            self._cut_segment(at)

    def disagg_queues(self) -> tuple[int, int, int]:
        """SGLang's decode queues: pre-allocation, transfer, retracted (here: retracted requests wait to be
        prefilled again, in the waiting queue)."""
        return len(self._prealloc), len(self._transfer), len(self._waiting) if self._decode else 0

    def _prealloc_need(self, n_prompt: int, n_out: int) -> int:
        """KV a lone request needs to be pre-allocated on an empty decode engine (``_required_admission_tokens``)."""
        cfg = self.config
        return n_prompt + max(cfg.num_reserved_decode_tokens, min(n_out, cfg.scheduler.clip_max_new_tokens))

    def _process_decode_queue(self, t: float) -> None:
        """SGLang's ``process_decode_queue``: pre-allocate what fits (not while retracted requests wait, as SGLang
        waits for its retracted queue), then the requests whose KV arrived join the running batch (the prebuilt
        batch: no forward, merged before the next decode step)."""
        if self._prealloc and not self._waiting:
            self._preallocate(t)
        if self._transfer:
            arrived = [r for r in self._transfer.values() if r.ready <= t]  # pre-allocation order
            for req in arrived:
                del self._transfer[req.handle]
                self._running.append(req)
            if arrived:
                self._batch_is_full = False

    def _preallocate(self, t: float) -> None:
        """``DecodePreallocQueue.pop_preallocated`` (one page per token, no SWA, no HiCache), FCFS: a request is
        pre-allocated iff ``max(alloc + reserved, prompt - prefix + min(max_new, 4096) - retractable) <= available -
        max(reserved * active, need_single)`` (``_required_admission_tokens``, ``_allocatable_token_budgets``):
        ``alloc`` = prompt - its decode radix match, ``retractable`` = the running batch's prompt + generated
        tokens, ``active`` = running + pre-allocated requests, ``need_single`` = the largest ``min(max_new, 4096)
        + prompt - retractable`` over the running batch, ``available`` = free KV (+ evictable with the decode radix
        cache). Its prompt's KV (beyond the match) is allocated then; it stops at the first that does not fit."""
        cfg = self.config
        clip = cfg.scheduler.clip_max_new_tokens
        reserved = cfg.num_reserved_decode_tokens
        radix = cfg.decode_radix_cache
        cache = self.cache
        running = self._running
        retractable = 0
        for r in running:
            retractable += r.n_prompt + r.generated
        need_single = max((min(r.n_out, clip) + r.n_prompt - retractable for r in running), default=0)
        in_flight = len(self._prefill) if self._prefill is not None else 0
        taken = 0
        for req in self._prealloc:
            active = len(running) + len(self._transfer) + in_flight
            if active >= cfg.max_running_requests:  # req_to_token_pool slots
                break
            prefix, node = cache.match(req.seq[: req.n_prompt - 1], t) if radix else (0, None)
            if node is not None:
                cache.lock(node)
            available = self._free() + (cache.evictable_tokens if radix else 0)
            allocatable = available - max(reserved * active, need_single)
            alloc = req.n_prompt - prefix
            required = max(alloc + reserved, alloc + min(req.n_out, clip) - retractable)
            if required > allocatable:
                if node is not None:
                    cache.unlock(node)
                if math.isnan(req.kv_refused_at):
                    req.kv_refused_at = t
                break
            req.evicted += self._allocate(alloc, t)
            req.private = alloc
            req.prefix = prefix
            req.node = node
            self._admit(req, t, prefix)
            self._transfer[req.handle] = req
            self._preallocated.append((req.handle, t, prefix))
            taken += 1
        if taken:
            del self._prealloc[:taken]
            self._note_peak()

    # ------------------------------------------------------------------ the loop
    def _run(self, until: float, inclusive: bool) -> None:
        while self._t < until or (inclusive and self._t == until != math.inf):
            self._decide(self._t)

    def _decide(self, t: float) -> None:
        """One scheduler iteration at ``t``: apply the forward that ends now, then start the next one."""
        self._idle_wake = False
        if self._prefill is not None:
            self._end_prefill(t)
        elif self._seg is not None:
            self._end_segment(t)
        if self._decode:
            self._process_decode_queue(t)
            self._schedule(t)
            if self._transfer:  # the next transfer to end, if known, needs a decision
                ready = min((r.ready for r in self._transfer.values() if not math.isnan(r.ready)), default=math.inf)
                if ready < math.inf:
                    self._wake_at(max(ready, t))
            return
        self._schedule(t)

    def _schedule(self, t: float) -> None:
        """``get_next_batch_to_run``: a prefill batch if one can be built, else a decode step, else idle."""
        batch = self._build_prefill(t)
        if batch:
            self._start_prefill(t, batch)
        elif self._running:
            if self._decode_fits(len(self._running)):
                self._start_decode(t, decays=True)
                self._wake_for_prefetch()
                return
            self._retract(t)
            if self._running:
                self._start_decode(t, decays=False, max_steps=1)  # the retraction's step does not decay the ratio
            else:
                self._schedule(t)  # all retracted (only beside a chunked prefill): that chunk goes on now
        else:
            self._t = math.inf  # idle: nothing running, and the queue is empty
            self._ratio_base, self._ratio_steps = self._ratio_init, 0  # Scheduler.on_idle resets the ratio
            if self._prefetch_wake < math.inf:  # but for requests waiting for their prefetch: wake up for them
                self._t = self._prefetch_wake
                self._idle_wake = True
                return
            assert not self._waiting and self._chunked is None, "an idle engine left requests waiting"

    def _wake_for_prefetch(self) -> None:
        """SGLang polls a prefetch at every iteration while the batch is not full: a decode segment is cut at the
        first step boundary at or after the time a skipped request may stop waiting."""
        if self._prefetch_wake < math.inf and not self._batch_is_full:
            self._wake_at(self._prefetch_wake)

    # ------------------------------------------------------------------ prefill
    def _free(self) -> int:
        return self._cap - self.cache.resident_tokens - self._private

    def _build_prefill(self, t: float) -> list[_Req]:
        """SGLang's ``_get_new_batch_prefill_raw`` with ``PrefillAdder``: the requests of the next prefill batch."""
        running = self._running
        if not running:
            self._batch_is_full = False
        self._prefetch_wake = math.inf
        chunked = self._chunked
        if (self._batch_is_full or not self._waiting) and chunked is None:
            return []
        cfg = self.config
        sc = cfg.scheduler
        if chunked is None and len(running) >= cfg.max_running_requests:
            self._batch_is_full = True
            return []
        mixed = len(running) if self._mixed_chunk else 0
        rem_input = sc.max_prefill_tokens - mixed
        rem_chunk = None if sc.chunked_prefill_size is None else sc.chunked_prefill_size - mixed
        clip = sc.clip_max_new_tokens
        ratio = self.new_token_ratio
        offset_total = float(mixed)
        offset_current = float(mixed)
        for r in running:
            offset_total += min(r.n_out - r.generated, clip) * ratio
        cache = self.cache
        page = cfg.page_size
        can_run: list[_Req] = []
        if chunked is not None:  # add_chunked_req
            assert rem_chunk is not None, "a chunked request exists only with chunked prefill on"
            avail = self._free() + cache.evictable_tokens
            room = min(rem_chunk, int(avail - offset_total))
            if room <= 0:
                room = rem_chunk  # it must make progress to release its KV
            new = min(chunked.fill - chunked.prefix, room, avail)  # never past the pool (see the docstring)
            if new > 0:
                last = chunked.prefix + new == chunked.fill
                chunked.extend_end = chunked.prefix + new
                can_run.append(chunked)
                reserve = min(chunked.n_out, clip) if last else 0
                offset_total += new + page + reserve
                offset_current += new + page
                rem_input -= new
                rem_chunk -= new
                if last:
                    self._chunked = None
        max_running = cfg.max_running_requests
        hicache = self._hicache
        for req in self._waiting:
            if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
                break  # budget_state() == OTHER
            if len(running) + len(can_run) >= max_running:
                self._batch_is_full = True
            if self._batch_is_full:
                break
            if req.prefetch is not None and not self._end_prefetch(req, t):
                continue  # still waiting for its L3 prefetch: skipped, the pass goes on
            fill = req.fill
            cached, node = cache.match(req.seq[: fill - 1], t)
            cache.lock(node)  # PrefillAdder._lock_node: the own prefix is not evictable
            extend = fill - cached  # KV needed beyond the device prefix: a host part needs GPU KV too
            load = 0
            if hicache is not None:  # the host part (and what a prefetch brought) is loaded back at this prefill
                keys = self._keys(req)
                load = hicache.host_run(keys, cached // page, (fill - 1) // page) * page
            avail = self._free() + cache.evictable_tokens
            total = extend + min(req.n_out - req.generated, clip) + page
            if not total < avail - offset_total:
                cache.unlock(node)
                if math.isnan(req.kv_refused_at):  # its first refusal
                    req.kv_refused_at = t
                self._batch_is_full = bool(can_run) or bool(running)
                break
            reserve = min(req.n_out, clip)
            # (the input budgets count the tokens computed, extend - load: SGLang's extend_input_len)
            if rem_chunk is not None and extend - load > rem_chunk:  # rem_chunk > 0: a chunked request ends the pass
                extend = (cached + load + rem_chunk) // page * page - cached
                if extend - load <= 0:
                    cache.unlock(node)
                    break
                self._chunked = req
                reserve = 0
            elif rem_chunk is None and can_run and extend - load >= rem_input:
                cache.unlock(node)
                break
            req.node = node
            req.prefix = cached
            req.load = load
            req.extend_end = cached + extend
            can_run.append(req)
            self._admit(req, t, cached)
            offset_total += extend + page + reserve
            offset_current += extend + page
            rem_input -= extend - load
            if rem_chunk is not None:
                rem_chunk -= extend - load
            if avail - offset_total <= 0 or avail - offset_current <= 0:
                self._batch_is_full = bool(can_run) or bool(running)
                break
        if can_run:
            admitted = {id(r) for r in can_run}
            self._waiting = [r for r in self._waiting if id(r) not in admitted]
        return can_run

    def _admit(self, req: _Req, t: float, cached: int) -> None:
        """Count an admission with ``cached`` device tokens matched (and ``req.load`` host tokens to load back)."""
        st = self.stats
        load = req.load
        if self._hicache is not None:
            req.hit_pages = cached // self.config.page_size
            st.load_back_tokens += load
        if load:
            page = self.config.page_size
            first, n = req.storage_span  # pages a prefetch brought, counted as storage where they were used
            lo, hi = cached // page, (cached + load) // page
            storage = max(0, min(hi, first + n) - max(lo, first)) * page
        else:
            storage = 0
        if req.cached < 0 and self._hicache is not None:
            req.tiers = (cached, load - storage, storage)
        cached += load
        if req.cached < 0:
            req.cached = cached
            req.first_scheduled = t
            st.cached_tokens += cached
            st.queue_time += t - req.arrival
            if not math.isnan(req.kv_refused_at):
                st.kv_wait_requests += 1
                st.kv_wait_time += t - req.kv_refused_at
        else:  # re-prefill after a retraction: what had KV before and is not cached now is computed again
            again = req.computed - cached
            req.recomputed += again
            st.recomputed_tokens += again

    def _allocate(self, n: int, t: float) -> int:
        """Take ``n`` KV tokens at ``t``, evicting LRU cache as needed; return how many tokens were evicted."""
        short = n - self._free()
        evicted = 0
        if short > 0:
            evicted = self._evict(int(short), t)
            self.stats.evicted_tokens += evicted
        self._private += n
        return evicted

    def _evict(self, n: int, t: float) -> int:
        """Evict ``n`` tokens of LRU cache at ``t`` (with write_back, backing each piece up to host first)."""
        hicache = self._hicache
        if hicache is None or hicache.config.write_policy != "write_back" or self._decode:
            return self.cache.evict(n)
        self._evict_at = t
        return self.cache.evict(n, on_evict=self._device_evicted)

    def _device_evicted(self, node: Node, keep: int) -> None:
        """write_back: the full pages of ``node``'s label from ``keep`` on leave the GPU for host memory."""
        assert self._hicache is not None
        path = self.cache.path_ids(node)
        page = self.config.page_size
        first = (len(path) - len(node.key) + keep) // page
        keys = page_keys(path, page)
        self._hicache.device_evicted(keys[first:], self._evict_at)

    def _start_prefill(self, t: float, batch: list[_Req]) -> None:
        cfg = self.config
        lat = cfg.latency
        new_sum = 0
        attention = 0.0
        load = 0
        for req in batch:
            kv = req.extend_end - req.prefix  # the host part loaded back, then the tokens computed
            req.evicted += self._allocate(kv, t)
            new = kv - req.load
            load += req.load
            new_sum += new
            attention += lat.attention_per_token2 * new * (req.prefix + req.load + new / 2)
        running = self._running
        mixed: list[_Req] = []
        decode_part = 0.0
        if running and self._mixed_chunk and self._decode_fits(len(running)):
            mixed = running
            self._running = []
            context = 0
            for r in mixed:
                context += r.prefix + r.private + 1
            self._allocate(len(mixed), t)
            decode_part = lat.decode_per_seq * len(mixed) + lat.decode_per_ctx_token * context
            new_sum += len(mixed)
        linear = lat.prefill_per_token * new_sum
        duration = (max(linear, lat.prefill_floor) + attention + decode_part) * cfg.slowdown
        st = self.stats
        if load:
            duration = self._load_back(batch, load, duration)
        st.prefill_time += duration
        st.busy_time += duration
        if mixed:
            alone = (lat.decode_floor_at(len(mixed)) + decode_part) * cfg.slowdown
            st.decode_stall_seconds += duration - alone
        elif running:
            st.decode_stall_seconds += duration
        self._prefill = batch
        self._mixed = mixed
        self._t = t + duration
        self._note_peak()

    def _end_prefill(self, t: float) -> None:
        batch, mixed = self._prefill, self._mixed
        assert batch is not None
        self._prefill, self._mixed = None, []
        cache = self.cache
        joined: list[_Req] = []
        firsts = 0
        for req in batch:
            old = req.node
            assert old is not None
            end = req.extend_end
            # unlocked first, so that a session's own leaf grows in place (radix.py) instead of one node per
            # turn; nothing is evicted in between, so the handle stays valid for ``after``
            cache.unlock(old)
            node = cache.insert(req.seq[:end], t, after=(req.prefix, old) if req.prefix else None)
            cache.lock(node)
            req.node = node
            page = self.config.page_size  # the tree holds whole pages: a prefix's unaligned tail stays private
            self._private -= (end - end % page) - (req.prefix - req.prefix % page)
            req.last_extend = end - req.prefix - req.load
            if self._hicache is not None:
                self._backup_inserted(req, req.prefix, end, t)
            req.load = 0
            req.prefix = end
            if end < req.fill:
                self._batch_is_full = False  # the chunked request leaves the batch (filter_batch)
                continue
            req.generated += 1
            firsts += 1
            if math.isnan(req.first_token):
                req.first_token = t
            if req.generated == req.n_out:
                self._finish(req, t)
            else:
                joined.append(req)
        for req in mixed:
            if not req.generated:  # a PD decode request's first step
                req.first_token = t
            req.private += 1
            req.generated += 1
        kept = [r for r in mixed if r.generated < r.n_out]
        for req in mixed:
            if req.generated == req.n_out:
                self._finish(req, t)
        if mixed:
            self._count_tokens(t, 0, len(mixed), 0.0, len(mixed), t)
        self._running = kept + self._running + joined
        if firsts:
            self._count_tokens(t, 0, 0, 0.0, firsts, t)

    # ------------------------------------------------------------------ HiCache
    def _keys(self, req: _Req) -> list[bytes]:
        keys = req.keys
        if keys is None:
            keys = req.keys = page_keys(req.seq, self.config.page_size)
        return keys

    def _issue_prefetch(self, req: _Req, now: float) -> None:
        """``_prefetch_kvcache`` as the request reaches the scheduler: L3 pages after the local match."""
        hicache = self._hicache
        assert hicache is not None
        page = self.config.page_size
        keys = self._keys(req)
        limit = (req.fill - 1) // page
        device = self.cache.peek(req.seq[: req.fill - 1]) // page
        local = device + hicache.host.run(keys, device, limit)
        req.prefetch = hicache.issue_prefetch(keys, local, limit, now)

    def _end_prefetch(self, req: _Req, t: float) -> bool:
        """``check_prefetch_progress`` at an admission pass: end the prefetch if the policy lets the request stop
        waiting (what arrived enters host memory); else note when to look again and return False."""
        hicache = self._hicache
        pf = req.prefetch
        assert hicache is not None and pf is not None
        if not hicache.prefetch_done(pf, t):
            wake = hicache.wake_time(pf)
            if wake < self._prefetch_wake:
                self._prefetch_wake = wake
            return False
        req.prefetch = None
        req.storage_span = (pf.first, hicache.end_prefetch(pf, self._keys(req), t))
        if not math.isnan(pf.blocked_at):
            req.prefetch_seconds = t - pf.blocked_at
        return True

    def _backup_inserted(self, req: _Req, lo: int, hi: int, t: float) -> None:
        """The write policy after ``req`` inserted ``seq[lo:hi]``: its first insert since an admission counts a hit on
        the device prefix it matched (``hit_pages``); the tokens it adds count their first."""
        hicache = self._hicache
        assert hicache is not None
        policy = hicache.config.write_policy
        if policy == "write_back":
            return
        page = self.config.page_size
        keys = self._keys(req)
        hit = req.hit_pages
        req.hit_pages = -1
        if policy == "write_through":
            hicache.backup(keys[: hi // page] if hit >= 0 else keys[lo // page : hi // page], t)
        elif hit > 0:  # write_through_selective: a node is backed up at its second hit
            hicache.backup(keys[:hit], t)

    def _load_back(self, batch: list[_Req], load: int, compute: float) -> float:
        """The forward's duration with ``load`` host tokens loaded back: layer i + 1 loads while layer i computes,
        so ``max(compute, load / pcie)``; the excess is shared by the loading requests by their tokens."""
        hicache = self._hicache
        assert hicache is not None
        duration = max(compute, load * self.config.kv_bytes_per_token / hicache.config.pcie_bandwidth)
        excess = duration - compute
        if excess > 0:
            self.stats.load_back_seconds += excess
            for req in batch:
                if req.load:
                    req.load_back_seconds += excess * req.load / load
        return duration

    # ------------------------------------------------------------------ decode
    def _decode_fits(self, need: int) -> bool:
        return self._free() + self.cache.evictable_tokens >= need

    def _start_decode(self, t: float, decays: bool, max_steps: int | None = None) -> None:
        """Plan a segment of decode steps over the unchanged running batch (its first step's KV fits).

        It ends at the first finish or when the free + evictable KV cannot give the next step its tokens.
        """
        running = self._running
        b = len(running)
        k = (self._free() + self.cache.evictable_tokens) // b
        for r in running:
            left = r.n_out - r.generated
            if left < k:
                k = left
        k = self._plan_steps(k, max_steps)
        lat = self.config.latency
        context0 = 0
        for r in running:
            context0 += r.prefix + r.private + 1
        a = lat.decode_floor_at(b) + lat.decode_per_seq * b + lat.decode_per_ctx_token * context0
        self._seg = (t, k, b, a)
        self._seg_decays = decays
        self._t = t + self._segment_time(k, b, a)

    def _plan_steps(self, steps: int, max_steps: int | None) -> int:
        """Decode steps to run before the next decision: all the batch allows (a step-by-step engine returns 1)."""
        return steps if max_steps is None or steps < max_steps else max_steps

    def _segment_time(self, k: int, b: int, a: float) -> float:
        """Seconds of ``k`` decode steps whose first costs ``a`` and whose context grows by ``b`` a step."""
        lat = self.config.latency
        return (k * a + lat.decode_per_ctx_token * b * (k * (k - 1) / 2)) * self.config.slowdown

    def _steps_by(self, start: float, b: int, a: float, t: float, at_or_after: bool) -> int:
        """Steps of a segment from ``start`` ended by ``t`` (``at_or_after``: the first step ending at/after ``t``)."""
        s = self.config.slowdown
        c = self.config.latency.decode_per_ctx_token * b
        x = (t - start) / s
        if x <= 0:
            return 1 if at_or_after else 0
        if c > 0:
            half = c / 2
            lin = a - half
            j = int((-lin + math.sqrt(lin * lin + 4 * half * x)) / (2 * half))
        else:
            j = int(x / a)
        j = max(j - 1, 0)
        if at_or_after:
            j = max(j, 1)
            while j > 1 and start + self._segment_time(j - 1, b, a) >= t:
                j -= 1
            while start + self._segment_time(j, b, a) < t:
                j += 1
            return j
        while j > 0 and start + self._segment_time(j, b, a) > t:
            j -= 1
        while start + self._segment_time(j + 1, b, a) <= t:
            j += 1
        return j

    def _cut_segment(self, now: float) -> None:
        """An arrival the next decision could admit: end the segment at the first step boundary at or after ``now``."""
        start, k, b, a = self._seg  # type: ignore[misc]
        j = self._steps_by(start, b, a, now, at_or_after=True)
        if j < k:
            self._seg = (start, j, b, a)
            self._t = start + self._segment_time(j, b, a)

    def _end_segment(self, t: float) -> None:
        start, k, b, a = self._seg  # type: ignore[misc]
        self._seg = None
        self._decode_steps(start, k, b, a, t)

    def _sync(self, now: float) -> None:
        """Apply the steps of the segment in flight that ended by ``now`` (their KV and evictions are the present)."""
        if self._seg is None:
            return
        start, k, b, a = self._seg
        j = self._steps_by(start, b, a, now, at_or_after=False)
        if 0 < j < k:
            end = start + self._segment_time(j, b, a)
            self._decode_steps(start, j, b, a, end)
            self._seg = (end, k - j, b, a + self.config.latency.decode_per_ctx_token * b * j)

    def _decode_steps(self, start: float, k: int, b: int, a: float, t: float) -> None:
        """Apply ``k`` decode steps of the running batch, run from ``start`` to ``t``: KV, ratio decay, finishes."""
        running = self._running
        self._allocate(k * b, t)
        self._note_peak()  # the segment's last step holds the most KV (its finishes release it after)
        if self._seg_decays:
            self._ratio_steps += k
        self.stats.busy_time += t - start
        kept = []
        for r in running:
            if not r.generated:  # a PD decode request's first step
                r.first_token = start + a * self.config.slowdown
            r.private += k
            r.generated += k
            if r.generated == r.n_out:
                self._finish(r, t)
            else:
                kept.append(r)
        self._running = kept
        self._count_tokens(start, k, b, a, 0, t)

    def _retract(self, t: float) -> None:
        """``ScheduleBatch.retract_decode`` (default retraction order) and the ratio update after it."""
        sc = self.config.scheduler
        running = self._running
        order = sorted(range(len(running)), key=lambda i: (running[i].generated, -running[i].n_prompt), reverse=True)
        retracted: list[_Req] = []
        first = True
        while first or not self._decode_fits(len(order)):
            if len(order) == 1:
                break
            first = False
            req = running[order.pop()]
            self._release_retracted(req, len(order) * sc.retract_decode_steps, t)
            retracted.append(req)
        if len(order) == 1 and not self._decode_fits(1):
            # SGLang aborts the last request here; it is retracted instead so that it still finishes
            req = running[order.pop()]
            self._release_retracted(req, 0, t)
            retracted.append(req)
        keep = sorted(order)
        self._running = [running[i] for i in keep]
        kept = self._running
        sum_gen = sum(r.generated for r in kept)
        sum_max = sum(r.n_out for r in kept)
        self._ratio_base = min(1.0, (sum_gen + sc.retract_decode_steps * len(kept)) / (sum_max + 1))
        self._ratio_steps = 0
        self._waiting.extend(retracted)
        self._batch_is_full = False
        self.stats.retractions += len(retracted)

    def _release_retracted(self, req: _Req, free_goal: int, t: float) -> None:
        """``release_req``: free the decode KV, unlock the prefix (it stays cached), then make ``free_goal`` free."""
        self._private -= req.private + req.prefix % self.config.page_size
        req.computed = req.prefix + req.private  # tokens with KV before the retraction
        req.private = 0
        if req.node is not None:  # None: a PD decode request with its prompt's KV outside the tree
            self.cache.unlock(req.node)
            req.node = None
            if self._decode and not self.config.decode_radix_cache:
                self.cache.flush()  # no radix cache: a released prefix is gone
        req.prefix = 0
        req.retractions += 1
        short = free_goal - self._free()
        if short > 0:
            self.stats.evicted_tokens += self._evict(int(short), t)

    # ------------------------------------------------------------------ finishing and measures
    def _finish(self, req: _Req, t: float) -> None:
        cache = self.cache
        kv = req.prefix + req.private  # prompt + output - 1: the last token never had KV
        node = req.node
        if self._decode:  # (a PD decode request's n_out steps wrote one token more)
            kv = min(kv, req.n_prompt + req.n_out - 1)
            if node is not None:
                cache.unlock(node)
            if self.config.decode_radix_cache:
                cache.insert(req.seq[:kv], t, after=(req.prefix, node) if node is not None and req.prefix else None)
            else:
                cache.flush()  # no radix cache: nothing stays (a re-prefill's chunks were only locked there)
            hicache = self._hicache
            if hicache is not None and hicache.config.decode_offload:
                # offload_kv_cache: the prefill offloaded the prompt's full pages, the decode the pages after them
                page = self.config.page_size
                hicache.offload(self._keys(req)[req.n_prompt // page : kv // page], t)
        else:
            assert node is not None
            cache.unlock(node)
            cache.insert(req.seq[:kv], t, after=(req.prefix, node))
            if self._hicache is not None:
                self._backup_inserted(req, req.prefix, kv, t)
        self._private -= req.private + req.prefix % self.config.page_size
        req.private = 0
        req.node = None
        req.finish = t
        self._batch_is_full = False
        timing = IterationTiming(
            arrival=req.arrival,
            start=req.first_scheduled,
            first_token=req.first_token,
            finish=t,
            prompt_tokens=req.n_prompt,
            cached_tokens=req.cached,
            output_tokens=req.n_out,
            evicted_tokens=req.evicted,
            retractions=req.retractions,
            recomputed_tokens=req.recomputed,
            last_extend_tokens=req.last_extend,
            cached_device=req.tiers[0],
            cached_host=req.tiers[1],
            cached_storage=req.tiers[2],
            load_back_seconds=req.load_back_seconds,
            prefetch_seconds=req.prefetch_seconds,
        )
        self._finished.append(FinishedRequest(req.handle, timing))

    def _note_peak(self) -> None:
        used = self.cache.locked_tokens + self._private
        if used > self.stats.peak_kv_tokens:
            self.stats.peak_kv_tokens = used

    def _count_tokens(self, start: float, steps: int, b: int, a: float, at_start: int, end: float) -> None:
        """Remember generated tokens for ``gen_throughput``: ``at_start`` at ``start``, then ``b`` per step."""
        recent = self._recent
        recent.append((start, steps, b, a, at_start, end))
        horizon = start - GEN_THROUGHPUT_WINDOW
        while recent[0][5] < horizon:
            recent.popleft()

    def used_tokens(self) -> int:
        """KV SGLang counts as used: locked tree plus KV outside the tree (decode tokens, prefills in flight)."""
        return self.cache.locked_tokens + self._private

    def load(self, now: float) -> EngineLoad:
        """Load at ``now`` in SGLang's terms (call ``advance(now)`` first).

        The decode steps of the segment in flight that ended by ``now`` are applied first, so KV and the
        cache are the present's. The chunked request counts as running; ``gen_throughput`` counts tokens
        generated in the last ``GEN_THROUGHPUT_WINDOW`` seconds (first tokens at their prefill's end, one
        per request per step).
        """
        self._sync(now)
        running = self._running_count()
        waiting = len(self._waiting)
        uncached = 0
        for r in self._waiting:
            uncached += r.fill - self.cache.peek(r.seq[: r.fill - 1])
        used = self.used_tokens()
        lo = now - GEN_THROUGHPUT_WINDOW
        generated = 0
        segments = list(self._recent)
        if self._seg is not None:
            start, k, b, a = self._seg
            segments.append((start, k, b, a, 0, self._t))
        for start, k, b, a, at_start, _ in segments:
            if at_start and lo < start <= now:
                generated += at_start
            if k:
                done = min(k, self._steps_by(start, b, a, now, at_or_after=False))
                before = min(k, self._steps_by(start, b, a, lo, at_or_after=False))
                generated += b * max(0, done - before)
        cap = self._capacity
        st = self.stats
        if used > st.peak_kv_tokens:
            st.peak_kv_tokens = used
        return EngineLoad(
            num_running_reqs=running,
            num_waiting_reqs=waiting,
            num_waiting_uncached_tokens=uncached,
            num_used_tokens=used,
            max_total_num_tokens=cap if cap is not None else 0,
            token_usage=used / cap if cap else 0.0,
            cache_hit_rate=st.cache_hit_rate,
            gen_throughput=generated / GEN_THROUGHPUT_WINDOW,
            max_running_requests=self.config.max_running_requests,
        )

    def occupancy(self, now: float) -> tuple[int, int, int]:
        """Running requests, waiting requests and KV in use at ``now`` as ``load(now)`` counts them, read without
        changing anything. ``load`` applies the decode steps of the segment in flight, which splits the segment and
        moves the float sums of its later steps (and the results, by ulps); an observer that must not perturb the
        run (``sim.series``) reads this instead."""
        used = self.used_tokens()
        if self._seg is not None:
            start, k, b, a = self._seg
            j = self._steps_by(start, b, a, now, at_or_after=False)
            if 0 < j < k:
                used += j * b
        return self._running_count(), len(self._waiting), used

    def _running_count(self) -> int:
        """Requests in the running batch, the forward in flight included; the chunked request counts once."""
        running = len(self._running) + len(self._mixed) + (1 if self._chunked is not None else 0)
        if self._prefill is not None:
            running += sum(1 for r in self._prefill if r is not self._chunked)
        return running

    def check(self) -> None:
        """Verify the invariants (for tests): KV within the pool, the cache's counts, the private KV sum."""
        self.cache.check()
        private = sum(r.private for r in self._running) + sum(r.private for r in self._mixed)
        if self._prefill is not None:
            private += sum(r.extend_end - r.prefix for r in self._prefill)
        private += len(self._mixed)  # the mixed decode rows' tokens in flight
        private += sum(r.private for r in self._transfer.values())
        holders = [*self._running, *self._mixed, *(self._prefill or []), *self._transfer.values()]
        if self._chunked is not None and self._chunked not in holders:
            holders.append(self._chunked)
        private += sum(r.prefix % self.config.page_size for r in holders)  # prefixes' tails outside the tree
        assert private == self._private, (private, self._private)
        assert self.cache.resident_tokens + self._private <= self._cap, "KV in use exceeds the pool"
        hicache = self._hicache
        if hicache is not None:
            cap = hicache.host.capacity_pages
            assert cap is None or len(hicache.host) <= cap, "host pages exceed the host pool"
            assert self.stats.host_used_tokens == len(hicache.host) * self.config.page_size
