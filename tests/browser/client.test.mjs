// unpoll's browser client (/_unpoll/client.js) in the system Chromium, against the real
// unpoll binary and a real upstream: tabs share one connection, takeover, restart,
// fallback. Run with tests/browser/run (or `node --test` here after `cargo build`).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  eventually,
  launch,
  newContext,
  startAll,
  startFrontProxy,
  startUnpoll,
  WATCH_DATA,
  WATCH_DATA_INJECTED,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/** What each page got, as `[{url, name, data, id}]` lists. */
const got = (pages) => Promise.all(pages.map((p) => p.evaluate(() => window.got)));
const statusOf = (page) => page.evaluate(() => unpoll.status());

/** Open `n` tabs of one context (one browser profile) on `url`; all must load. */
async function openTabs(context, n, url) {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const page = await context.newPage();
      page.on("pageerror", (e) => console.error("page error:", e));
      await page.goto(url, { waitUntil: "load", timeout: 15000 });
      return page;
    }),
  );
}

/** The tab holding the connection (exactly one). */
async function leaderOf(pages) {
  return eventually("exactly one leader", async () => {
    const leaders = [];
    for (const p of pages) if ((await statusOf(p)).leader) leaders.push(p);
    return leaders.length === 1 && leaders[0];
  });
}

/** Every page's events of `url` are exactly `expected` (data values), in order, once. */
async function allGot(pages, url, expected, what) {
  await eventually(
    what,
    async () => {
      const lists = await got(pages);
      return lists.every((l) => {
        const mine = l.filter((e) => e.url === url).map((e) => e.data.n);
        return mine.length >= expected.length;
      }) && lists;
    },
    15000,
  );
  for (const list of await got(pages)) {
    assert.deepEqual(
      list.filter((e) => e.url === url).map((e) => e.data.n),
      expected,
      `${what}: every tab gets every event once, in order`,
    );
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test("10 tabs over HTTP/1.1 all load, all get every event, on one stream connection", async () => {
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  try {
    const pages = await openTabs(context, 10, `${unpoll.base}/page?sub=/events?room=a`);
    assert.equal(pages.length, 10);
    // The one connection carries the subscription (no event can be published before).
    const connections = async () => (await unpoll.stats()).stream_connections;
    await eventually("one stream connection", async () => (await connections()) === 1, 10000,
      async () => `stream_connections=${await connections()}`);
    await leaderOf(pages);
    for (const n of range(1, 5)) await unpoll.publish("room:a", { n });
    await allGot(pages, "/events?room=a", range(1, 5), "10 tabs");
    const stats = await unpoll.stats();
    assert.equal(stats.stream_connections, 1, "one stream connection for 10 tabs");
    // The tabs still make ordinary requests: the browser's 6 connections are not held.
    const res = await pages[9].evaluate(() => fetch("/data").then((r) => r.json()));
    assert.deepEqual(res, { version: 1 });
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("the ES module exports the same client", async () => {
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  try {
    const [page] = await openTabs(context, 1, `${unpoll.base}/module?sub=/events?room=mod`);
    const exported = await eventually("the module ran", () => page.evaluate(() => window.exports));
    assert.deepEqual(exported, { same: true, status: { mode: "stream", leader: false } });
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    await unpoll.publish("room:mod", { n: 1 });
    await allGot([page], "/events?room=mod", [1], "module");
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("without Web Locks each tab holds its own connection", async () => {
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  await context.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined });
  });
  try {
    const pages = await openTabs(context, 3, `${unpoll.base}/page?sub=/events?room=nl`);
    for (const p of pages) assert.deepEqual(await statusOf(p), { mode: "stream", leader: true });
    await eventually("three connections", async () => (await unpoll.stats()).stream_connections === 3);
    for (const n of range(1, 3)) await unpoll.publish("room:nl", { n });
    await allGot(pages, "/events?room=nl", range(1, 3), "each on its own");
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("the leader tab closes: another takes over, no event lost or duplicated", async () => {
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  try {
    const pages = await openTabs(context, 4, `${unpoll.base}/page?sub=/events?room=t`);
    const leader = await leaderOf(pages);
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    for (const n of range(1, 5)) await unpoll.publish("room:t", { n });
    await allGot(pages, "/events?room=t", range(1, 5), "before takeover");

    // Publish right after the leader went away, before another holds the stream: the
    // events of the gap must be replayed from the ids the tabs share with the new leader.
    await leader.close();
    const started = Date.now();
    for (const n of range(6, 15)) await unpoll.publish("room:t", { n });
    const rest = pages.filter((p) => p !== leader);
    await leaderOf(rest);
    const took = Date.now() - started;
    assert.ok(took < 1000, `a new leader within 1 s (took ${took} ms)`);
    for (const n of range(16, 20)) await unpoll.publish("room:t", { n });
    await allGot(rest, "/events?room=t", range(1, 20), "after takeover");
    await eventually("one stream connection again", async () => {
      return (await unpoll.stats()).stream_connections === 1;
    });
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("adding and removing subscriptions loses and duplicates no event of the others", async () => {
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  let publishing = true;
  let n = 0;
  let publisher;
  try {
    const [first] = await openTabs(context, 1, `${unpoll.base}/page?sub=/events?room=m`);
    const connections = async () => (await unpoll.stats()).stream_connections;
    await eventually("streaming", async () => (await connections()) === 1);
    // Events published back to back the whole time the connection is replaced.
    publisher = (async () => {
      while (publishing) await unpoll.publish("room:m", { n: ++n });
    })();
    const opened = [];
    for (const room of ["x", "y", "z"]) {
      opened.push(...(await openTabs(context, 1, `${unpoll.base}/page?sub=/events?room=${room}`)));
      await eventually(`a connection carrying room ${room}`, async () => {
        const before = n;
        await eventually("more events", async () => n > before + 5);
        return (await connections()) === 1;
      });
    }
    for (const page of opened) await page.close();
    await eventually("removed", async () => (await connections()) === 1);
    publishing = false;
    await publisher;
    await allGot([first], "/events?room=m", range(1, n), `${n} events`);
    assert.ok(n > 20, `published enough to overlap (${n})`);
  } finally {
    publishing = false;
    await publisher;
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("unpoll restarts: tabs resume; they get onReset when history is gone", async () => {
  const { upstream, unpoll, opts } = await startAll();
  const context = await newContext(browser);
  let second;
  try {
    // Tabs on room r get events before the restart; the tab on room q gets none.
    const pages = await openTabs(context, 3, `${unpoll.base}/page?sub=/events?room=r`);
    const quiet = (await openTabs(context, 1, `${unpoll.base}/page?sub=/events?room=q`))[0];
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    for (const n of range(1, 3)) await unpoll.publish("room:r", { n });
    await allGot(pages, "/events?room=r", range(1, 3), "before restart");

    await unpoll.stop();
    second = await startUnpoll(opts);
    // The new process has no history for the old ids: every tab is told to refetch.
    const tabResets = () =>
      Promise.all([...pages, quiet].map((p) => p.evaluate(() => window.resets)));
    await eventually("a reset in every tab", async () => {
      const resets = await tabResets();
      return resets.every((r) => r.length === 1 && r[0].reason === "other_boot") && resets;
    }, 20000, async () => JSON.stringify({
      resets: await tabResets(),
      status: await Promise.all([...pages, quiet].map((p) => p.evaluate(() => unpoll.status()))),
    }));
    await eventually("resumed", async () => (await second.stats()).stream_connections === 1);
    for (const n of range(4, 6)) await second.publish("room:r", { n });
    await second.publish("room:q", { n: 1 });
    await allGot(pages, "/events?room=r", range(1, 6), "after restart");
    await allGot([quiet], "/events?room=q", [1], "the quiet tab after restart");
    // Another profile whose only tab never had an event: its connection carried no id, so
    // only the stream's position tells it where it stood.
    const other = await newContext(browser);
    try {
      const [alone] = await openTabs(other, 1, `${second.base}/page?sub=/events?room=alone`);
      await eventually("two connections", async () => (await second.stats()).stream_connections === 2);
      await eventually("the position", () => alone.evaluate(() => unpoll.status().mode === "stream"));
      await second.stop();
      second = await startUnpoll(opts);
      await eventually("a reset in the quiet profile", async () => {
        const r = await alone.evaluate(() => window.resets);
        return r.length === 1 && r[0].reason === "other_boot";
      }, 20000);
    } finally {
      await other.close();
    }
  } finally {
    await context.close();
    await second?.stop();
    upstream.close();
  }
});

test("the multi path answers 502: watched URLs are polled, then streaming resumes", async () => {
  const { upstream, unpoll } = await startAll();
  const front = await startFrontProxy(unpoll.base);
  const context = await newContext(browser);
  try {
    const [page] = await openTabs(
      context,
      1,
      `${front.url}/page?sub=/events?room=f&watch=/data&every=300`,
    );
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    await unpoll.publish("room:f", { n: 1 });
    await allGot([page], "/events?room=f", [1], "streaming");
    assert.equal((await statusOf(page)).mode, "stream");

    front.fail();
    await eventually("fallback mode", async () => (await statusOf(page)).mode === "fallback", 20000);
    assert.ok(front.state.failed >= 3, `rebuilt after each 502 (${front.state.failed})`);
    // Watched URLs are polled every fallbackInterval, and changes reach the page.
    const polls = upstream.hits("/data");
    upstream.state.version = 2;
    await eventually("fallback polls", async () => upstream.hits("/data") >= polls + 2);
    await eventually("the new body by polling", () =>
      page.evaluate(() => window.watched.some((w) => w.data.version === 2)),
    );

    front.heal();
    await eventually("back to streaming", async () => (await statusOf(page)).mode === "stream", 40000);
    await eventually("stream open", async () => (await unpoll.stats()).stream_connections === 1);
    await unpoll.publish("room:f", { n: 2 });
    await allGot([page], "/events?room=f", [1, 2], "streaming again");
  } finally {
    await context.close();
    front.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("behind a buffering proxy: no heartbeat within twice its interval, fallback, then back", async () => {
  const { upstream, unpoll } = await startAll();
  const front = await startFrontProxy(unpoll.base);
  const context = await newContext(browser);
  try {
    const [page] = await openTabs(
      context,
      1,
      `${front.url}/page?sub=/events?room=b&watch=/data&every=300`,
    );
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    // Idle for several heartbeats (1 s): the visible heartbeats keep the one stream.
    await unpoll.publish("room:b", { n: 1 });
    await allGot([page], "/events?room=b", [1], "streaming");
    const start = Date.now();
    await eventually("3 s of idle stream", async () => Date.now() - start > 3000, 5000);
    assert.equal(front.state.multiRequests, 1, "the idle stream was kept");
    assert.equal((await statusOf(page)).mode, "stream");

    front.buffer();
    await eventually("fallback mode", async () => (await statusOf(page)).mode === "fallback", 30000);
    assert.ok(front.state.multiRequests >= 4, `reopened (${front.state.multiRequests})`);
    assert.equal((await unpoll.stats()).stream_connections > 0, true, "unpoll kept answering");
    const polls = upstream.hits("/data");
    await eventually("fallback polls", async () => upstream.hits("/data") >= polls + 2);

    front.heal();
    await eventually("back to streaming", async () => (await statusOf(page)).mode === "stream", 40000);
    await unpoll.publish("room:b", { n: 2 });
    await allGot([page], "/events?room=b", [1, 2], "streaming again");
  } finally {
    await context.close();
    front.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("injected mode: while nothing streams the watched URL, the page's own polls go through", async () => {
  // Without a [[watch]] rule for `/data` the stream refuses it: the hook must then leave the
  // legacy page's XHR and fetch polls to the network, unchanged.
  const { upstream, unpoll } = await startAll();
  const context = await newContext(browser);
  try {
    const [page] = await openTabs(context, 1, `${unpoll.base}/legacy`);
    const seen = () => page.evaluate(() => window.seen);
    await eventually("polls with both APIs", async () => {
      const s = await seen();
      return s.xhr.length >= 2 && s.fetch.length >= 2;
    });
    upstream.state.version = 2;
    const before = upstream.hits("/data");
    await eventually("the new version through both", async () => {
      const s = await seen();
      return s.xhr.at(-1) === 2 && s.fetch.at(-1) === 2;
    });
    assert.ok(upstream.hits("/data") >= before + 2, "the polls reached the app");
    // Every one of them: none was answered from the client's copy.
    const s = await seen();
    assert.ok(
      upstream.hits("/data") >= s.xhr.length + s.fetch.length,
      `${upstream.hits("/data")} requests at the app for ${s.xhr.length} + ${s.fetch.length} polls`,
    );
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

test("unpoll.watch on a [[watch]] URL gets each change once, over the one multi stream", async () => {
  const { upstream, unpoll } = await startAll(WATCH_DATA);
  const context = await newContext(browser);
  try {
    // A fallback interval far beyond the test: every version comes by the stream.
    const [page] = await openTabs(context, 1, `${unpoll.base}/page?watch=/data&every=600000`);
    const versions = () => page.evaluate(() => window.watched.map((w) => w.data.version));
    await eventually("the current body", async () => (await versions()).includes(1));
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    for (const v of [2, 3, 4]) {
      upstream.state.version = v;
      await unpoll.purge(["data"]);
      await eventually(`version ${v}`, async () => (await versions()).at(-1) === v);
    }
    assert.deepEqual(await versions(), [1, 2, 3, 4], "each version once, in order");
    assert.equal((await statusOf(page)).mode, "stream");
    assert.equal(
      Number(/^unpoll_watch_subscribers (\d+)/m.exec(await unpoll.metrics())[1]),
      1,
      "the multi stream carries a watch subscription",
    );
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});

/** A legacy page polling `/data` every 200 ms with XHR and fetch, loaded from `pagePath`
 * through a front proxy with `rules`: once the stream carries `/data`, no poll reaches the
 * network (counted at the front and at the app), and the page still shows new data. */
async function legacyPageStaysInTheBrowser(rules, pagePath, check = async () => {}) {
  const { upstream, unpoll } = await startAll(rules);
  const front = await startFrontProxy(unpoll.base);
  const context = await newContext(browser);
  try {
    const [page] = await openTabs(context, 1, `${front.url}${pagePath}`);
    await check(page, unpoll);
    const seen = () => page.evaluate(() => window.seen);
    const polls = async () => {
      const s = await seen();
      return s.xhr.length + s.fetch.length;
    };
    // Until the stream carries `/data` the polls go out; then they stop leaving the page.
    await eventually("streaming", async () => (await unpoll.stats()).stream_connections === 1);
    let quietFrom = null;
    await eventually(
      "polls answered in the page",
      async () => {
        const now = { hits: front.hits("/data"), polls: await polls() };
        if (!quietFrom || now.hits !== quietFrom.hits) quietFrom = now;
        return now.polls >= quietFrom.polls + 6;
      },
      15000,
    );
    const atTheFront = front.hits("/data");
    const atTheApp = upstream.hits("/data");
    const before = await polls();
    // The app changes; a purge of the watch's tag (a tap, a NOTIFY) pushes the new body.
    upstream.state.version = 2;
    await unpoll.purge(["data"]);
    await eventually("the page shows the new data through both APIs", async () => {
      const s = await seen();
      return s.xhr.at(-1) === 2 && s.fetch.at(-1) === 2;
    });
    await eventually("ten more polls", async () => (await polls()) >= before + 10);
    assert.equal(front.hits("/data"), atTheFront, "no poll reached the network");
    assert.equal(upstream.hits("/data"), atTheApp + 1, "the app saw only the purge's refetch");
  } finally {
    await context.close();
    front.close();
    await unpoll.stop();
    upstream.close();
  }
}

test("a legacy polling page with the watch tag: no poll reaches the network while streaming", () =>
  legacyPageStaysInTheBrowser(WATCH_DATA, "/legacy"));

test("inject = true: unpoll adds the client to the app's page, whose polls then stay in the browser", () =>
  legacyPageStaysInTheBrowser(WATCH_DATA_INJECTED, "/legacy-plain", async (page, unpoll) => {
    const tag = await page.evaluate(() =>
      document.querySelector("script[data-unpoll-watch]")?.getAttribute("data-unpoll-watch"),
    );
    assert.equal(tag, "/data", "the page got the client, told to watch /data");
    const metrics = await unpoll.metrics();
    assert.match(metrics, /^unpoll_watch_injected_pages_total 1$/m);
  }));
