// The browser tests' harness: the real unpoll binary (target/debug/unpoll) in front of a
// real upstream written here, driven by the system Chromium through playwright-core.

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BINARY = process.env.UNPOLL_BIN || path.join(ROOT, "target/debug/unpoll");
export const TOKEN = "browser-test-token";

/** A free TCP port on 127.0.0.1 (bound to port 0, then closed): unpoll must come back on
 * the same ports after a restart, so the test chooses them. */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** The page every tab loads: the client, then whatever `?sub=` and `?watch=` ask for,
 * recorded on `window` for the test to read. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>unpoll test</title>
<script src="/_unpoll/client.js"></script>
<script>
  window.got = []; window.resets = []; window.watched = [];
  const q = new URLSearchParams(location.search);
  for (const url of q.getAll("sub")) unpoll.subscribe(url, {
    onEvent: (name, data, id) => got.push({ url, name, data, id }),
    onReset: (reason) => resets.push({ url, reason }),
  });
  const every = +(q.get("every") || 500);
  for (const url of q.getAll("watch")) unpoll.watch(url, (data) => watched.push({ url, data }),
    { fallbackInterval: every });
</script>
<p>ok</p>`;

/** The same through the ES module. */
const MODULE_PAGE = `<!doctype html><meta charset="utf-8"><title>unpoll module test</title>
<script type="module">
  import unpoll, { subscribe, status } from "/_unpoll/client.mjs";
  window.got = []; window.resets = [];
  const url = new URLSearchParams(location.search).get("sub");
  subscribe(url, { onEvent: (name, data, id) => got.push({ url, name, data, id }) });
  window.exports = { same: unpoll === window.unpoll, status: status() };
</script>`;

/** A page with its own EventSource on `/events?room=a` (no shared client): each tab holds
 * a stream of its own, as a plain SSE app's tabs do. */
const EVENTSOURCE_PAGE = `<!doctype html><meta charset="utf-8"><title>eventsource</title>
<script>
  window.got = []; window.opened = false;
  const es = new EventSource("/events?room=a");
  es.onopen = () => { window.opened = true; };
  es.onmessage = (e) => got.push(e.data);
</script>
<p>ok</p>`;

/** A legacy page polling `/data` with both XHR and fetch, through the injected client. */
const LEGACY_PAGE = `<!doctype html><meta charset="utf-8"><title>legacy</title>
<script src="/_unpoll/client.js" data-unpoll-watch="/data"></script>
<script>
  window.seen = { xhr: [], fetch: [] };
  setInterval(() => {
    const x = new XMLHttpRequest();
    x.open("GET", "/data");
    x.onload = () => seen.xhr.push(JSON.parse(x.responseText).version);
    x.send();
    fetch("/data").then((r) => r.json()).then((d) => seen.fetch.push(d.version));
  }, 200);
</script>`;

/** The same legacy page as the app really serves it, without the client: unpoll adds it
 * (`inject = true`). */
const PLAIN_LEGACY_PAGE = LEGACY_PAGE.replace(/<script src="\/_unpoll\/client.js"[^>]*><\/script>\n/, "");

/** The app behind unpoll: `/page` (above), `/eventsource`, `/module` (the same as a module), `/legacy`, `/data` (a JSON body that `version` changes),
 * anything else 404. Counts requests by path. */
export async function startUpstream() {
  const hits = new Map();
  const state = { version: 1 };
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    hits.set(pathname, (hits.get(pathname) || 0) + 1);
    if (pathname === "/page") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    } else if (pathname === "/eventsource") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(EVENTSOURCE_PAGE);
    } else if (pathname === "/module") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(MODULE_PAGE);
    } else if (pathname === "/legacy") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(LEGACY_PAGE);
    } else if (pathname === "/legacy-plain") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PLAIN_LEGACY_PAGE);
    } else if (pathname === "/data") {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(JSON.stringify({ version: state.version }));
    } else {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
    }
  });
  server.keepAliveTimeout = 500;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    hits: (p) => hits.get(p) || 0,
    state,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** A `[[watch]]` rule for `/data`, refetched only when the tag `data` is purged: the rule
 * `extra` of the watch tests. */
export const WATCH_DATA = `
[[watch]]
path = "/data"
interval = "0s"
tags = ["data"]
min_interval = "10ms"
`;

/** [`WATCH_DATA`] with `inject = true`: unpoll adds the client to the app's pages. */
export const WATCH_DATA_INJECTED = WATCH_DATA + `inject = true
`;

/** unpoll's config for the tests: one `[[stream]]` rule, `/events?room=NAME`, with a 1 s
 * heartbeat, then the rules in `extra`; with `tls` ({cert, key} PEM paths) the main
 * listener speaks TLS. */
export function config({ port, adminPort, upstream, extra = "", tls = null }) {
  const tlsSection = tls ? `\n[tls]\ncert = "${tls.cert}"\nkey = "${tls.key}"\n` : "";
  return `listen = "127.0.0.1:${port}"
upstream = "${upstream}"
workers = 1

[admin]
listen = "127.0.0.1:${adminPort}"
token = "${TOKEN}"

[proxy]
shutdown_grace = "1s"

[[stream]]
path = "/events"
channels = ["room:{query.room}"]
auth = "none"
heartbeat = "1s"
retry = "1s"
${extra}${tlsSection}`;
}

/** Start `target/debug/unpoll --config FILE` and wait for its `listening` line. */
export async function startUnpoll(opts) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "unpoll-browser-"));
  const file = path.join(dir, "unpoll.toml");
  fs.writeFileSync(file, config(opts));
  const child = spawn(BINARY, ["--config", file], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const exited = once(child, "exit");
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("unpoll did not start:\n" + log)), 20000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("listening")) {
        clearTimeout(timer);
        resolve();
      }
    });
    exited.then(() => reject(new Error("unpoll exited:\n" + log)));
  });
  const base = `${opts.tls ? "https" : "http"}://127.0.0.1:${opts.port}`;
  const admin = `http://127.0.0.1:${opts.adminPort}`;
  return {
    base,
    admin,
    log: () => log,
    /** SIGTERM, and wait for the process to exit. */
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    },
    /** POST one event to the admin listener's /publish; resolves to its id. */
    async publish(channel, data, event) {
      const res = await fetch(admin + "/publish", {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify(event ? { channel, event, data } : { channel, data }),
      });
      if (res.status !== 200) throw new Error(`publish: ${res.status} ${await res.text()}`);
      return res.json();
    },
    async stats() {
      return (await fetch(admin + "/stats")).json();
    },
    /** POST /purge of `tags` on the admin listener (what a tap or a NOTIFY does). */
    async purge(tags) {
      const res = await fetch(admin + "/purge", {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ tags }),
      });
      if (!res.ok) throw new Error(`purge: ${res.status} ${await res.text()}`);
    },
    async metrics() {
      return (await fetch(admin + "/metrics")).text();
    },
  };
}

/** unpoll on fresh ports in front of a fresh upstream, with the rules in `extra` (and
 * `tls`, see [`config`]). */
export async function startAll(extra = "", tls = null) {
  const upstream = await startUpstream();
  const opts = {
    port: await freePort(),
    adminPort: await freePort(),
    upstream: upstream.url,
    extra,
    tls,
  };
  const unpoll = await startUnpoll(opts);
  return { upstream, unpoll, opts };
}

/** A self-signed certificate for 127.0.0.1 and localhost (ECDSA P-256, openssl), in a
 * temp dir: `{ cert, key }` PEM paths. */
export function selfSignedCert() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "unpoll-cert-"));
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], { stdio: "ignore" });
  return { cert, key };
}

/** The system Chromium, headless, without a network of its own beyond loopback; `args`
 * are added (e.g. `--ignore-certificate-errors` for a self-signed certificate). */
export function launch(args = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      ...args,
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A browser context (one profile). With UNPOLL_CLIENT_JS=FILE the pages get that file as
 * /_unpoll/client.js instead of the binary's: to check that a test fails without a part of
 * the client, without rebuilding. */
export async function newContext(browser) {
  const context = await browser.newContext();
  const override = process.env.UNPOLL_CLIENT_JS;
  if (override) {
    await context.route("**/_unpoll/client.js", (route) =>
      route.fulfill({ contentType: "text/javascript", body: fs.readFileSync(override, "utf8") }),
    );
  }
  return context;
}

/** Poll `check` until it returns a truthy value (returned), or fail after `timeout` ms
 * saying `what` and the last value seen (or what `describe()` says then). */
export async function eventually(what, check, timeout = 10000, describe = null) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const seen = describe ? await describe() : JSON.stringify(last, null, 0);
      throw new Error(`timed out waiting for ${what}; last: ${seen}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A plain HTTP proxy in front of unpoll that can be told to answer `/_unpoll/multi` with
 * 502 (and to cut the streams it is carrying), as a failing load balancer would. */
export async function startFrontProxy(target) {
  const t = new URL(target);
  const state = { fail: false, buffer: false, multiRequests: 0, failed: 0, hits: new Map() };
  const streams = new Set();
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    state.hits.set(pathname, (state.hits.get(pathname) || 0) + 1);
    const multi = req.url.startsWith("/_unpoll/multi");
    if (multi) state.multiRequests++;
    if (multi && state.fail) {
      state.failed++;
      res.writeHead(502, { "content-type": "text/plain" });
      res.end("bad gateway");
      return;
    }
    const up = http.request(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode, upRes.headers);
        // A buffering proxy: the head goes out, the body waits for an end that never comes.
        if (multi && state.buffer) res.flushHeaders();
        else upRes.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
    if (multi) {
      const entry = { req, res, up };
      streams.add(entry);
      res.on("close", () => streams.delete(entry));
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    /** Requests for `pathname` that went through: what reached the network. */
    hits: (p) => state.hits.get(p) || 0,
    /** From now on, multi answers 502; open multi streams are cut. */
    fail() {
      state.fail = true;
      this.cut();
    },
    /** From now on, multi streams are buffered (nothing of their body gets through); open
     * ones are cut. */
    buffer() {
      state.buffer = true;
      this.cut();
    },
    cut() {
      for (const s of streams) {
        s.up.destroy();
        s.res.destroy();
      }
    },
    heal() {
      state.fail = false;
      state.buffer = false;
    },
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}
