"""pgqueuer no-op throughput, called by bench/peers/run.

    python bench.py <postgres-url> <jobs>          driver: one result line per configuration
    python bench.py worker <db-url> <config>       one worker process (spawned by the driver)

Run with the venv that bench/peers/run installs (pinned pgqueuer[asyncpg]). Result lines go
to stdout, everything else to stderr.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver

DB_NAME = "peers_pgqueuer"
PROCESSES = 2
CONCURRENCY = 32
# One asyncpg pool per process, sized like graphile-worker's (concurrency + 2).
POOL_SIZE = CONCURRENCY + 2
POLL_SECS = 0.020


@dataclass(frozen=True)
class Config:
    batch_size: int
    describe: str


# pgqueuer's batching knob is `batch_size` (PgQueuer.run / `pgq run --batch-size`,
# default 10): jobs claimed per dequeue query, and the size at which the job-status
# buffer flushes completions in one statement. It requires
# max_concurrent_tasks >= 2 * batch_size, so with 32 slots per process the largest
# batch is 16; batch_size=1 claims and completes one job per statement.
CONFIGS = {
    "batched": Config(
        batch_size=CONCURRENCY // 2,
        describe=(
            f"batching on: batch_size={CONCURRENCY // 2} (dequeue and completion batch; the most "
            f"max_concurrent_tasks={CONCURRENCY} allows); {PROCESSES} processes x "
            f"max_concurrent_tasks {CONCURRENCY}, asyncpg pool {POOL_SIZE}"
        ),
    ),
    "unbatched": Config(
        batch_size=1,
        describe=(
            f"batching off: batch_size=1 (one job per dequeue and per completion); "
            f"{PROCESSES} processes x max_concurrent_tasks {CONCURRENCY}, asyncpg pool {POOL_SIZE}"
        ),
    ),
}


def log(msg: str) -> None:
    print(f"[peers/pgqueuer] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    print(f"[peers/pgqueuer] error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def db_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# ------------------------------------------------------------------ worker process


async def worker(url: str, config_name: str) -> None:
    config = CONFIGS.get(config_name)
    if config is None:
        fail(f"unknown configuration {config_name}")
    done = 0
    last_job_at = 0

    reader = await stdin_reader()
    print("ready", flush=True)
    if (await reader.readline()).strip() != b"go":
        return  # the driver went away before starting us

    pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE)
    pgq = PgQueuer.from_asyncpg_pool(pool)

    @pgq.entrypoint("noop")
    async def noop(job: pgqueuer.Job) -> None:
        nonlocal done, last_job_at
        done += 1
        last_job_at = time.time_ns() // 1_000_000

    runner = asyncio.create_task(
        pgq.run(batch_size=config.batch_size, max_concurrent_tasks=CONCURRENCY)
    )
    stop = asyncio.create_task(reader.readline())  # "stop", or EOF if the driver died
    finished, _ = await asyncio.wait({runner, stop}, return_when=asyncio.FIRST_COMPLETED)
    if runner in finished:
        runner.result()  # raises the failure
        fail("worker runner returned before it was stopped")
    pgq.shutdown.set()
    await asyncio.wait_for(runner, timeout=60)
    await pool.close()
    print(f"done {done} {last_job_at}", flush=True)


# ------------------------------------------------------------------------ driver


@dataclass
class Proc:
    index: int
    proc: asyncio.subprocess.Process


async def spawn_worker(url: str, config_name: str, index: int) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        os.path.abspath(__file__),
        "worker",
        url,
        config_name,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    return Proc(index, proc)


async def expect_line(p: Proc, prefix: str) -> str:
    assert p.proc.stdout is not None
    line = (await p.proc.stdout.readline()).decode().strip()
    if not line.startswith(prefix):
        raise RuntimeError(
            f"worker process {p.index}: expected {prefix!r}, got {line!r} "
            f"(exit code {p.proc.returncode})"
        )
    return line


def send(p: Proc, line: str) -> None:
    assert p.proc.stdin is not None
    p.proc.stdin.write(f"{line}\n".encode())


async def prepare(admin_url: str, url: str, jobs: int) -> tuple[int, str]:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()  # what `pgq install` runs (durable tables, the default)
        # Bulk insert with pgqueuer's own batch enqueue (lists): the setup is not what is
        # measured.
        chunk = 5000
        for start in range(0, jobs, chunk):
            n = min(chunk, jobs - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        table = queries.qbe.settings.queue_table
        await conn.execute(f"VACUUM ANALYZE {table}")
        return await conn.fetchval(f"SELECT count(*) FROM {table}"), table
    finally:
        await conn.close()


async def measure(admin_url: str, jobs: int, config_name: str) -> float:
    url = db_url(admin_url, DB_NAME)
    loaded, table = await prepare(admin_url, url, jobs)
    if loaded != jobs:
        raise RuntimeError(f"loaded {loaded} jobs, expected {jobs}")
    log(f"{config_name}: {jobs} jobs loaded into {DB_NAME}")

    poll = await asyncpg.connect(url)
    procs: list[Proc] = []
    try:
        for i in range(PROCESSES):
            procs.append(await spawn_worker(url, config_name, i))
        await asyncio.wait_for(asyncio.gather(*(expect_line(p, "ready") for p in procs)), 60)

        # Timed from telling the loaded worker processes to start (Python's start-up and
        # imports are not counted) to seeing the queue empty.
        deadline = time.monotonic() + max(300.0, jobs / 20)
        start_wall = time.time_ns() // 1_000_000
        start = time.monotonic()
        for p in procs:
            send(p, "go")
        while True:
            # EXISTS, not count(*): the poll must not cost the server a scan of what is left.
            left = await poll.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")
            if not left:
                end = time.monotonic()
                break
            for p in procs:
                if p.proc.returncode is not None:
                    raise RuntimeError(
                        f"worker process {p.index} exited ({p.proc.returncode}) with jobs left"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError("queue not drained in time")
            await asyncio.sleep(POLL_SECS)

        for p in procs:
            send(p, "stop")
        reports = await asyncio.wait_for(
            asyncio.gather(*(expect_line(p, "done") for p in procs)), 60
        )
        codes = await asyncio.wait_for(asyncio.gather(*(p.proc.wait() for p in procs)), 30)
        for p, code in zip(procs, codes):
            if code != 0:
                raise RuntimeError(f"worker process {p.index} exited with {code}")
        counts = [int(r.split()[1]) for r in reports]
        last = max(int(r.split()[2]) for r in reports)
        if sum(counts) < jobs:
            raise RuntimeError(f"handlers ran {sum(counts)} times for {jobs} jobs")
        secs = end - start
        log(
            f"{config_name}: drained in {secs:.3f} s (per process "
            f"{' + '.join(map(str, counts))} jobs; last handler call at "
            f"+{(last - start_wall) / 1000:.3f} s)"
        )
        return jobs / secs
    finally:
        for p in procs:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
        await poll.close()


async def driver(admin_url: str, jobs_arg: str) -> None:
    try:
        jobs = int(jobs_arg)
    except ValueError:
        jobs = 0
    if jobs <= 0:
        fail(f"jobs must be a positive integer, got {jobs_arg}")
    if urlsplit(admin_url).scheme not in ("postgres", "postgresql"):
        fail(f"not a postgres:// URL: {admin_url}")
    for name, config in CONFIGS.items():
        try:
            rate = await measure(admin_url, jobs, name)
        except Exception as e:  # noqa: BLE001 - reported, then exit non-zero
            fail(f"{name}: {type(e).__name__}: {e}")
        print(
            f"peer|pgqueuer {pgqueuer.__version__}|{config.describe}|{jobs}|{math.floor(rate + 0.5)}",
            flush=True,
        )
    # Leave nothing behind on the caller's server.
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    finally:
        await admin.close()


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "worker":
        uvloop.run(worker(args[1], args[2]))
    elif len(args) == 2:
        uvloop.run(driver(args[0], args[1]))
    else:
        fail("usage: bench.py <postgres-url> <jobs>")


if __name__ == "__main__":
    main()
