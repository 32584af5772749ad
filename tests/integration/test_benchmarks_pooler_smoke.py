"""The pooler benchmark still measures (as tests/integration/test_benchmarks_smoke.py
does for the others): a tiny run of all three setups, direct, PgBouncer with a
listen_dsn and PgBouncer without one, through its own PgBouncer (scripts/ensure-pgbouncer
installs it). No timing is asserted; every cell must have been measured (a failed drain
or wake-up, e.g. a run left uncompleted, would show as a reason instead)."""

from __future__ import annotations

from benchmarks import pooler, wakeup
from benchmarks.common import Context


async def test_pooler_measures_every_setup(server_dsn: str) -> None:
    params = pooler.Params(
        runs=100,
        concurrencies=(4,),
        wake=wakeup.Params(samples=3, warmup=1, idle_s=0.01),
        poll_wake=wakeup.Params(samples=2, warmup=0, idle_s=0.01),
        # Polling's wake-up in a fraction of a second, not the library's 5 s default.
        poll_interval_s=0.2,
        batch=50,
    )
    result = await pooler.measure(Context(mode="quick", admin_dsn=server_dsn), params)
    rows = result.details["rows"]
    assert len(rows) == 5
    for row in rows:
        assert set(row["cells"]) == {pooler.DIRECT, pooler.LISTEN, pooler.POLL}
        assert all(cell["value"] is not None for cell in row["cells"].values()), row
    wake = result.details["results"]["wake"]
    assert [len(wake[k]) for k in (pooler.DIRECT, pooler.LISTEN, pooler.POLL)] == [3, 3, 2]
