"""Value types of the worker engine: configuration, per-request timeline, load snapshot.

The engine itself (``sim.engine.Engine``) is pure: it takes the current time as an argument and
does no I/O, so the same object serves virtual time (the simulator passes virtual seconds) and live
time (the worker app passes scaled wall-clock seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyModel:
    """Iteration-level latency of one SGLang worker, in seconds.

    Defaults: an 8B model on one H100 (shared/specs/anchors-workloads-models.md section 4):
    prefill step ``max(prefill_floor, prefill_per_token * new) + attention_per_token2 * new * (cached + new/2)``;
    decode step ``decode_floor + decode_per_seq * batch + decode_per_ctx_token * sum(context)`` (with MoE the floor
    is ``decode_floor_at(batch)``).
    ``attention_per_token2`` is 1.32 ns: section 4 derives ~0.66 ns * L**2 for the whole causal attention of
    a cold L-token prefill (44 ms at 8K, 0.7 s at 32K); in the ``new * (cached + new/2)`` form a cold
    prefill is ``L**2 / 2``, so the coefficient is twice that.
    """

    prefill_floor: float = 5.6e-3
    prefill_per_token: float = 20e-6
    attention_per_token2: float = 1.32e-9
    decode_floor: float = 5.6e-3
    decode_per_seq: float = 30e-6
    decode_per_ctx_token: float = 0.04e-6
    # MoE (a profile's [moe]; 0: dense): a decode step reads only the experts its batch's tokens route to, so its
    # weight read grows with the batch, from ``decode_floor`` at batch 1 to ``decode_floor_all_experts`` when every
    # expert is read, following the expected share of distinct experts E * (1 - (1 - k/E)**B) / E
    # (shared/specs/latency-profiles.md section 3). A prefill chunk reads every expert: its floor is unchanged.
    moe_experts: int = 0
    moe_experts_per_token: int = 0
    decode_floor_all_experts: float = 0.0

    def decode_floor_at(self, batch: int) -> float:
        """The weight read of a decode step over ``batch`` sequences."""
        e, k = self.moe_experts, self.moe_experts_per_token
        if not (e and k and self.decode_floor_all_experts) or batch <= 1:
            return self.decode_floor
        miss = 1.0 - k / e  # a token's chance of not routing to a given expert
        share = (1.0 - miss**batch - k / e) / (1.0 - k / e)  # 0 at batch 1, -> 1 as every expert is read
        return self.decode_floor + (self.decode_floor_all_experts - self.decode_floor) * share


@dataclass(frozen=True)
class SchedulerConfig:
    """SGLang's scheduling knobs for the iteration-level engine (``sim.engine.scheduler``); defaults as SGLang 0.5.23.

    ``chunked_prefill_size`` (``--chunked-prefill-size``, None disables chunking): 8192 is SGLang's default on
    an 80 GB GPU (``arg_groups/memory_hook.py``). ``max_prefill_tokens`` (16384), ``schedule_conservativeness``
    (1.0) and ``enable_mixed_chunk`` (False) are ``arg_groups/fields/schedule.py``'s defaults; the ratio
    constants are ``environ.py``'s ``SGLANG_INIT_NEW_TOKEN_RATIO`` (0.7), ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR``
    (0.14), ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`` (600), ``SGLANG_RETRACT_DECODE_STEPS`` (20) and
    ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`` (4096). The arrival-time ``Engine`` ignores all of them.
    """

    chunked_prefill_size: int | None = 8192
    max_prefill_tokens: int = 16384
    schedule_conservativeness: float = 1.0
    enable_mixed_chunk: bool = False
    init_new_token_ratio: float = 0.7
    min_new_token_ratio_factor: float = 0.14
    new_token_ratio_decay_steps: int = 600
    retract_decode_steps: int = 20
    clip_max_new_tokens: int = 4096


DISAGGREGATION_MODES = ("prefill", "decode")  # SGLang's --disaggregation-mode values besides "null"
WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")  # --hicache-write-policy
PREFETCH_POLICIES = ("best_effort", "wait_complete", "timeout")  # --hicache-storage-prefetch-policy


@dataclass(frozen=True)
class HiCacheConfig:
    """SGLang's hierarchical cache (``--enable-hierarchical-cache`` and friends; shared/specs/pd-hicache.md section 3).

    The host pool (L2) holds ``ratio`` x the GPU pool's tokens, or ``size_gb`` GB (10**9 bytes, as SGLang's host
    pool messages count them) / ``kv_bytes_per_token`` when ``size_gb > 0``. ``storage``: the pool shares an L3
    (``--hicache-storage-backend`` given, any value). Timeout defaults are SGLang's code defaults
    (``mem_cache/unified_radix_cache.py``); the bandwidths are the testbed's (PCIe Gen5 x16 ~45-55 GB/s effective;
    an RDMA L3 ~40 GB/s per worker, a slow one well under 1 GB/s).
    """

    ratio: float = 2.0  # --hicache-ratio
    size_gb: float = 0.0  # --hicache-size
    write_policy: str = "write_through"  # --hicache-write-policy
    storage: bool = False  # --hicache-storage-backend
    prefetch_policy: str = "timeout"  # --hicache-storage-prefetch-policy
    prefetch_timeout_base: float = 1.0  # s
    prefetch_timeout_per_ki_token: float = 0.25  # s per 1024 tokens
    pcie_bandwidth: float = 50e9  # bytes/s, host <-> GPU
    storage_read_bandwidth: float = 40e9  # bytes/s per worker, L3 -> host
    storage_write_bandwidth: float = 40e9  # bytes/s per worker, host -> L3
    decode_offload: bool = False  # --disaggregation-decode-enable-offload-kvcache (decode workers)

    def __post_init__(self) -> None:
        if self.write_policy not in WRITE_POLICIES:
            raise ValueError(f"write_policy must be one of {', '.join(WRITE_POLICIES)}, got {self.write_policy!r}")
        if self.prefetch_policy not in PREFETCH_POLICIES:
            raise ValueError(
                f"prefetch_policy must be one of {', '.join(PREFETCH_POLICIES)}, got {self.prefetch_policy!r}"
            )
        if not self.ratio > 0:
            raise ValueError("hicache ratio must be > 0")
        if not self.size_gb >= 0:
            raise ValueError("hicache size_gb must be >= 0")
        if not (self.prefetch_timeout_base >= 0 and self.prefetch_timeout_per_ki_token >= 0):
            raise ValueError("prefetch timeouts must be >= 0")
        for name in ("pcie_bandwidth", "storage_read_bandwidth", "storage_write_bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")

    def host_capacity_tokens(self, device_tokens: int | None, kv_bytes_per_token: int) -> int | None:
        """The host pool's tokens (None: unbounded, as the GPU pool it scales)."""
        if self.size_gb > 0:
            return int(self.size_gb * 1e9 // kv_bytes_per_token)
        return None if device_tokens is None else int(device_tokens * self.ratio)


@dataclass(frozen=True)
class WorkerConfig:
    """One worker's capacity and speed; pools may mix different configs."""

    name: str = "w0"
    kv_capacity_tokens: int | None = 400_000  # None: unbounded cache
    page_size: int = 1
    max_running_requests: int = 256
    latency: LatencyModel = field(default_factory=LatencyModel)
    slowdown: float = 1.0  # multiplies every modelled duration (a slow or throttled worker)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # iteration-level engine only
    # "arrival": ``sim.engine.Engine``, a request's timeline computed when it arrives (answers at once; the
    # standalone worker's default); "iteration": ``sim.engine.IterationEngine``, SGLang's scheduler (answers when
    # the clock's owner advances it past the finish; the simulator's default, ``Scenario.engine``)
    engine: str = "arrival"
    # seconds from a request's arrival at the worker to its arrival at the scheduler (tokenisation and the
    # tokenizer manager's hop; a profile's ``request_overhead``): the iteration-level engine sees the request then,
    # and its TTFT and finish include it. The arrival-time engine (the model of results_version <= 2) ignores it.
    request_overhead: float = 0.0
    # PD disaggregation (shared/specs/pd-hicache.md section 2; SGLang's flags): None is a co-located worker,
    # "prefill" or "decode" a PD role (the iteration-level engine only)
    disaggregation_mode: str | None = None  # --disaggregation-mode
    num_reserved_decode_tokens: int = 512  # --num-reserved-decode-tokens: a decode worker's KV reserve per request
    decode_radix_cache: bool = False  # --disaggregation-decode-enable-radix-cache
    kv_bytes_per_token: int = 131_072  # KV bytes per token per GPU (an 8B GQA model in bf16)
    transfer_bandwidth: float = 50e9  # bytes/s of the PD KV transfer (RDMA: ~40-50 GB/s per GPU)
    hicache: HiCacheConfig | None = None  # --enable-hierarchical-cache (None: off); the iteration-level engine only

    def __post_init__(self) -> None:
        if self.hicache is not None and self.engine != "iteration":
            raise ValueError(f"HiCache needs the iteration-level engine (engine='iteration'), not {self.engine!r}")
        mode = self.disaggregation_mode
        if mode is None:
            return
        if mode not in DISAGGREGATION_MODES:
            raise ValueError(f"disaggregation_mode must be None, 'prefill' or 'decode', got {mode!r}")
        if self.engine != "iteration":
            raise ValueError(f"a {mode} worker needs the iteration-level engine (engine='iteration'), "
                             f"not {self.engine!r}")
        if self.num_reserved_decode_tokens < 0:
            raise ValueError("num_reserved_decode_tokens must be >= 0")
        if self.kv_bytes_per_token < 1:
            raise ValueError("kv_bytes_per_token must be >= 1")
        if not self.transfer_bandwidth > 0:
            raise ValueError("transfer_bandwidth must be > 0")


@dataclass(frozen=True)
class RequestTiming:
    """What the engine computed for one request at its arrival."""

    arrival: float
    start: float  # prefill starts (after waiting for the prefill lane, a decode slot and KV)
    first_token: float
    finish: float
    prompt_tokens: int
    cached_tokens: int  # prompt tokens matched in the radix cache at admission
    output_tokens: int
    evicted_tokens: int  # tokens evicted from the cache to admit this request

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival


@dataclass(frozen=True)
class IterationTiming:
    """One request's timeline in the iteration-level engine, known at its finish (``RequestTiming``'s fields + more)."""

    arrival: float
    start: float  # first scheduled: its first prefill forward starts
    first_token: float  # end of the prefill forward that gave its first token
    finish: float
    prompt_tokens: int
    cached_tokens: int  # prompt tokens matched in the radix cache at its first admission
    output_tokens: int
    evicted_tokens: int  # tokens evicted from the cache to allocate its prefills
    retractions: int  # times it was retracted from the running batch
    recomputed_tokens: int  # tokens that had KV before a retraction and were prefilled again
    last_extend_tokens: int = 0  # prompt tokens computed in its last prefill forward (a PD prefill's last chunk)
    # HiCache (0 when off): where ``cached_tokens`` came from (they sum to it), the prefill time spent loading the
    # host part back beyond its compute, and the time it waited in the queue for its L3 prefetch
    cached_device: int = 0
    cached_host: int = 0
    cached_storage: int = 0
    load_back_seconds: float = 0.0
    prefetch_seconds: float = 0.0

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival


@dataclass(frozen=True)
class FinishedRequest:
    """A request the iteration-level engine finished: the handle ``submit`` returned and its timeline."""

    handle: int
    timing: IterationTiming


@dataclass(frozen=True)
class EngineLoad:
    """A load snapshot in the terms of SGLang's ``/v1/loads`` and ``/metrics``."""

    num_running_reqs: int
    num_waiting_reqs: int
    num_waiting_uncached_tokens: int
    # KV that cannot be reclaimed: running requests' tokens plus locked tree nodes. As in SGLang,
    # evictable (unlocked) cached tokens do NOT count as used, so an idle worker with a full cache
    # reports token_usage ~0 (SMG's overload protection vetoes workers at token_usage >= 0.8).
    num_used_tokens: int
    max_total_num_tokens: int
    token_usage: float  # num_used_tokens / max_total_num_tokens
    cache_hit_rate: float  # cumulative cached / prompt tokens
    gen_throughput: float  # output tokens per second over the recent window
    max_running_requests: int


@dataclass
class EngineStats:
    """Cumulative counters of one engine (mutable; read ``Engine.stats``)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    evicted_tokens: int = 0  # all evictions: at admissions and while requests waited for KV
    peak_kv_tokens: int = 0  # peak KV in use (locked cache + running requests' KV), at starts and load polls
    busy_time: float = 0.0  # time with at least one request admitted and unfinished (union of [start, finish])
    prefill_time: float = 0.0  # sum of prefill durations (the prefill lane's busy time)
    kv_wait_requests: int = 0  # requests whose start waited for KV to be freed by earlier requests
    kv_wait_time: float = 0.0  # total extra wait those requests had because of KV
    oversized_requests: int = 0  # prompt + output larger than the whole pool (run alone)
    # the iteration-level engine's own measures (the arrival-time engine leaves them 0)
    retractions: int = 0  # running requests retracted when a decode step found no KV
    recomputed_tokens: int = 0  # prefill work done twice: tokens re-prefilled after retractions
    decode_stall_seconds: float = 0.0  # time running requests waited for prefill forwards
    queue_time: float = 0.0  # sum over requests of first scheduled - arrival
    # HiCache (0 when off; SGLang's metric names in sim/worker/metrics.py)
    host_used_tokens: int = 0  # gauge: tokens in the host pool
    host_total_tokens: int = 0  # gauge: the host pool's capacity (0: unbounded or off)
    load_back_tokens: int = 0  # host -> GPU
    load_back_seconds: float = 0.0  # prefill time beyond compute spent loading back
    backup_tokens: int = 0  # GPU -> host
    storage_prefetch_hit_tokens: int = 0  # L3 -> host tokens that arrived in time and were used
    storage_prefetch_unfulfilled_tokens: int = 0  # L3 hits not used (the policy stopped waiting): recomputed
    storage_read_bytes: int = 0
    storage_write_bytes: int = 0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
