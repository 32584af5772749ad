"""The benchmarks still measure: tiny versions of throughput, steps, wake-up, replay, the
overview, the durable agent and the raw asyncpg peer, against the test server. No timing
is asserted (figures belong in benchmarks/RESULTS.md); each benchmark checks its own
outcome (every run completed, every sample seen) and raises BenchmarkError otherwise."""

from __future__ import annotations

import math

from benchmarks import agent, overview, replay, steps, throughput, wakeup
from benchmarks.common import Context, fresh_database, fresh_tidebase
from benchmarks.peers.base import WakeParams
from benchmarks.peers.raw import Raw


def _ctx(server_dsn: str) -> Context:
    return Context(mode="quick", admin_dsn=server_dsn)


async def test_throughput_enqueues_and_drains(server_dsn: str) -> None:
    params = throughput.Params(runs=300, concurrencies=(4,), one_at_a_time=20, batch=100)
    drain = await throughput.enqueue_and_drain(_ctx(server_dsn), params, 4)
    assert drain.runs == 300
    assert drain.timing.stats["completed"] == 300
    assert drain.rate > 0
    assert await throughput.measure_one_at_a_time(_ctx(server_dsn), 20) > 0


async def test_overview_seeds_rolls_up_and_loads(server_dsn: str) -> None:
    result = await overview.measure(_ctx(server_dsn), overview.Params(runs=2_000, loads=2))
    assert result.details["chunks"] >= 1
    assert set(result.details["plans"]) >= {"run_stats_range 7d", "queue_overview"}
    assert len(result.details["timings_ms"]) == 6


async def test_steps_drain_counts_every_checkpoint(server_dsn: str) -> None:
    drain = await steps.enqueue_and_drain(_ctx(server_dsn), 20, 4)
    assert drain.runs == 20
    assert drain.checkpoints == 200


async def test_wakeup_samples_every_run(server_dsn: str) -> None:
    params = wakeup.Params(samples=5, warmup=1, idle_s=0.01)
    async with fresh_tidebase(_ctx(server_dsn), wakeup.register) as tide:
        samples = await wakeup.collect(tide, params)
    assert len(samples) == 5
    assert all(s.latency_ms > 0 and not math.isnan(s.notified_ms) for s in samples)


async def test_replay_reaches_the_step_after_the_history(server_dsn: str) -> None:
    params = replay.Params(sizes=(20,), samples=2, warmup=1, idle_s=0.01)
    samples = await replay.collect(_ctx(server_dsn), params)
    assert [s.steps for s in samples] == [20, 20]


async def test_the_raw_peer_wakes_through_its_claim(server_dsn: str) -> None:
    params = WakeParams(samples=3, warmup=1, idle_s=0.01)
    async with fresh_database(server_dsn) as dsn:
        result = await Raw().wakeup(dsn, params)
    assert len(result.latencies_ms) == 3


async def test_agent_runs_drain(server_dsn: str) -> None:
    for workflow in ("agent-live", "agent-quiet"):
        params = agent.Params(runs=8, concurrency=4)
        assert await agent._drain(_ctx(server_dsn), workflow, params) > 0


async def test_keyed_claims_and_drain(server_dsn: str) -> None:
    from benchmarks import keys

    params = keys.Params(keys=200, runs=800, claims=10, drain_runs=100, batch=400)
    latency = await keys.measure_latency(_ctx(server_dsn), params, rate=True)
    assert set(latency.keyed_sizes) == {keys.CLAIM_LIMIT}
    assert len(latency.plain_ms) == len(latency.keyed_ms) == 10
    drained = await keys.measure_drain(_ctx(server_dsn), params, keyed=True)
    assert drained.stats["completed"] == 100
