"""The queueing figures (λ, μ, ρ, W) from counter samples, without sockets or a clock."""

from __future__ import annotations

import pytest

from amqpbroker.broker.queueing import Sampler


def test_a_steady_queue_gives_little_and_mm1_figures() -> None:
    sampler = Sampler()
    # 10 s: 50 arrivals/s, consumers finish 50/s, always 10 messages in the system (busy)
    for second in range(11):
        sampler.record(float(second), arrived=50 * second, completed=50 * second, in_system=10)
    figures = sampler.figures(consumers=2)
    assert figures.window_seconds == 10
    assert figures.arrival_rate == pytest.approx(50)
    assert figures.service_rate == pytest.approx(50)  # busy the whole time: μ is what they did
    assert figures.service_rate_per_consumer == pytest.approx(25)
    assert figures.utilisation == pytest.approx(1.0)
    assert figures.wait_measured == pytest.approx(10 / 50)  # Little: L / λ
    assert figures.wait_mm1 is None  # ρ = 1: unstable as M/M/1


def test_idle_time_does_not_count_against_the_service_rate() -> None:
    sampler = Sampler()
    # busy for 2 s doing 100/s, then idle (empty) for 8 s; 20 arrivals/s overall
    sampler.record(0.0, arrived=0, completed=0, in_system=30)
    sampler.record(1.0, arrived=20, completed=100, in_system=30)
    sampler.record(2.0, arrived=40, completed=200, in_system=0)
    for second in range(3, 11):
        sampler.record(float(second), arrived=20 * second, completed=200 + 20 * (second - 2), in_system=0)
    figures = sampler.figures(consumers=1)
    assert figures.arrival_rate == pytest.approx(20)
    assert figures.service_rate == pytest.approx(100)
    assert figures.utilisation == pytest.approx(0.2)
    assert figures.wait_mm1 == pytest.approx(1 / 80)
    assert figures.mean_in_system == pytest.approx(60 / 11)


def test_figures_need_two_samples_and_a_busy_period_for_mu() -> None:
    sampler = Sampler()
    assert sampler.figures(consumers=0) is None
    sampler.record(0.0, 0, 0, 0)
    sampler.record(1.0, 0, 0, 0)
    figures = sampler.figures(consumers=0)
    assert (figures.arrival_rate, figures.service_rate, figures.utilisation, figures.wait_measured) == (0, None, None, None)
