"""ms07's producer: ``ms07.ops.submit`` one distribution per call, as a producing service would.

    python -m bench.peers.ms07_producer --config FILE --n N [--rate R] [--concurrency C]

Each call is one distribution (its own stamped payload); the library's ``SubmitBatcher``
group-commits the calls in flight (one INSERT, one commit, one XADD pipeline for all of
them), exactly as the engine's HTTP API does. A distribution counts as enqueued when its
call returns: its job row is committed in PostgreSQL and its entry is in the stream.
MS07_DATABASE_URL and MS07_REDIS_URL name the servers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.peers import pace, payload


async def produce(a: Any, config: Path) -> None:
    from ms07.config import load_settings
    from ms07.ops.submit import SubmitBatcher, submit_with
    from ms07.runtime import Runtime

    settings = load_settings(
        config,
        environ={},
        database_url=os.environ["MS07_DATABASE_URL"],
        redis_url=os.environ["MS07_REDIS_URL"],
    )
    # Like the engine's own API: no connection check on checkout (open_pool explains why).
    async with Runtime(settings, migrate=False, pool_size=4, check_connections=False) as rt:
        batcher = SubmitBatcher(await rt.pool(), await rt.queue())

        async def send(i: int) -> None:
            await submit_with(batcher, settings, ["sink"], payload.body())

        seconds = await pace.run_async(a.n, a.rate, a.concurrency, send)
        await batcher.close()
    pace.report(a.n, seconds)


def main() -> None:
    a = pace.args("Submit ms07 distributions", config=True)
    from ms07.engine.daemon import run_loop

    run_loop(produce(a, Path(a.config)))


if __name__ == "__main__":
    main()
