/*! unpoll browser client: one connection per browser for every stream of every tab.
 * README "In the browser"; wire protocol: GET /_unpoll/multi (MULTI.md). No dependencies.
 *
 * Shape: each tab keeps its own subscriptions (`mine`). One tab, the leader (Web Locks),
 * holds the union of every tab's subscriptions (`wanted`, by URL) on ONE multiplexed
 * EventSource, and forwards every frame over a BroadcastChannel; each tab drops what it
 * has already seen by id. Without Web Locks every tab is its own leader. */
(function (g) {
  "use strict";
  if (g.unpoll) return;

  const MULTI = "/_unpoll/multi";
  const BACKOFF_MIN = 1000; // reconnect delays double from here…
  const BACKOFF_MAX = 30000; // …up to here, each with up to 50% jitter added
  const FAILS_TO_FALLBACK = 3; // consecutive connections that never carried a message
  const HEARTBEAT = 15000; // assumed until the stream's first {"hb":ms} says its own
  const FALLBACK_INTERVAL = 5000; // default watch poll period while no stream is held
  const rawFetch = g.fetch.bind(g); // never answered by the injected hook below
  const locks = g.navigator && g.navigator.locks;
  const chan = locks && g.BroadcastChannel ? new BroadcastChannel("unpoll") : null;
  const tab = Math.random().toString(36).slice(2);

  // ---- this tab ----------------------------------------------------------------------
  const mine = new Set(); // this tab's open subscriptions
  let leader = false;
  let mode = "stream";
  let carried = new Set(); // URLs a live stream carries now (told by the leader)
  let electing = false;

  /** Same-origin path + query: what `s=` carries and what frames are keyed by. */
  function norm(url) {
    const u = new URL(url, g.location.href);
    if (u.origin !== g.location.origin) throw new Error("unpoll: not same-origin: " + url);
    return u.pathname + u.search;
  }

  /** Whether event `id` was already seen after `last`: an equal watch version, or an
   * older-or-equal sequence number of the same boot (`<boot>-<seq>`). */
  function seen(last, id, watch) {
    if (last == null || id == null) return false;
    if (watch) return last === id;
    const a = last.lastIndexOf("-"), b = id.lastIndexOf("-");
    return last.slice(0, a) === id.slice(0, b) && +id.slice(b + 1) <= +last.slice(a + 1);
  }

  /** Call a user callback; its exception is reported without breaking the others. */
  function call(fn, ...args) {
    if (!fn) return;
    try {
      fn(...args);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }

  function open(url, watch, cb, every) {
    const sub = { url: norm(url), watch, cb, every, last: null, text: undefined };
    mine.add(sub);
    changed();
    // A watch starts from the current body (the cached poll), then follows the stream.
    if (watch) fetchBody(sub.url).then((m) => m && take(sub, m), () => {});
    return {
      close() {
        if (mine.delete(sub)) changed();
      },
    };
  }

  /** One frame (`{id, event, data}`, `{error}`, or a reset) for one subscription. */
  function take(sub, m) {
    if (m.error) {
      if (!sub.watch) call(sub.cb.onEvent, "error", { status: m.error, reason: m.reason }, null);
      return;
    }
    if (m.event === "reset") {
      if (m.id) sub.last = m.id;
      const d = m.data || {};
      if (!sub.watch) call(sub.cb.onReset, d.reason, d.detail);
      return;
    }
    if (seen(sub.last, m.id, sub.watch)) return;
    if (m.id != null) sub.last = m.id;
    if (sub.watch) {
      const text = JSON.stringify(m.data);
      if (text === sub.text) return;
      sub.text = text;
      call(sub.cb, m.data);
    } else {
      call(sub.cb.onEvent, m.event || "message", m.data, m.id);
    }
  }

  function deliver(url, m) {
    for (const sub of mine) if (sub.url === url) take(sub, m);
  }

  /** What this tab wants, with where each subscription is: shared with the leader. */
  function list() {
    return [...mine].map((s) => ({ url: s.url, watch: s.watch, last: s.last, every: s.every }));
  }

  function changed() {
    if (!leader) elect();
    if (leader) wantedFrom(tab, list());
    else if (chan) chan.postMessage({ t: "subs", tab, subs: list() });
  }

  /** Queue for leadership; the lock is held until this tab goes away. */
  function elect() {
    if (electing) return;
    electing = true;
    if (!chan) return lead();
    locks.request("unpoll-leader", () => new Promise(lead));
  }

  if (chan) {
    chan.onmessage = (e) => {
      const m = e.data;
      if (m.t === "ev") deliver(m.url, m.m);
      else if (m.t === "mode") (mode = m.mode), (carried = new Set(m.carried));
      else if (m.t === "hello" && mine.size) chan.postMessage({ t: "subs", tab, subs: list() });
      else if (leader && m.t === "subs") wantedFrom(m.tab, m.subs);
      else if (leader && m.t === "bye") wantedFrom(m.tab, []);
    };
    g.addEventListener("pagehide", () => leader || chan.postMessage({ t: "bye", tab }));
  }

  // ---- the leader --------------------------------------------------------------------
  const wanted = new Map(); // url -> {watch, last, floor, every, failed, due}
  const tabs = new Map(); // tab -> its subscriptions, as last announced
  let conn = null; // the connection in use
  let next = null; // a connection opening for a new set; replaces `conn` once it carries
  let fails = 0; // connections in a row that never carried a message
  let retry = 0; // pending reconnect timer
  let attempt = 0;
  let syncTimer = 0;
  let pollTimer = 0;
  let reported = ""; // the last mode and carried URLs sent to the tabs
  let heartbeat = HEARTBEAT; // the last interval a stream announced

  function lead() {
    leader = true;
    tabs.clear();
    wanted.clear();
    wantedFrom(tab, list());
    // Everyone re-announces, with the last id each tab saw: the new connection resumes
    // from there, so a takeover loses nothing; tabs drop what they already had.
    if (chan) chan.postMessage({ t: "hello" });
  }

  function send(m) {
    if (chan && leader) chan.postMessage(m);
  }

  function setMode(m) {
    mode = m;
    report();
    poll();
  }

  /** Tell the tabs the mode and which URLs a live stream carries (the injected hook
   * answers only those); again on every announcement, for tabs that just came. */
  function report(always) {
    const live = conn && conn.live && mode === "stream" ? conn.urls : [];
    const now = live.filter((url) => wanted.has(url) && !wanted.get(url).failed);
    carried = new Set(now);
    const key = mode + "\n" + now.join("\n");
    if (key !== reported || always) send({ t: "mode", mode, carried: now });
    reported = key;
  }

  /** A tab's subscriptions changed (or it said hello, or left). */
  function wantedFrom(id, subs) {
    if (subs.length) tabs.set(id, subs);
    else tabs.delete(id);
    const urls = new Set();
    for (const list of tabs.values()) {
      for (const s of list) {
        urls.add(s.url);
        let w = wanted.get(s.url);
        if (!w) wanted.set(s.url, (w = { watch: s.watch, last: s.last, floor: null, every: s.every }));
        // Resume from the oldest position any tab reported: the others drop the repeats.
        else if (s.last && (!w.last || (!w.watch && seen(w.last, s.last, false)))) w.last = s.last;
        if (s.every && (!w.every || s.every < w.every)) w.every = s.every;
      }
    }
    for (const url of wanted.keys()) if (!urls.has(url)) wanted.delete(url);
    report(true);
    clearTimeout(syncTimer);
    syncTimer = setTimeout(sync, 20); // one reconnect for a burst of announcements
  }

  /** Open a connection for the wanted set unless one carries it already. */
  function sync() {
    const urls = [...wanted.keys()];
    const key = urls.join("\n");
    if (next && next.key === key) return;
    drop(next);
    next = null;
    if (conn && conn.key === key) return;
    if (!urls.length) {
      drop(conn);
      conn = null;
      setMode("stream");
    } else if (!retry) {
      next = connect(urls, key);
    }
    poll();
  }

  function connect(urls, key) {
    const c = { urls, key, hb: heartbeat, pos: null, max: null, live: false, timer: 0 };
    const s = urls.map((url) => {
      const w = wanted.get(url);
      const from = w.last || w.floor;
      if (!from) return "s=" + encodeURIComponent(url);
      const u = new URL(url, g.location.origin);
      u.searchParams.set("last_event_id", from);
      return "s=" + encodeURIComponent(u.pathname + u.search);
    });
    c.es = new EventSource(MULTI + "?" + s.join("&"));
    // Answered 200: switch to it, then close the old one (MULTI.md); the frames both carry
    // meanwhile are dropped by id.
    c.es.onopen = () => {
      if (c === next) {
        drop(conn);
        conn = c;
        next = null;
      }
      alive(c);
      report();
    };
    c.es.onmessage = (e) => message(c, e.data);
    c.es.onerror = () => fail(c);
    alive(c);
    return c;
  }

  /** Re-arm the deadline: no message within twice the heartbeat means the stream is not
   * held (a buffering proxy, a dead peer). */
  function alive(c) {
    clearTimeout(c.timer);
    c.timer = setTimeout(() => fail(c), 2 * c.hb);
  }

  function drop(c) {
    if (!c) return;
    c.es.close();
    clearTimeout(c.timer);
    // Where a subscription without events stands: its resume point after a restart.
    for (const url of c.urls) {
      const w = wanted.get(url);
      if (w && !w.last) w.floor = c.pos || c.max || w.floor;
    }
  }

  function message(c, data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (m.hb) c.hb = heartbeat = m.hb;
    if (m.pos) c.pos = m.pos;
    alive(c);
    if (!c.live) {
      c.live = true;
      fails = attempt = 0;
      setMode("stream");
    }
    if (m.hb) return;
    const url = c.urls[m.s];
    const w = wanted.get(url);
    if (!w) return;
    // The newest event id this connection carried: a resume point for the others.
    if (!w.watch && m.id && !m.error && !seen(c.max, m.id, false)) c.max = m.id;
    frame(url, m);
  }

  function fail(c) {
    drop(c);
    if (c === next) next = null;
    else if (c === conn) conn = null;
    else return;
    report();
    if (!c.live && ++fails >= FAILS_TO_FALLBACK) setMode("fallback");
    if (!next) later();
  }

  /** Reconnect after 1 s, 2 s, 4 s… up to 30 s, plus jitter so tabs of many browsers
   * don't come back together after a restart. */
  function later() {
    clearTimeout(retry);
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt++);
    retry = setTimeout(() => {
      retry = 0;
      sync();
    }, Math.min(BACKOFF_MAX, base * (1 + Math.random() / 2)));
  }

  /** One frame for `url` (from the stream, or a poll with `via`): dedup, forward, act. */
  function frame(url, m) {
    const w = wanted.get(url);
    if (!w) return;
    const { id } = m;
    delete m.s;
    if (m.error) {
      w.failed = true;
      poll();
      report();
    } else {
      if (!m.via && w.failed) {
        w.failed = false;
        poll();
        report();
      }
      if (m.event === "reset") {
        if (id) w.last = id;
        // A watch has nothing to replay: its current body is all it needs.
        if (w.watch) return refetch(url);
      } else if (m.event !== "access_ended") {
        if (seen(w.last, id, w.watch)) return;
        if (id != null) w.last = id;
      }
    }
    send({ t: "ev", url, m });
    deliver(url, m);
  }

  /** GET a watched URL the ordinary way (no event-stream Accept: the cached poll). */
  function fetchBody(url) {
    return rawFetch(url, { credentials: "same-origin" }).then((r) => {
      if (!r.ok) return null;
      const json = /json/i.test(r.headers.get("content-type") || "");
      return r.text().then((t) => ({ id: r.headers.get("etag"), data: json ? JSON.parse(t) : t, via: "poll" }));
    });
  }

  function refetch(url) {
    fetchBody(url).then((m) => m && frame(url, m), () => {});
  }

  /** While no stream is held (or a watch's subscription was refused), poll each watched
   * URL every `fallbackInterval`; streams wait for the connection to come back. */
  function poll() {
    clearTimeout(pollTimer);
    const now = Date.now();
    let soonest = Infinity;
    for (const [url, w] of wanted) {
      if (!w.watch || !leader || (mode !== "fallback" && !w.failed)) {
        w.due = 0;
        continue;
      }
      if (!w.due || now >= w.due) {
        w.due = now + (w.every || FALLBACK_INTERVAL);
        refetch(url);
      }
      soonest = Math.min(soonest, w.due);
    }
    if (soonest < Infinity) pollTimer = setTimeout(poll, soonest - now);
  }

  // ---- the API -----------------------------------------------------------------------
  const unpoll = {
    /** Follow a `[[watch]]` URL: `onData(body)` with each new version (JSON parsed). */
    watch(url, onData, opts) {
      return open(url, true, onData, (opts && opts.fallbackInterval) || FALLBACK_INTERVAL);
    },
    /** Follow a `[[stream]]` URL: `onEvent(name, data, id)`, `onReset(reason, detail)`. */
    subscribe(url, handlers) {
      return open(url, false, handlers || {}, 0);
    },
    /** Whether events arrive by stream or by polling, and whether this tab holds it. */
    status() {
      return { mode, leader };
    },
  };
  g.unpoll = unpoll;

  // ---- zero-change mode: <script src="/_unpoll/client.js" data-unpoll-watch="/a /b"> ----
  const tag = g.document && g.document.currentScript;
  const injected = tag && tag.getAttribute("data-unpoll-watch");
  if (!injected) return;
  const latest = new Map(); // absolute URL -> {url, path, body, type}
  for (const url of injected.split(/\s+/).filter(Boolean)) {
    const abs = new URL(url, g.location.href).href;
    const entry = { url: abs, path: norm(url), body: null, type: "" };
    latest.set(abs, entry);
    unpoll.watch(url, (data) => {
      const text = typeof data === "string";
      entry.body = text ? data : JSON.stringify(data);
      entry.type = text ? "text/plain" : "application/json";
    });
  }

  /** The latest pushed body for a GET of a watched URL, while the stream is healthy. */
  function answer(method, url) {
    if (String(method || "GET").toUpperCase() !== "GET") return null;
    const e = latest.get(new URL(String(url), g.location.href).href);
    return e && e.body !== null && carried.has(e.path) ? e : null;
  }

  g.fetch = function (input, init) {
    const req = input instanceof Request ? input : null;
    const e = answer((init && init.method) || (req && req.method), req ? req.url : input);
    if (!e) return rawFetch(input, init);
    return Promise.resolve(new Response(e.body, { status: 200, headers: { "Content-Type": e.type } }));
  };

  const X = g.XMLHttpRequest.prototype;
  const xOpen = X.open;
  const xSend = X.send;
  const FAKED = ["readyState", "status", "statusText", "responseText", "response", "responseURL"];
  X.open = function (method, url) {
    // A reused request object loses what an earlier answer put on it.
    for (const k of FAKED.concat("getResponseHeader", "getAllResponseHeaders")) delete this[k];
    this._unpoll = answer(method, url);
    return xOpen.apply(this, arguments);
  };
  X.send = function () {
    const e = this._unpoll;
    if (!e) return xSend.apply(this, arguments);
    const xhr = this;
    const json = xhr.responseType === "json";
    const values = [4, 200, "OK", json ? "" : e.body, json ? JSON.parse(e.body) : e.body, e.url];
    FAKED.forEach((k, i) => Object.defineProperty(xhr, k, { value: values[i], configurable: true }));
    xhr.getResponseHeader = (n) => (/^content-type$/i.test(n) ? e.type : null);
    xhr.getAllResponseHeaders = () => "content-type: " + e.type + "\r\n";
    setTimeout(() => {
      for (const t of ["readystatechange", "load", "loadend"]) xhr.dispatchEvent(new Event(t));
    });
  };
})(globalThis);
