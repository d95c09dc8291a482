"""Timed measurements in the terms of ``sim.engine.latency``'s forms: the fit's input, the sources' output."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillPoint:
    """One prefill forward of ``seqs`` sequences, each ``new_tokens`` uncached after ``cached_tokens`` cached."""

    seqs: int
    new_tokens: int
    cached_tokens: int
    seconds: float

    @property
    def total_new_tokens(self) -> int:
        """The batch's uncached tokens: the linear term's (and the floor test's) feature."""
        return self.seqs * self.new_tokens

    @property
    def attention_work(self) -> float:
        """``sum(new * (cached + new / 2))`` over the batch: the ``attention_per_token2`` feature."""
        return self.seqs * self.new_tokens * (self.cached_tokens + self.new_tokens / 2)


@dataclass(frozen=True)
class DecodePoint:
    """One decode step of ``batch`` sequences holding ``context_tokens`` in total."""

    batch: int
    context_tokens: float
    seconds: float


@dataclass(frozen=True)
class Measurements:
    """What one source yielded: timed points, and how many lines it skipped and why."""

    prefill: tuple[PrefillPoint, ...] = ()
    decode: tuple[DecodePoint, ...] = ()
    malformed: int = 0  # lines of the source's kind that do not parse (truncated, wrong types)
    foreign: int = 0  # lines of another kind (other log output, other JSON records)

    @property
    def skipped(self) -> int:
        return self.malformed + self.foreign

    def __add__(self, other: Measurements) -> Measurements:
        return Measurements(
            self.prefill + other.prefill,
            self.decode + other.decode,
            self.malformed + other.malformed,
            self.foreign + other.foreign,
        )
