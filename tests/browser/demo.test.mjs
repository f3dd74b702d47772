// `unpoll demo` in the system Chromium: two windows (two browser profiles) of the chat and
// the dashboard. Each window watches the list through /_unpoll/client.js; a message posted
// in one window appears in the other without a request for the list, the dashboard's
// "saved" counter rises, and a screenshot of it is written to docs/dashboard.png.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { BINARY, eventually, launch, newContext } from "./harness.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SCREENSHOT = process.env.UNPOLL_SCREENSHOT || path.join(ROOT, "docs/dashboard.png");

/** `unpoll demo` on free ports; resolves once it printed its three URLs. */
async function startDemo() {
  const child = spawn(BINARY, ["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = once(child, "exit");
  let out = "";
  const urls = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("unpoll demo did not start:\n" + out)), 20000);
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const found = out.match(/http:\/\/[0-9.:]+\//g);
      if (found && found.length >= 3) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    exited.then(() => reject(new Error("unpoll demo exited:\n" + out)));
  });
  const [chat, dashboard, app] = urls;
  return {
    chat,
    dashboard,
    app,
    stats: async () => (await fetch(dashboard + "stats")).json(),
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

let browser;
let demo;
before(async () => {
  browser = await launch();
  demo = await startDemo();
});
after(async () => {
  await browser?.close();
  await demo?.stop();
});

async function open(url, errors) {
  const context = await newContext(browser);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });
  return page;
}

const texts = (page) =>
  page.evaluate(() => [...document.querySelectorAll("#messages li")].map((li) => li.lastChild.textContent));
const counts = (page) => page.evaluate(() => ({ ...window.demo }));
const savedOn = (page) => page.evaluate(() => Number(document.getElementById("saved").textContent.replace(/\D/g, "")));

test("a message posted in one window appears in the other without a poll; the dashboard counts what was saved", async () => {
  const errors = [];
  const alice = await open(demo.chat, errors);
  const bob = await open(demo.chat, errors);
  await alice.setViewportSize({ width: 1000, height: 800 });
  const dashboard = await open(demo.dashboard, errors);
  await dashboard.setViewportSize({ width: 1100, height: 640 });

  // Both windows watch the list (each profile has its own connection), and have it.
  await eventually("two watchers of the list", async () => (await demo.stats()).watch.subscribers === 2);
  await eventually("the dashboard shows both subscribers", async () =>
    (await dashboard.textContent("#subscribers")) === "2");
  for (const page of [alice, bob]) {
    await eventually("the page has the list from unpoll", async () => (await counts(page)).pushes >= 1);
  }
  const savedBefore = await savedOn(dashboard);
  // From here on Bob's page must not ask for the list: the new one is pushed.
  const bobAsked = [];
  bob.on("request", (r) => r.url().endsWith("/api/messages") && bobAsked.push(r.method()));

  await alice.fill("input[name=text]", "hello from Alice");
  await alice.click("button");
  await eventually("Bob sees Alice's message", async () =>
    (await texts(bob)).includes("hello from Alice"), 10000, async () => JSON.stringify(await counts(bob)));
  const bobs = await counts(bob);
  assert.deepEqual(bobAsked, [], "Bob's page sent no request for the list");
  assert.equal(bobs.polls + bobs.fetches, 0, "Bob's page never polled on its timer");
  assert.ok(bobs.pushes >= 2, "Bob's page got the list, then the new one pushed");
  assert.equal(await bob.textContent("#mode"), "push");
  await eventually("Alice sees her own message too", async () => (await texts(alice)).includes("hello from Alice"));

  // One upstream request (the watcher's refetch after the tap's purge) served both windows,
  // and a page without the client that polls the list is answered from the entry it stored.
  const poll = await fetch(demo.chat + "api/messages");
  assert.match(poll.headers.get("cache-status") || "", /; hit/);
  assert.ok((await poll.json()).messages.some((m) => m.text === "hello from Alice"));
  await eventually("the dashboard's saved counter rises", async () =>
    (await savedOn(dashboard)) > savedBefore, 10000, async () => `${savedBefore} → ${await savedOn(dashboard)}`);

  // Some traffic for the picture: what 60 pages polling every 3 s without push would send
  // (about 20 requests/s) for 15 s, with a message every 3 s.
  let polling = true;
  const pollers = Array.from({ length: 4 }, async () => {
    while (polling) {
      await (await fetch(demo.chat + "api/messages")).text();
      await new Promise((r) => setTimeout(r, 200));
    }
  });
  for (let i = 1; i <= 5; i++) {
    const who = i % 2 ? bob : alice;
    await who.fill("input[name=text]", `message ${i}`);
    await who.click("button");
    await eventually(`message ${i} everywhere`, async () =>
      (await texts(alice)).includes(`message ${i}`) && (await texts(bob)).includes(`message ${i}`));
    // Paced by the dashboard's samples (one a second), not by a timer.
    const frames = await dashboard.evaluate(() => window.dashboard.frames);
    await eventually("three more samples", async () =>
      (await dashboard.evaluate(() => window.dashboard.frames)) >= frames + 3);
  }
  polling = false;
  await Promise.all(pollers);
  const framesNow = await dashboard.evaluate(() => window.dashboard.frames);
  await eventually("two more samples on the dashboard", async () =>
    (await dashboard.evaluate(() => window.dashboard.frames)) >= framesNow + 2);
  assert.deepEqual(errors, []);
  await dashboard.screenshot({ path: SCREENSHOT, fullPage: true });
});
