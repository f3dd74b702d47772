// HTTP/2 over TLS in the system Chromium: ten tabs of one origin, each with its own
// EventSource, all load and stream on one h2 connection. Over HTTP/1.1 the browser's six
// connections per host would leave tabs 7–10 without their page. Run with
// tests/browser/run (or `node --test tls.test.mjs` here after `cargo build`).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { eventually, launch, newContext, selfSignedCert, startAll } from "./harness.mjs";

let browser;
before(async () => {
  // The certificate is self-signed; the test is about the transport, not the trust chain.
  browser = await launch(["--ignore-certificate-errors"]);
});
after(async () => {
  await browser?.close();
});

const metric = (text, name) => {
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.slice(name.length + 1)) : 0;
};

test("10 tabs over https with their own EventSource all load and stream on one h2 connection", async () => {
  const { upstream, unpoll } = await startAll("", selfSignedCert());
  const context = await newContext(browser);
  try {
    assert.ok(unpoll.base.startsWith("https://"));
    const url = `${unpoll.base}/eventsource`;
    const open = async () => {
      const page = await context.newPage();
      page.on("pageerror", (e) => console.error("page error:", e));
      await page.goto(url, { waitUntil: "load", timeout: 15000 });
      return page;
    };
    // The first tab, then nine at once: the browser knows the origin speaks h2.
    const pages = [await open()];
    pages.push(...(await Promise.all(Array.from({ length: 9 }, open))));
    assert.equal(pages.length, 10);
    await eventually("10 open event streams", async () => {
      const opened = await Promise.all(pages.map((p) => p.evaluate(() => window.opened)));
      const streams = metric(await unpoll.metrics(), "unpoll_stream_connections");
      return opened.every(Boolean) && streams === 10;
    });

    await unpoll.publish("room:a", "hello over h2");
    await eventually("every tab got the event", async () => {
      const got = await Promise.all(pages.map((p) => p.evaluate(() => window.got)));
      return got.every((g) => g.length === 1 && g[0] === '"hello over h2"');
    });

    for (const page of pages) {
      const protocol = await page.evaluate(
        () => performance.getEntriesByType("navigation")[0].nextHopProtocol,
      );
      assert.equal(protocol, "h2");
    }
    const metrics = await unpoll.metrics();
    assert.equal(metric(metrics, 'unpoll_tls_handshakes_total{result="h2"}'), 1, metrics);
    assert.equal(metric(metrics, 'unpoll_tls_handshakes_total{result="http1"}'), 0, metrics);
    assert.equal(upstream.hits("/eventsource"), 10);
  } finally {
    await context.close();
    await unpoll.stop();
    upstream.close();
  }
});
