"""Retry backoff: exponential, capped, equal jitter."""

from __future__ import annotations

import pytest

from tidebase_async import Retry, Run
from tidebase_async.engine.workflows import backoff_delay, make_workflow


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (50, 30.0)],
)
def test_backoff_is_exponential_and_capped(attempt: int, expected: float) -> None:
    policy = Retry(backoff=2.0, max_backoff=30.0, jitter=False)
    assert backoff_delay(policy, attempt) == expected


def test_backoff_of_zero_means_no_delay() -> None:
    assert backoff_delay(Retry(backoff=0, jitter=True), 3) == 0.0


def test_a_huge_attempt_number_stays_capped() -> None:
    assert backoff_delay(Retry(backoff=1.0, max_backoff=300.0, jitter=False), 5000) == 300.0


@pytest.mark.parametrize("attempt", [1, 3, 12])
def test_jitter_draws_from_half_to_full_delay(attempt: int) -> None:
    policy = Retry(backoff=1.0, max_backoff=100.0, jitter=True)
    full = min(2.0 ** (attempt - 1), 100.0)
    samples = [backoff_delay(policy, attempt) for _ in range(500)]
    assert all(full / 2 <= s <= full for s in samples)
    # Spread over the range, not stuck at one end.
    assert min(samples) < full * 0.6
    assert max(samples) > full * 0.9
    assert len(set(samples)) > 100


def test_a_workflow_retries_with_its_policy() -> None:
    async def fn(run: Run) -> None:
        return None

    policy = Retry(backoff=0.5, max_backoff=1.0, jitter=False)
    wf = make_workflow("w", fn, queue="q", max_attempts=5, retry=policy)
    assert [backoff_delay(wf.retry, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.0, 1.0]
    default = make_workflow("w", fn, queue="q", max_attempts=5, retry=None)
    assert default.retry.attempts == 5
    assert 0.5 <= backoff_delay(default.retry, 1) <= 1.0
