"""Queueing figures per queue: arrival rate λ, service rate μ, utilisation ρ and the expected
wait W, from samples of plain counters over a sliding window.

Every ``SAMPLE_SECONDS`` the broker records, per queue, ``(time, arrived, completed, in_system)``:
messages enqueued so far, messages that left for good through a consumer (acked, or delivered
with autoack) so far, and ready + unacked now. Over the window (the oldest to the newest sample):

* λ = arrivals / elapsed time;
* μ = completions during *busy* intervals (ones that began with messages in the system) / the
  length of those intervals: the rate at which consumers work when they have work, so an idle
  queue does not look slow (None until the queue has been busy);
* per-consumer μ = μ / consumers now;
* ρ = λ / μ;
* L = the mean of ``in_system`` over the samples;
* W (measured) = L / λ, Little's law (it holds for any stable queue, whatever the distributions);
* W (M/M/1) = 1 / (μ − λ) when μ > λ: what a single-server queue with Poisson arrivals and
  exponential service would give, to compare with the measured one (None when ρ ≥ 1: unstable).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["QueueFigures", "Sampler", "SAMPLE_SECONDS", "WINDOW_SAMPLES", "RATE_SAMPLES"]

SAMPLE_SECONDS = 1.0
WINDOW_SAMPLES = 31  # thirty intervals: a 30 s window
RATE_SAMPLES = 5  # the management API's rates: over the last 5 s, as RabbitMQ's default


@dataclass(frozen=True, slots=True)
class QueueFigures:
    window_seconds: float
    arrival_rate: float  # λ, messages/s
    service_rate: float | None  # μ, messages/s while busy
    service_rate_per_consumer: float | None
    utilisation: float | None  # ρ = λ / μ
    mean_in_system: float  # L
    wait_measured: float | None  # W = L / λ, seconds
    wait_mm1: float | None  # 1 / (μ − λ), seconds

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in self.__slots__}


class Sampler:
    """The samples of one queue, oldest first."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, int, int]] = deque(maxlen=WINDOW_SAMPLES)

    def record(self, now: float, arrived: int, completed: int, in_system: int) -> None:
        self.samples.append((now, arrived, completed, in_system))

    def rates(self, span: int = RATE_SAMPLES) -> tuple[float, float] | None:
        """``(arrivals/s, completions/s)`` over the last ``span`` intervals, for the management
        API's ``*_details.rate`` (None before two samples)."""
        samples = self.samples
        if len(samples) < 2:
            return None
        first, last = samples[max(len(samples) - 1 - span, 0)], samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return None
        return (last[1] - first[1]) / elapsed, (last[2] - first[2]) / elapsed

    def figures(self, consumers: int) -> QueueFigures | None:
        samples = self.samples
        if len(samples) < 2:
            return None
        first, last = samples[0], samples[-1]
        elapsed = last[0] - first[0]
        if elapsed <= 0:
            return None
        arrival_rate = (last[1] - first[1]) / elapsed
        busy_time = busy_done = 0.0
        previous = first
        for sample in list(samples)[1:]:
            if previous[3] > 0:
                busy_time += sample[0] - previous[0]
                busy_done += sample[2] - previous[2]
            previous = sample
        service_rate = busy_done / busy_time if busy_time > 0 and busy_done > 0 else None
        mean_in_system = sum(sample[3] for sample in samples) / len(samples)
        return QueueFigures(
            window_seconds=elapsed,
            arrival_rate=arrival_rate,
            service_rate=service_rate,
            service_rate_per_consumer=service_rate / consumers if service_rate and consumers else None,
            utilisation=arrival_rate / service_rate if service_rate else None,
            mean_in_system=mean_in_system,
            wait_measured=mean_in_system / arrival_rate if arrival_rate > 0 else None,
            wait_mm1=1 / (service_rate - arrival_rate) if service_rate and service_rate > arrival_rate else None,
        )
