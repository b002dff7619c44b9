"""A leader in a process of its own, for the process tests of tests/test_leadership.py.

Usage: python tests/leader_process.py DSN NODE LEASE_S. Takes part in the election; once leader it
prints `leader TERM` and then, every 50 ms, moves a cursor in a transaction fenced with the module-level
`fence(conn, TERM)`: deliberately not `Leadership.fence`, which would refuse on this process's own clock
first (the same idle bound as the node's, though), so what is shown is that the database refuses a
deposed leader's write whatever that leader believes. Prints `moved TERM ID` after each commit,
`lost ERROR` when the store connection dies (the server ends a session frozen in a transaction) and
`refused TERM CURRENT` when fencing refuses; exits 0 then.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from watcher.config import LeadershipConfig
from watcher.errors import Deposed
from watcher.leadership import Leadership, fence, idle_timeout_s


async def main(dsn: str, node: str, lease_s: float) -> None:
    config = LeadershipConfig(name=node, lease_s=lease_s, poll_interval_s=0.25, takeover_s=lease_s * 2)
    leadership = Leadership(dsn, config)
    election = asyncio.create_task(leadership.run())
    term = await leadership.wait_elected()
    print("leader", term, flush=True)
    conn = None
    while True:
        try:
            if conn is None:
                conn = await asyncpg.connect(dsn)
            async with conn.transaction():
                await fence(conn, term, idle_s=idle_timeout_s(config))
                await conn.execute("UPDATE cursors SET height = height + 1 WHERE chain = 'test'")
                row_id = await conn.fetchval("INSERT INTO moves (term) VALUES ($1) RETURNING id", term)
            print("moved", term, row_id, flush=True)
        except Deposed as exc:
            print("refused", term, exc.current, flush=True)
            election.cancel()
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            print("lost", type(exc).__name__, flush=True)
            if conn is not None:
                conn.terminate()
            conn = None
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
