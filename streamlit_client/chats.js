// The chat page's sidebar: the chats this browser opened, and the connection state.
// Loaded by streamlit_client/chats.py as an st.components.v2 module (no iframe, no build).
//
// - The list lives in localStorage (`data.storage_key`): `[{id, at}]`, session ids and
//   when this browser last opened each, newest first, at most `data.max` entries. The
//   chat in `data.current` is recorded once per page load (and again when it changes).
// - The list goes to Python as the state value `chats`, `{v, list}`, whenever it changes
//   (also when another tab of this origin changes it: the `storage` event); Python echoes
//   `v` as `data.seen`, and a value not echoed soon is sent again. Python validates it,
//   reads each chat's first words from the bridge and sends back `data.items`,
//   `[{id, title}]`, which is what is drawn: nothing read from storage is shown before
//   Python has checked it (with per-user binding, another user's chats are left out).
// - A click on an item sends the trigger `open` with its id; Python switches the page.
// - The connection line shows the live state of the page's listener (`.sb-listener`'s
//   `data-status`) when there is one, else what Python's health check said.
// Everything drawn from data is a text node (textContent) or an attribute: never HTML.

const REGISTRY = "__streamlitBridgeChats";
const SESSION_ID = /^[A-Za-z0-9_.:-]{1,128}$/; // the bridge's rule (bridge.models)
const RECHECK_MS = 1000; // how often the connection line looks at the listener
const RESEND_MS = 1000; // a value Python has not read by then is sent again
const RESEND_TRIES = 5;
const PRUNE_AFTER_MS = 15000; // off the page this long (not just during a rerun): forget it

function registry() {
  if (!window[REGISTRY]) window[REGISTRY] = new Map();
  return window[REGISTRY];
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function validId(id) {
  return typeof id === "string" && SESSION_ID.test(id) && id !== "." && id !== "..";
}

// Entries from storage are untrusted (any script of the origin, an older version):
// keep valid, distinct ids, newest first.
function clean(entries, max) {
  const seen = new Set();
  const out = [];
  for (const entry of Array.isArray(entries) ? entries : []) {
    if (!entry || !validId(entry.id) || seen.has(entry.id)) continue;
    seen.add(entry.id);
    out.push({ id: entry.id, at: Number.isFinite(entry.at) ? entry.at : 0 });
  }
  out.sort((a, b) => b.at - a.at);
  return out.slice(0, max);
}

const LIVE_TEXT = {
  open: "Connected",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  stopped: "Disconnected",
};

class Chats {
  constructor(key) {
    this.key = key;
    this.storageKey = null;
    this.max = 30;
    this.memory = []; // the list when localStorage cannot be used
    this.list = [];
    this.recorded = null; // the current chat, once recorded for this page load
    this.sent = null; // JSON of the list last sent to Python
    this.version = 0; // of the value last sent
    this.seen = null; // the version Python last read
    this.tries = 0;
    this.resendTimer = null;
    this.drawn = null; // JSON of the items drawn
    this.current = null;
    this.health = null;
    this.setStateValue = null;
    this.setTriggerValue = null;

    this.root = el("div", "sb-chats");
    this.heading = el("div", "sb-chats-heading", "Chats");
    this.nav = el("nav", "sb-chats-list");
    this.nav.setAttribute("aria-label", "Chats");
    this.connection = el("div", "sb-chats-connection");
    this.state = el("div", "sb-chats-state");
    this.dot = el("span", "sb-chats-dot");
    this.stateText = el("span", "sb-chats-state-text");
    this.state.append(this.dot, this.stateText);
    this.url = el("span", "sb-chats-url");
    this.session = el("span", "sb-chats-session");
    this.sessionLabel = el("span", "sb-chats-label", "Session");
    this.details = el("div", "sb-chats-details");
    const bridgeLabel = el("span", "sb-chats-label", "Bridge");
    this.details.append(bridgeLabel, this.url, this.sessionLabel, this.session);
    this.connection.append(this.state, this.details);
    this.root.append(this.heading, this.nav, this.connection);

    this.onStorage = (event) => {
      if (event.key === this.storageKey) {
        this.list = this.load();
        this.report();
      }
    };
    window.addEventListener("storage", this.onStorage);
    this.observer = new MutationObserver(() => this.showState());
    this.observer.observe(document.body, {
      attributes: true,
      attributeFilter: ["data-status"],
      subtree: true,
    });
    // The listener's element may appear after this one; its status is set before then.
    this.detachedSince = null;
    this.timer = setInterval(() => {
      if (this.root.isConnected) {
        this.detachedSince = null;
        this.showState();
      } else if (this.detachedSince === null) {
        this.detachedSince = Date.now();
      } else if (Date.now() - this.detachedSince >= PRUNE_AFTER_MS) {
        this.dispose();
      }
    }, RECHECK_MS);
  }

  dispose() {
    window.removeEventListener("storage", this.onStorage);
    this.observer.disconnect();
    clearInterval(this.timer);
    clearTimeout(this.resendTimer);
    registry().delete(this.key);
  }

  load() {
    try {
      const raw = window.localStorage.getItem(this.storageKey);
      return clean(raw ? JSON.parse(raw) : [], this.max);
    } catch {
      return clean(this.memory, this.max); // unreadable, or storage disabled
    }
  }

  save(list) {
    this.memory = list;
    try {
      window.localStorage.setItem(this.storageKey, JSON.stringify(list));
    } catch {
      // storage full or disabled: the list lasts as long as the tab
    }
  }

  bind(component) {
    const { data, setStateValue, setTriggerValue, parentElement } = component;
    this.setStateValue = setStateValue;
    this.setTriggerValue = setTriggerValue;
    if (this.root.parentElement !== parentElement) parentElement.appendChild(this.root);
    this.max = Math.max(1, Number(data.max) || 30);
    if (data.storage_key !== this.storageKey) {
      this.storageKey = data.storage_key;
      this.recorded = null;
      this.list = this.load();
    }
    this.current = validId(data.current) ? data.current : null;
    if (this.current && this.current !== this.recorded) this.record(this.current);
    this.recorded = this.current || this.recorded;
    this.draw(Array.isArray(data.items) ? data.items : []);
    this.seen = data.seen;
    this.health = data.health || null;
    this.url.textContent = (this.health && this.health.url) || "";
    const session = validId(data.session) ? data.session : "";
    this.session.textContent = session;
    this.session.title = session ? "Open this page's URL in another tab to join the chat" : "";
    this.session.hidden = this.sessionLabel.hidden = !session;
    this.heading.hidden = !data.listed;
    this.nav.hidden = !data.listed;
    this.showState();
    this.report();
  }

  // Opened now: first in the list, with the time it was opened.
  record(id) {
    const others = this.load().filter((entry) => entry.id !== id);
    this.list = [{ id, at: Date.now() }, ...others].slice(0, this.max);
    this.save(this.list);
  }

  // Send the list if it changed since the last value. Python echoes the version it read
  // (`data.seen`); a value not echoed within RESEND_MS is sent again (a value sent while
  // the page's first run was still going has been seen to get lost).
  report() {
    if (!this.setStateValue) return;
    const list = JSON.stringify(this.list);
    if (list === this.sent) return; // an unchanged value would only cost a rerun
    this.sent = list;
    this.tries = 0;
    this.send();
  }

  send() {
    this.version += 1;
    clearTimeout(this.resendTimer);
    const version = this.version;
    this.resendTimer = setTimeout(() => {
      if (this.seen !== version && this.tries < RESEND_TRIES && this.root.isConnected) {
        this.tries += 1;
        this.send();
      }
    }, RESEND_MS);
    this.setStateValue("chats", { v: version, list: this.list });
  }

  draw(items) {
    const key = JSON.stringify([this.current, items]);
    if (key === this.drawn) return;
    this.drawn = key;
    const buttons = [];
    for (const item of items) {
      if (!item || !validId(item.id)) continue;
      const title = typeof item.title === "string" ? item.title : "";
      const button = el("button", "sb-chats-item", title);
      button.type = "button";
      button.title = title;
      button.dataset.session = item.id;
      if (item.id === this.current) {
        button.classList.add("sb-chats-current");
        button.setAttribute("aria-current", "page");
      }
      button.addEventListener("click", () => this.open(item.id, button));
      buttons.push(button);
    }
    this.nav.replaceChildren(...buttons);
  }

  open(id, button) {
    if (id === this.current || !this.setTriggerValue) return;
    for (const other of this.nav.children) other.classList.remove("sb-chats-opening");
    button.classList.add("sb-chats-opening");
    this.setTriggerValue("open", id);
  }

  showState() {
    const listener = document.querySelector(".sb-listener[data-status]");
    const live = listener ? listener.dataset.status : null;
    let state;
    let text;
    if (live && LIVE_TEXT[live]) {
      state = live === "open" ? "ok" : live === "stopped" ? "down" : "waiting";
      text = LIVE_TEXT[live];
      if (live !== "open" && this.health && this.health.ok === false) {
        state = "down";
        text = "Bridge not answering";
      }
    } else if (this.health) {
      state = this.health.ok ? "ok" : "down";
      text = this.health.ok ? "Bridge answers" : "Bridge not answering";
    } else {
      state = "waiting";
      text = "";
    }
    if (this.state.dataset.state !== state) this.state.dataset.state = state;
    if (this.stateText.textContent !== text) this.stateText.textContent = text;
  }
}

export default function (component) {
  const { data } = component;
  if (!data || !data.storage_key) return;
  const chats = registry();
  let instance = chats.get(data.key);
  if (!instance) {
    instance = new Chats(data.key);
    chats.set(data.key, instance);
  }
  instance.bind(component);
}
