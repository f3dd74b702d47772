// Types of unpoll's browser client: /_unpoll/client.js (classic script, `window.unpoll`)
// and /_unpoll/client.mjs (ES module: `import unpoll, { watch, subscribe, status } from …`).

/** What `watch` and `subscribe` return. */
export interface Handle {
  /** Stop this subscription (the shared connection drops it when no tab wants it). */
  close(): void;
}

export interface WatchOptions {
  /** Milliseconds between polls of the URL while no stream can be held. Default 5000. */
  fallbackInterval?: number;
}

export interface SubscribeHandlers {
  /**
   * One event: its name (`"message"` when unnamed), its data (parsed when JSON, else the
   * text) and its id (`<boot>-<seq>`). `"access_ended"` (data `{reason, status}`) ends the
   * subscription server-side; `"error"` (data `{status, reason}`, id null) says it was
   * refused when opened (the others go on).
   */
  onEvent?(name: string, data: unknown, id: string | null): void;
  /**
   * The events since the last one seen cannot be replayed (history evicted, server
   * restarted): refetch your state. `reason`: `evicted`, `other_boot`, `unknown_id`,
   * `unparsable_id`, `source_lost`.
   */
  onReset?(reason: string, detail?: string): void;
}

export interface Status {
  /** `"stream"`: events arrive pushed; `"fallback"`: no stream can be held, watched URLs
   * are polled. */
  mode: "stream" | "fallback";
  /** Whether this tab holds the browser's one connection. */
  leader: boolean;
}

export interface Unpoll {
  /** Follow a `[[watch]]` URL (same origin, else it throws): `onData` gets each new body,
   * parsed when JSON: first the current one (an ordinary GET), then each new version. */
  watch<T = unknown>(url: string, onData: (data: T) => void, options?: WatchOptions): Handle;
  /** Follow a `[[stream]]` URL (same origin, else it throws): its events from now on. */
  subscribe(url: string, handlers: SubscribeHandlers): Handle;
  status(): Status;
}

declare const unpoll: Unpoll;
export default unpoll;
export declare const watch: Unpoll["watch"];
export declare const subscribe: Unpoll["subscribe"];
export declare const status: Unpoll["status"];

declare global {
  interface Window {
    unpoll: Unpoll;
  }
}
