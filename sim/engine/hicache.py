"""HiCache's host tier (L2) and storage links for the iteration-level engine (``scheduler.py`` calls them).

SGLang 0.5.23 (``mem_cache/unified_radix_cache.py``, ``unified_cache/unified_tree_core.py``,
``managers/cache_controller.py``, ``disaggregation/decode_kvcache_offload_manager.py``); the modelling choices
are ``docs/engine.md``'s "HiCache":

- **Host pool** (``HostPool``): the worker's pinned host memory, ``HiCacheConfig.host_capacity_tokens`` of it, as
  an LRU set of pages keyed by their chain keys (``storage.page_keys``), so that a host run may follow a device
  prefix as SGLang's tree marks host-only nodes below device ones. A use touches a run's pages last page first,
  so a prefix outlives its extensions (the radix tree's leaves-first eviction).
- **Write policies** (``write_through_threshold`` 1 or 2, ``_inc_hit_count_and_check``): an insert counts a hit
  on every node it passes beyond what the same request inserted before; a node not backed up is backed up at its
  first hit (``write_through``) or its second (``write_through_selective``); ``write_back`` backs up only what the
  GPU evicts (``_evict`` then ``writing_check(write_back=True)``). Here, in pages: ``write_through`` backs up what
  a request inserts (its matched device prefix included, once per admission), ``write_through_selective`` only the
  device prefix it matched (that node's second hit; new tokens have their first).
- **Storage links** (``StorageLink``): one FIFO link per direction and worker; a transfer of ``b`` bytes takes
  ``b / bandwidth`` after the previous one ends. Host -> L3 follows each host backup (``write_backup_storage``),
  skipping the leading pages L3 already holds (``batch_exists``: leading keys); pages are readable at its end.
- **Prefetch** (``Prefetch``): issued when the request reaches the scheduler (``_prefetch_kvcache``), for the
  pages after the local (device + host) match, if at least ``max(256, page)`` tokens are requested and hit
  (``prefetch_threshold``, ``query_storage_hit_length``, ``_drain_and_alloc_storage_hit``). Pages arrive in
  order at the read bandwidth. At each admission pass that reaches the request, ``check_prefetch_progress``
  decides: ``best_effort`` stops at once, ``wait_complete`` waits for every page, ``timeout`` waits at most
  ``base + per_ki_token * requested / 1024`` s from the first pass that found it unfinished
  (``_start_storage_prefetch_wait``: the budget counts the requested pages); a request still waiting is skipped,
  the pass goes on. What arrived enters the host pool; the rest is recomputed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from .storage import StorageTier
from .types import EngineStats, HiCacheConfig

PREFETCH_THRESHOLD = 256  # tokens; SGLang's prefetch_threshold = max(256, page_size)


class HostPool:
    """A worker's host KV pool: an LRU set of page keys, at most ``capacity_pages`` (None: unbounded)."""

    def __init__(self, capacity_pages: int | None) -> None:
        self.capacity_pages = capacity_pages
        self._pages: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pages)

    def __contains__(self, key: bytes) -> bool:
        return key in self._pages

    def run(self, keys: Sequence[bytes], start: int, stop: int) -> int:
        """How many of ``keys[start:stop]`` are held, counted from ``start`` until the first missing one."""
        pages = self._pages
        n = start
        while n < stop and keys[n] in pages:
            n += 1
        return n - start

    def touch(self, keys: Sequence[bytes]) -> None:
        """Mark the held ``keys`` used, the first one last (the most recent)."""
        pages = self._pages
        for key in reversed(keys):
            if key in pages:
                pages.move_to_end(key)

    def add(self, keys: Sequence[bytes]) -> list[bytes]:
        """Hold ``keys`` (as used now), evicting LRU pages beyond the capacity; return the keys that were new."""
        pages = self._pages
        new = [k for k in keys if k not in pages]
        for key in reversed(keys):
            pages[key] = None
            pages.move_to_end(key)
        cap = self.capacity_pages
        if cap is not None:
            while len(pages) > cap:
                pages.popitem(last=False)
        return [k for k in new if k in pages]


class StorageLink:
    """A FIFO link of ``bandwidth`` bytes/s: each transfer starts when it is asked for and the previous one ended."""

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = bandwidth
        self.free_at = -math.inf

    def reserve(self, at: float, nbytes: int) -> tuple[float, float]:
        """Queue a transfer of ``nbytes`` asked for at ``at``; return its (start, end)."""
        start = max(at, self.free_at)
        end = start + nbytes / self.bandwidth
        self.free_at = end
        return start, end

    def cancel_tail(self, end: float, at: float, start: float) -> None:
        """A transfer (``start``, ``end``) stopped at ``at``: if it is the last queued, the link frees then."""
        if self.free_at == end:
            self.free_at = max(at, start)


class Prefetch:
    """One request's L3 -> host prefetch: ``pages`` pages from page ``first`` on, read over [``start``, ``end``]."""

    __slots__ = ("blocked_at", "deadline", "end", "first", "pages", "requested", "start")

    def __init__(self, first: int, pages: int, start: float, end: float, requested: int) -> None:
        self.first = first
        self.pages = pages
        self.start = start
        self.end = end
        self.requested = requested  # tokens asked of L3 (the page-aligned rest of the prompt)
        self.blocked_at = math.nan  # the first admission pass that found it unfinished
        self.deadline = math.inf  # timeout policy: when the scheduler stops waiting

    def arrived(self, t: float) -> int:
        """Pages in host memory by ``t`` (in order, at a constant rate)."""
        if t >= self.end:
            return self.pages
        if t <= self.start:
            return 0
        return min(self.pages, int((t - self.start) / (self.end - self.start) * self.pages))


class HiCacheTier:
    """One worker's L2 and its links to the pool's L3: what the scheduler asks of HiCache, in pages of keys.

    The scheduler keeps the device tree (L1) and calls: ``host_run`` at admission (the host part after the device
    match), ``backup`` after inserts (the write policy's choice of pages), ``device_evicted`` (write_back),
    ``issue_prefetch``/``prefetch_done``/``end_prefetch`` around the waiting queue, ``offload`` (PD decode).
    Counters go to ``stats`` (an ``EngineStats``).
    """

    def __init__(
        self,
        config: HiCacheConfig,
        page_size: int,
        kv_bytes_per_token: int,
        host_capacity_tokens: int | None,
        storage: StorageTier | None,
        stats: EngineStats,
    ) -> None:
        self.config = config
        self.page_size = page_size
        self.page_bytes = page_size * kv_bytes_per_token
        cap = None if host_capacity_tokens is None else host_capacity_tokens // page_size
        self.host = HostPool(cap)
        self.storage = storage if config.storage else None
        self.read_link = StorageLink(config.storage_read_bandwidth)
        self.write_link = StorageLink(config.storage_write_bandwidth)
        self.threshold = max(PREFETCH_THRESHOLD, page_size)
        self.stats = stats
        stats.host_total_tokens = 0 if cap is None else cap * page_size

    # ------------------------------------------------------------------ host (L2)
    def host_run(self, keys: Sequence[bytes], device_pages: int, limit_pages: int) -> int:
        """Host pages right after the device match (at most ``limit_pages`` in all); touches the matched path."""
        n = self.host.run(keys, device_pages, limit_pages)
        self.host.touch(keys[: device_pages + n])
        return n

    def backup(self, keys: Sequence[bytes], t: float) -> None:
        """Back ``keys`` up to host (the GPU -> host copy is not timed), then to L3."""
        if not keys:
            return
        new = self.host.add(keys)
        st = self.stats
        st.backup_tokens += len(new) * self.page_size
        st.host_used_tokens = len(self.host) * self.page_size
        if new:
            self._write_storage(new, t)

    def device_evicted(self, keys: Sequence[bytes], t: float) -> None:
        """write_back: what the GPU evicts is backed up to host (and L3)."""
        self.backup(keys, t)

    def offload(self, keys: Sequence[bytes], t: float) -> None:
        """PD decode offload: pages go through a host staging buffer (freed after) to L3."""
        self._write_storage(keys, t)

    def _write_storage(self, keys: Sequence[bytes], t: float) -> None:
        storage = self.storage
        if storage is None or not keys:
            return
        stored = storage.match(keys, math.inf)  # batch_exists: the leading pages L3 holds are skipped
        rest = keys[stored:]
        if not rest:
            return
        nbytes = len(rest) * self.page_bytes
        _, end = self.write_link.reserve(t, nbytes)
        storage.write(rest, end)
        self.stats.storage_write_bytes += nbytes

    # ------------------------------------------------------------------ prefetch (L3 -> L2)
    def issue_prefetch(self, keys: Sequence[bytes], local_pages: int, limit_pages: int, t: float) -> Prefetch | None:
        """At the request's arrival: prefetch the L3 pages after the local match, if enough are requested and hit."""
        storage = self.storage
        p = self.page_size
        requested = (limit_pages - local_pages) * p
        if storage is None or requested < self.threshold:
            return None
        hit = storage.match(keys[local_pages:limit_pages], t)
        if hit * p < self.threshold:
            return None
        start, end = self.read_link.reserve(t, hit * self.page_bytes)
        pf = Prefetch(local_pages, hit, start, end, requested)
        return pf

    def prefetch_done(self, pf: Prefetch, t: float) -> bool:
        """``check_prefetch_progress`` at an admission pass at ``t``: may the request stop waiting?"""
        if t >= pf.end:
            return True
        policy = self.config.prefetch_policy
        if policy == "best_effort":
            return True
        if math.isnan(pf.blocked_at):
            pf.blocked_at = t
            if policy == "timeout":
                cfg = self.config
                pf.deadline = t + cfg.prefetch_timeout_base + cfg.prefetch_timeout_per_ki_token * pf.requested / 1024
        return t >= pf.deadline

    def wake_time(self, pf: Prefetch) -> float:
        """When a request skipped for its prefetch may stop waiting."""
        return min(pf.end, pf.deadline)

    def end_prefetch(self, pf: Prefetch, keys: Sequence[bytes], t: float) -> int:
        """Stop the prefetch at ``t``: what arrived enters the host pool; return those pages."""
        got = pf.arrived(t)
        if got < pf.pages:
            self.read_link.cancel_tail(pf.end, t, pf.start)
        p = self.page_size
        st = self.stats
        st.storage_prefetch_hit_tokens += got * p
        st.storage_prefetch_unfulfilled_tokens += (pf.pages - got) * p
        st.storage_read_bytes += got * self.page_bytes
        if got:
            self.host.add(keys[pf.first : pf.first + got])
            st.host_used_tokens = len(self.host) * p
        return got
