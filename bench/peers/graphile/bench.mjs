// graphile-worker no-op throughput, called by bench/peers/run.
//
//   node bench.mjs <postgres-url> <jobs>          driver: one result line per configuration
//   node bench.mjs worker <db-url> <config>       one worker process (spawned by the driver)
//
// PEERS_GRAPHILE_DIR names the directory whose node_modules hold the pinned
// graphile-worker (installed by bench/peers/run). Result lines go to stdout, everything
// else to stderr.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const installDir = process.env.PEERS_GRAPHILE_DIR;
if (!installDir) {
  fail("PEERS_GRAPHILE_DIR is not set (run this through bench/peers/run)");
}
const require = createRequire(join(installDir, "package.json"));
const gw = require("graphile-worker");
const pg = require("pg");
const GW_VERSION = require("graphile-worker/package.json").version;

const DB_NAME = "peers_graphile";
const PROCESSES = 2;
const CONCURRENCY = 32;
// graphile-worker's own advice for maxPoolSize: "10 or concurrentJobs + 2, whichever
// is larger".
const POOL_SIZE = Math.max(10, CONCURRENCY + 2);
const POLL_MS = 20;
const QUEUE_TABLE = "graphile_worker._private_jobs";

const CONFIGS = {
  batched: {
    describe: `batching on: localQueue.size=500 completeJobBatchDelay=0 failJobBatchDelay=0; ${PROCESSES} processes x concurrency ${CONCURRENCY}, maxPoolSize ${POOL_SIZE}`,
    preset: {
      worker: {
        localQueue: { size: 500 },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
  },
  unbatched: {
    describe: `batching off (defaults: no localQueue, completeJobBatchDelay=-1, failJobBatchDelay=-1); ${PROCESSES} processes x concurrency ${CONCURRENCY}, maxPoolSize ${POOL_SIZE}`,
    preset: undefined,
  },
};

function log(msg) {
  process.stderr.write(`[peers/graphile] ${msg}\n`);
}

function fail(msg) {
  process.stderr.write(`[peers/graphile] error: ${msg}\n`);
  process.exit(1);
}

const silentLogger = new gw.Logger(() => () => {});

function dbUrl(url, name) {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function withClient(url, fn) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- worker process

async function worker(url, configName) {
  const config = CONFIGS[configName];
  if (!config) fail(`unknown configuration ${configName}`);
  let done = 0;
  let lastJobAt = 0;
  let runner = null;
  let stopping = false;

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    if (runner) await runner.stop();
    process.stdout.write(`done ${done} ${lastJobAt}\n`);
    process.exit(0);
  };

  const lines = createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    if (line === "go" && !runner && !stopping) {
      gw.run({
        connectionString: url,
        concurrency: CONCURRENCY,
        maxPoolSize: POOL_SIZE,
        noHandleSignals: true,
        logger: silentLogger,
        taskList: {
          noop: async () => {
            done += 1;
            lastJobAt = Date.now();
          },
        },
        ...(config.preset ? { preset: config.preset } : {}),
      }).then(
        (r) => {
          runner = r;
          if (stopping) r.stop();
        },
        (e) => fail(`worker failed to start: ${e.stack || e}`),
      );
    } else if (line === "stop") {
      stop().catch((e) => fail(`worker stop failed: ${e.stack || e}`));
    }
  });
  // The driver went away: stop too.
  lines.on("close", () => stop().catch(() => process.exit(1)));
  process.stdout.write("ready\n");
}

// ---------------------------------------------------------------------- driver

function spawnWorker(url, configName, index) {
  const child = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), "worker", url, configName],
    { stdio: ["pipe", "pipe", "inherit"], env: process.env },
  );
  const w = { child, index, ready: null, done: null, exited: null, code: null };
  w.exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      w.code = code ?? signal;
      resolve();
    });
  });
  let resolveReady;
  let resolveDone;
  w.ready = new Promise((r) => (resolveReady = r));
  w.done = new Promise((r) => (resolveDone = r));
  const lines = createInterface({ input: child.stdout });
  lines.on("line", (line) => {
    if (line === "ready") resolveReady();
    const m = /^done (\d+) (\d+)$/.exec(line);
    if (m) resolveDone({ jobs: Number(m[1]), lastJobAt: Number(m[2]) });
  });
  return w;
}

function killAll(workers) {
  for (const w of workers) {
    if (w.code === null) w.child.kill("SIGKILL");
  }
}

async function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(t);
  }
}

async function prepare(adminUrl, url, jobs) {
  await withClient(adminUrl, async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${DB_NAME} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${DB_NAME}`);
  });
  await gw.runMigrations({ connectionString: url, logger: silentLogger });
  // Bulk insert with graphile-worker's own addJobs (graphile_worker.add_jobs): the
  // setup is not what is measured.
  const utils = await gw.makeWorkerUtils({ connectionString: url, logger: silentLogger });
  try {
    const chunk = 5000;
    for (let i = 0; i < jobs; i += chunk) {
      const specs = [];
      for (let j = i; j < Math.min(jobs, i + chunk); j++) {
        specs.push({ identifier: "noop", payload: { i: j } });
      }
      await utils.addJobs(specs);
    }
  } finally {
    await utils.release();
  }
  return withClient(url, async (c) => {
    await c.query(`VACUUM ANALYZE ${QUEUE_TABLE}`);
    const r = await c.query(`SELECT count(*)::int AS n FROM ${QUEUE_TABLE}`);
    return r.rows[0].n;
  });
}

async function measure(adminUrl, jobs, configName) {
  const url = dbUrl(adminUrl, DB_NAME);
  const loaded = await prepare(adminUrl, url, jobs);
  if (loaded !== jobs) throw new Error(`loaded ${loaded} jobs, expected ${jobs}`);
  log(`${configName}: ${jobs} jobs loaded into ${DB_NAME}`);

  const workers = [];
  const poll = new pg.Client({ connectionString: url });
  await poll.connect();
  try {
    for (let i = 0; i < PROCESSES; i++) workers.push(spawnWorker(url, configName, i));
    const anyExit = Promise.race(workers.map((w) => w.exited)).then(() => {
      throw new Error("a worker process exited early");
    });
    anyExit.catch(() => {});
    await withTimeout(
      Promise.race([Promise.all(workers.map((w) => w.ready)), anyExit]),
      60_000,
      "worker processes starting",
    );

    // Timed from telling the loaded worker processes to start their runners (Node's
    // own start-up and module loading are not counted) to seeing the queue empty.
    const deadline = Date.now() + Math.max(300_000, (jobs / 20) * 1000);
    const start = Date.now();
    for (const w of workers) w.child.stdin.write("go\n");
    let end;
    for (;;) {
      // EXISTS, not count(*): the poll must not cost the server a scan of what is left.
      const r = await poll.query(`SELECT EXISTS (SELECT 1 FROM ${QUEUE_TABLE}) AS left`);
      if (!r.rows[0].left) {
        end = Date.now();
        break;
      }
      const dead = workers.find((w) => w.code !== null);
      if (dead) throw new Error(`worker process ${dead.index} exited (${dead.code}) with jobs left`);
      if (Date.now() > deadline) {
        throw new Error("queue not drained in time");
      }
      await sleep(POLL_MS);
    }

    for (const w of workers) w.child.stdin.write("stop\n");
    const reports = await withTimeout(
      Promise.all(workers.map((w) => w.done)),
      60_000,
      "worker processes stopping",
    );
    await withTimeout(Promise.all(workers.map((w) => w.exited)), 30_000, "worker exit");
    const bad = workers.find((w) => w.code !== 0);
    if (bad) throw new Error(`worker process ${bad.index} exited with ${bad.code}`);
    const ran = reports.reduce((a, r) => a + r.jobs, 0);
    if (ran < jobs) throw new Error(`handlers ran ${ran} times for ${jobs} jobs`);

    const secs = (end - start) / 1000;
    const lastHandler = Math.max(...reports.map((r) => r.lastJobAt));
    log(
      `${configName}: drained in ${secs.toFixed(3)} s (per process ${reports
        .map((r) => r.jobs)
        .join(" + ")} jobs; last handler call at +${((lastHandler - start) / 1000).toFixed(3)} s)`,
    );
    return jobs / secs;
  } finally {
    killAll(workers);
    await poll.end().catch(() => {});
  }
}

async function driver(adminUrl, jobsArg) {
  const jobs = Number(jobsArg);
  if (!Number.isInteger(jobs) || jobs <= 0) fail(`jobs must be a positive integer, got ${jobsArg}`);
  try {
    new URL(adminUrl);
  } catch {
    fail(`not a URL: ${adminUrl}`);
  }
  for (const name of ["batched", "unbatched"]) {
    let rate;
    try {
      rate = await measure(adminUrl, jobs, name);
    } catch (e) {
      fail(`${name}: ${e.stack || e}`);
    }
    process.stdout.write(
      `peer|graphile-worker ${GW_VERSION}|${CONFIGS[name].describe}|${jobs}|${Math.round(rate)}\n`,
    );
  }
  // Leave nothing behind on the caller's server.
  await withClient(adminUrl, (c) => c.query(`DROP DATABASE IF EXISTS ${DB_NAME} WITH (FORCE)`));
}

const [mode, a, b] = process.argv.slice(2);
if (mode === "worker") {
  await worker(a, b);
} else {
  if (!mode || !a) fail("usage: bench.mjs <postgres-url> <jobs>");
  await driver(mode, a);
}
