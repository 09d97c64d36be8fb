// The chat page's listener: one WebSocket per tab and session, feeding Python one value
// at a time. Loaded by streamlit_client/component.py as an st.components.v2 module, after
// the vendored markdown renderer and sanitiser (streamlit_client/vendor/, as SB_VENDOR).
//
// Streamlit calls the default export again on every `data` change and never runs the
// previous cleanup, so all state lives in a page-global registry keyed by the component
// key, and the function only (re)binds to it. Why each rule exists is measured in
// docs/push-approaches.md:
// - at most one value in flight to Python: a value per event caused rerun storms;
// - every message is drawn here the moment its frame arrives, in a bubble of our own
//   (provisional), and streams are drawn here chunk by chunk, as markdown, with no rerun;
//   Python draws the committed message (st.chat_message + st.markdown) inside a container
//   keyed `<mark>` (streamlit_client.render.message_key), which Streamlit gives the class
//   `st-key-<mark>`. Our bubble goes the moment that element is in the page (a
//   MutationObserver, before the next paint: never two copies and never none);
// - reconnect with backoff and `after=<last seq>`; a new `epoch` means the history was
//   lost, so everything is fetched again from seq 1;
// - what a close code means (stop, come back, come back with a new token) and the backoff
//   come from Python in `data.close_policy`: the one table, `bridge.wire.CLOSE_CODES`;
// - a listener whose element has left the page for PRUNE_AFTER_MS is closed and
//   forgotten (socket and timers), or every session the tab ever showed stays open;
// - a run of the bridge's runner (`run.start` / `run.step` / `run.end`) is drawn here too:
//   a working bubble at once, the step line inside it, and the reply's tokens in the same
//   bubble when its stream starts; a Stop button while anything is working or streaming
//   sends `{"event":"stop"}` on this socket; a failed run leaves an error note until the
//   next message. None of it goes to Python: only stored messages do.
// Content is untrusted: markdown is rendered by marked with raw HTML shown as text (as
// st.markdown shows it), then sanitised by DOMPurify with an allowlist of tags and
// attributes and no URL scheme but http(s) and mailto. Nothing here looks up or copies
// Streamlit's own DOM; the bubbles are styled by chat.css with Streamlit's theme variables.

const REGISTRY = "__streamlitBridgeListeners";
const PRUNER = "__streamlitBridgePruner";
const ACK_TIMEOUT_MS = 4000; // resend if a rerun was lost (e.g. an exception in the page)
const PING_MS = 25000;
const PRUNE_EVERY_MS = 5000;
const PRUNE_AFTER_MS = 15000; // longer than a slow rerun, during which the element may move
// A bubble Python acknowledged whose element never showed up (drawn where no mark is, e.g.
// in collapsed history) goes after this long.
const ACKED_GRACE_MS = 3000;
const SWEEP_MS = 200;

function registry() {
  if (!window[REGISTRY]) window[REGISTRY] = new Map();
  return window[REGISTRY];
}

// Close and forget listeners whose element has been off the page for PRUNE_AFTER_MS.
function prune() {
  const listeners = registry();
  const now = Date.now();
  for (const [key, listener] of listeners) {
    if (listener.root.isConnected) {
      listener.detachedSince = null;
    } else if (listener.detachedSince === null) {
      listener.detachedSince = now;
    } else if (now - listener.detachedSince >= PRUNE_AFTER_MS) {
      listener.dispose();
      listeners.delete(key);
    }
  }
  if (listeners.size === 0) {
    clearInterval(window[PRUNER]);
    window[PRUNER] = null;
  }
}

function startPruning() {
  if (!window[PRUNER]) window[PRUNER] = setInterval(prune, PRUNE_EVERY_MS);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: content is untrusted
  return node;
}

// -- Python's element for a message ------------------------------------------------------

// render.message_key: `<mark_prefix>-<seq>`, which Streamlit turns into the class
// `st-key-<key>` of the container holding the message's content. Streamlit draws a keyed
// container only once it has content, so the class appears together with the text.
const MARK = /^[a-z0-9-]+$/;

function markPresent(mark) {
  return MARK.test(mark) && document.getElementsByClassName(`st-key-${mark}`).length > 0;
}

// -- markdown -------------------------------------------------------------------------------

// component.py defines SB_VENDOR before this module's code: { marked, DOMPurify }. Loaded
// alone (tests of the socket logic), replies are drawn as plain text.
// eslint-disable-next-line no-undef
const VENDOR = typeof SB_VENDOR === "undefined" ? null : SB_VENDOR;
const MARKDOWN = makeMarkdown(VENDOR);
// A stream is re-rendered on every chunk, unless rendering is what takes the time: then no
// sooner than RENDER_SPACING times the last render's duration after it (rendering takes at
// most a fifth of the main thread however fast chunks come, and chunks stay as fast as the
// socket while rendering is cheap).
const RENDER_SPACING = 4;

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function makeMarkdown(vendor) {
  if (!vendor || !vendor.marked || !vendor.DOMPurify) return null;
  const purify = vendor.DOMPurify;
  if (!purify.isSupported) return null;
  const marked = new vendor.marked.Marked({
    async: false,
    gfm: true,
    breaks: false,
    renderer: {
      // Raw HTML in content is shown as the text it is, as st.markdown shows it.
      html: ({ text }) => escapeHtml(text),
      // st.markdown draws disabled checkboxes; no <input> from content here.
      checkbox: ({ checked }) => `<span class="sb-task">${checked ? "☑" : "☐"}</span> `,
      // The wrapper gives the block Streamlit's spacing (stMarkdownPre around stCode).
      code: ({ text, escaped }) =>
        `<div class="sb-pre"><pre><code>${escaped ? text : escapeHtml(text)}</code></pre></div>\n`,
    },
  });
  const config = {
    ALLOWED_TAGS: [
      "a", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "h5",
      "h6", "hr", "img", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody",
      "td", "th", "thead", "tr", "ul",
    ],
    ALLOWED_ATTR: ["href", "title", "alt", "src", "align", "start", "class"],
    FORBID_TAGS: ["style", "script", "iframe", "object", "embed", "form", "input", "svg", "math"],
    FORBID_ATTR: ["style"],
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    // DOMPurify's default minus the rarer schemes: an attribute value with a scheme must be
    // http(s) or mailto (DOMPurify also keeps data:image URIs on <img>); values without one
    // (relative links, "right", "3") pass. javascript:, data: and other links lose their
    // href and are plain text.
    ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
    RETURN_DOM_FRAGMENT: true,
  };
  const purifier = purify(window);
  purifier.addHook("uponSanitizeAttribute", (node, data) => {
    // Only the classes this module writes (sb-...), none from content.
    if (data.attrName === "class" && !/^sb-[a-z-]+$/.test(data.attrValue)) data.keepAttr = false;
  });
  purifier.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  const kit = {
    lexer: (text) => marked.lexer(text),
    render(tokens, links) {
      const list = [...tokens];
      list.links = links;
      return purifier.sanitize(marked.parser(list), config);
    },
  };
  // The first render of a page costs several ms (compiling, DOMPurify's first document):
  // spend them now, not on a reply's first chunk.
  kit.render(kit.lexer("# w\n\n**a** `b` [c](https://example.com)\n\n- d\n\n| e |\n|---|\n| f |"), {});
  return kit;
}

// Markdown drawn into `node`, block by block: a new text re-renders only from the first
// top-level block that changed (while a reply streams, the last one), so earlier blocks,
// their images and any selection in them stay as they are.
class MarkdownView {
  constructor(node) {
    this.node = node;
    this.blocks = []; // [{raw, nodes}]
    this.links = "";
    this.text = null;
  }

  render(text) {
    if (text === this.text) return;
    this.text = text;
    if (!MARKDOWN) {
      this.node.textContent = text;
      return;
    }
    let tokens;
    try {
      tokens = MARKDOWN.lexer(text);
    } catch (err) {
      this.blocks = [];
      this.node.textContent = text;
      return;
    }
    const links = JSON.stringify(tokens.links || {});
    let keep = 0;
    if (links === this.links) {
      const last = tokens.length - 1; // the last block may still grow: always redrawn
      while (keep < this.blocks.length && keep < last && this.blocks[keep].raw === tokens[keep].raw) {
        keep += 1;
      }
    }
    if (keep === 0) {
      this.node.replaceChildren();
    } else {
      for (const block of this.blocks.slice(keep)) for (const node of block.nodes) node.remove();
    }
    this.blocks.length = keep;
    this.links = links;
    for (const token of tokens.slice(keep)) {
      const fragment = MARKDOWN.render([token], tokens.links || {});
      const nodes = [...fragment.childNodes];
      this.node.append(fragment);
      this.blocks.push({ raw: token.raw, nodes });
    }
  }
}

// Light or dark, from the background colour of Streamlit's theme (the --st-* variables
// Streamlit sets around the component; the component runs again when the theme changes).
// A few colours of st.chat_message are not among the variables: chat.css picks them by this.
function themeOf(root) {
  if (!root.isConnected) return root.dataset.sbTheme || "light";
  const probe = el("span");
  probe.style.color = "var(--st-background-color, rgb(255, 255, 255))";
  root.append(probe);
  const rgb = (getComputedStyle(probe).color.match(/[\d.]+/g) || []).map(Number);
  probe.remove();
  if (rgb.length < 3) return "light";
  const [r, g, b] = rgb;
  return 0.2126 * r + 0.7152 * g + 0.0722 * b < 128 ? "dark" : "light";
}

// -- avatars --------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgIcon(shapes) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  for (const [tag, attrs] of shapes) {
    const shape = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) shape.setAttribute(name, value);
    svg.append(shape);
  }
  return svg;
}

// Drawn here, in the spirit of Streamlit's default avatars (a robot, a face).
const ICONS = {
  ai: [
    ["rect", { x: "4.5", y: "7.5", width: "15", height: "12", rx: "3" }],
    ["path", { d: "M12 7.5V4.5M2.5 12.5v3M21.5 12.5v3M9.5 16.5h5" }],
    ["circle", { cx: "12", cy: "3.6", r: "1", class: "sb-fill" }],
    ["circle", { cx: "9", cy: "12.3", r: "1.3", class: "sb-fill" }],
    ["circle", { cx: "15", cy: "12.3", r: "1.3", class: "sb-fill" }],
  ],
  user: [
    ["circle", { cx: "12", cy: "12", r: "8.5" }],
    ["circle", { cx: "9", cy: "10.5", r: "1.2", class: "sb-fill" }],
    ["circle", { cx: "15", cy: "10.5", r: "1.2", class: "sb-fill" }],
    ["path", { d: "M8.5 14.5a4 4 0 0 0 7 0" }],
  ],
};

const AVATAR_IMAGE = /^(?:https?:\/\/\S+|data:image\/(?:png|jpeg|gif|webp|avif|bmp)[;,]\S*)$/i;

// What st.chat_message shows for the template's avatar: an image URL as an image, an emoji
// or other short text as itself, nothing (or a :material/...: icon) as the default icon.
function avatarNode(role, value) {
  const box = el("div", "sb-avatar");
  box.setAttribute("aria-hidden", "true");
  if (typeof value === "string" && AVATAR_IMAGE.test(value)) {
    box.classList.add("sb-avatar-image");
    const img = el("img");
    img.alt = "";
    img.src = value;
    box.append(img);
  } else if (typeof value === "string" && value && !value.startsWith(":material/")) {
    box.classList.add("sb-avatar-text");
    box.textContent = value;
  } else {
    box.classList.add("sb-avatar-icon");
    box.append(svgIcon(ICONS[role]));
  }
  return box;
}

// bridge.wire.check_image_content, as far as drawing goes: an http(s) URL or a base64
// data:image URI of the kinds the bridge accepts. Python checks again before st.image.
const IMAGE_CONTENT =
  /^(?:https?:\/\/[^\s/?#@\\]+(?:[/?#][^\s\\]*)?|data:image\/(?:png|jpeg|gif|webp|avif|bmp)(?:;[a-z0-9=._+-]+)*;base64,[A-Za-z0-9+/=\s]*)$/i;

class Listener {
  constructor(key) {
    this.key = key;
    this.sessionId = null;
    this.wsUrl = null;
    this.token = null;
    this.socket = null;
    this.stopped = null; // reason, once the bridge said not to come back
    this.attempts = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.ackTimer = null;
    this.epoch = null;
    this.lastSeq = 0; // highest seq received
    this.acked = 0; // Python's gap-free `have`
    this.pending = new Map(); // seq -> message, not yet acknowledged
    this.resets = 0;
    this.template = null; // set when the bridge sent one Python has not seen
    this.inflight = null; // nonce of the value Python has not answered
    this.sent = null; // what that value carried besides messages
    this.resetPending = false;
    this.tokenExpired = false; // the bridge closed us at the token's expiry: ask for one
    this.nonce = 0;
    this.streams = new Map(); // stream_id -> reply (see replyBubble)
    this.runs = new Map(); // run_id -> {reply, streamId}: reply null once its stream ended
    this.errorNote = null; // the last failed run's note, until the next message
    this.labels = {}; // texts drawn here that Python draws too (the stopped marker)
    this.stopButton = el("button", "sb-stop", "");
    this.stopButton.type = "button";
    this.stopButton.addEventListener("click", () => this.sendStop());
    this.committed = new Map(); // seq -> {bubble, mark, ackedAt}: drawn here, awaiting Python
    this.sweepTimer = null;
    this.markPrefix = null; // `<prefix>-<seq>` keys Python's element (render.message_key)
    this.writeSpeed = 0; // the template's: Python types new ai messages out itself
    this.welcome = null; // the template's welcome text, shown for the welcome message
    this.avatars = {}; // from Python's data
    this.templateAvatars = null; // from the bridge's latest template, which Python will use
    this.closePolicy = null; // bridge.wire.close_policy(), from `data`
    this.detachedSince = null; // when the element left the page (see prune)
    this.flashTimer = null;
    // Made with the listener (observers are told of a change in the order they were made),
    // observing only while a bubble waits for Python's element.
    this.replacer = new MutationObserver((records) => this.onMutations(records));
    this.observing = false;
    this.root = el("div", "sb-listener");
    this.status = el("div", "sb-status");
    this.streamBox = el("div", "sb-streams");
    this.root.append(this.status, this.streamBox);
    this.setStatus("connecting", "Connecting to the bridge…");
  }

  // -- binding to Streamlit ---------------------------------------------------------------

  bind(component) {
    const { data, setStateValue, parentElement } = component;
    this.setStateValue = setStateValue;
    if (this.root.parentElement !== parentElement) parentElement.appendChild(this.root);
    this.avatars = data.avatars || {};
    this.labels = data.labels || {};
    this.markPrefix = typeof data.mark_prefix === "string" ? data.mark_prefix : null;
    this.root.dataset.sbTheme = themeOf(this.root);
    this.closePolicy = data.close_policy;
    this.updateStop();
    const newToken = (data.token || null) !== this.token;
    this.token = data.token || null;
    if (data.session_id !== this.sessionId || data.ws_url !== this.wsUrl) {
      this.switchSession(data);
    } else if (this.stopped && newToken) {
      // Refused before, e.g. with an expired token: the page minted a new one.
      this.stopped = null;
      this.connect();
    }
    this.acknowledge(data);
    this.flush();
  }

  switchSession(data) {
    this.close();
    this.sessionId = data.session_id;
    this.wsUrl = data.ws_url;
    this.lastSeq = this.acked = data.have || 0;
    this.resets = data.resets || 0;
    this.pending.clear();
    this.stopped = null;
    this.attempts = 0;
    this.connect();
  }

  acknowledge(data) {
    const have = data.have || 0;
    if (this.inflight !== null && data.ack_nonce === this.inflight) {
      this.inflight = null;
      clearTimeout(this.ackTimer);
      // Only now is what the value carried known to Python (a lost rerun resends it).
      if (this.template === this.sent.template) this.template = null;
      if (this.resets === this.sent.resets) this.resetPending = false;
      if (this.sent.tokenExpired) this.tokenExpired = false;
    }
    // A `have` from before our latest reset refers to the lost history: ignore it.
    if ((data.resets || 0) !== this.resets) return;
    if (have < this.acked) {
      // Python knows less than it acknowledged before (its session state was lost):
      // ask the bridge again for everything after what Python has.
      this.acked = this.lastSeq = have;
      this.pending.clear();
      this.reconnectNow();
      return;
    }
    this.acked = Math.max(this.acked, have);
    for (const seq of [...this.pending.keys()]) if (seq <= this.acked) this.pending.delete(seq);
    this.sweep();
  }

  // A bubble goes the moment Python's element for its message is in the page (see
  // onMutations); one Python acknowledged whose element never shows up (drawn where no key
  // is, or its key refused) goes ACKED_GRACE_MS after the ack; without a mark, at the ack.
  sweep() {
    clearTimeout(this.sweepTimer);
    this.sweepTimer = null;
    const now = Date.now();
    let waiting = false;
    for (const [seq, entry] of [...this.committed]) {
      if (seq > this.acked) continue;
      if (entry.ackedAt === null) entry.ackedAt = now;
      if (!entry.mark || markPresent(entry.mark) || now - entry.ackedAt >= ACKED_GRACE_MS) {
        this.forget(seq);
      } else {
        waiting = true;
      }
    }
    if (waiting) this.sweepTimer = setTimeout(() => this.sweep(), SWEEP_MS);
  }

  forget(seq) {
    const entry = this.committed.get(seq);
    if (!entry) return;
    entry.bubble.remove();
    this.committed.delete(seq);
    if (this.committed.size === 0 && this.observing) {
      this.replacer.disconnect();
      this.observing = false;
    }
  }

  forgetAll() {
    for (const seq of [...this.committed.keys()]) this.forget(seq);
  }

  // `bubble` shows message `seq` until Python's element for it is in the page.
  awaitPython(seq, bubble) {
    this.forget(seq);
    let mark = this.markPrefix ? `${this.markPrefix}-${seq}` : null;
    if (mark && !MARK.test(mark)) mark = null;
    if (mark && markPresent(mark)) {
      bubble.remove(); // drawn already: gone before it is ever painted
      return;
    }
    if (mark) bubble.dataset.sbMark = mark;
    this.committed.set(seq, { bubble, mark, ackedAt: null });
    if (!this.observing) {
      this.replacer.observe(document.documentElement, { childList: true, subtree: true });
      this.observing = true;
    }
  }

  // Every change of the page's DOM, as Streamlit commits it: a bubble whose message now has
  // Python's element goes at once. A MutationObserver's callback runs before the page is
  // painted again, so no frame shows both copies, and none shows neither. (A style rule
  // `:root:has(.st-key-…)` would hide it even sooner, but made every Streamlit rerun
  // restyle the whole page: +40 ms p50, +150 ms p95 measured.)
  onMutations(records) {
    if (this.committed.size === 0) return;
    if (!records.some((record) => record.addedNodes.length > 0)) return;
    for (const [seq, entry] of [...this.committed]) {
      if (entry.mark && markPresent(entry.mark)) this.forget(seq);
    }
  }

  // Send Python every unacknowledged message at once, unless a value is still in flight.
  flush() {
    if (this.inflight !== null || !this.setStateValue) return;
    const idle = this.pending.size === 0 && this.template === null;
    if (idle && !this.resetPending && !this.tokenExpired) return;
    this.nonce += 1;
    this.inflight = this.nonce;
    const messages = [...this.pending.values()].sort((a, b) => a.seq - b.seq);
    const value = { nonce: this.nonce, epoch: this.epoch, resets: this.resets, messages };
    if (this.template !== null) value.template = this.template;
    if (this.tokenExpired) value.token_expired = true;
    this.sent = { template: this.template, resets: this.resets, tokenExpired: this.tokenExpired };
    clearTimeout(this.ackTimer);
    const nonce = this.nonce;
    this.ackTimer = setTimeout(() => {
      if (this.inflight === nonce) {
        this.inflight = null;
        this.flush();
      }
    }, ACK_TIMEOUT_MS);
    this.setStateValue("push", value);
  }

  // -- the socket -------------------------------------------------------------------------

  url() {
    const params = new URLSearchParams({ after: String(this.lastSeq) });
    if (this.token) params.set("token", this.token);
    const sid = encodeURIComponent(this.sessionId);
    return `${this.wsUrl}/api/v1/sessions/${sid}/ws?${params}`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    let socket;
    try {
      socket = new WebSocket(this.url());
    } catch (err) {
      this.stop(`Bad bridge URL ${this.wsUrl}: ${err.message}`);
      return;
    }
    this.socket = socket;
    socket.onmessage = (event) => {
      if (socket === this.socket) this.onFrame(JSON.parse(event.data));
    };
    socket.onclose = (event) => {
      if (socket === this.socket) this.onClose(event);
    };
  }

  close() {
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
  }

  reconnectNow() {
    this.close();
    this.connect();
  }

  // The listener left the page for good: no socket, no timer, nothing drawn.
  dispose() {
    this.stopped = "gone";
    this.close();
    clearTimeout(this.ackTimer);
    clearTimeout(this.flashTimer);
    clearTimeout(this.sweepTimer);
    this.dropStreams();
    this.forgetAll();
    this.replacer.disconnect();
    this.clearError();
    this.root.remove();
  }

  // bridge.wire.after_close, applied to the table Python sent: "resume", "back-off",
  // "new-token" or "stop".
  afterClose(code, reason) {
    const { codes, token_expired: expired } = this.closePolicy;
    if (code === expired.code && reason === expired.reason) return "new-token";
    const row = codes[String(code)];
    return row ? row.then : this.closePolicy.default;
  }

  onClose(event) {
    clearInterval(this.pingTimer);
    this.socket = null;
    const reason = event.reason || "";
    const then = this.afterClose(event.code, reason);
    if (then === "new-token" && this.token) {
      // Tokens expire while tabs stay open: Python mints a new one on the rerun this
      // value causes, and `bind` reconnects when the new token arrives.
      this.stopped = "token expired";
      this.tokenExpired = true;
      this.setStatus("reconnecting", "Session token expired; getting a new one…");
      this.flush();
      return;
    }
    if (then === "stop" || then === "new-token") {
      const row = this.closePolicy.codes[String(event.code)];
      this.stop(reason || (row ? row.meaning : `closed by the bridge (${event.code})`));
      return;
    }
    this.dropStreams(); // their stream.end may never come; the committed message will
    this.attempts += 1;
    const { base: first, max } = this.closePolicy.backoff_ms;
    const wait = then === "back-off" ? max : Math.min(max, first * 2 ** Math.min(this.attempts, 16));
    const delay = wait * (0.5 + Math.random() / 2);
    const hint = this.attempts > 5 ? ` Is the bridge reachable at ${this.wsUrl}?` : "";
    this.setStatus(
      "reconnecting",
      `Disconnected from the bridge; reconnecting (attempt ${this.attempts})…${hint}`,
    );
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  stop(reason) {
    this.close();
    this.stopped = reason;
    this.setStatus("stopped", reason);
  }

  onFrame(frame) {
    switch (frame.event) {
      case "hello":
        return this.onHello(frame);
      case "message":
        return this.receive(frame.message, false);
      case "stream.start":
        return this.streamStart(frame);
      case "stream.delta":
        return this.streamDelta(frame);
      case "stream.end":
        return this.streamEnd(frame);
      case "stream.abort":
        return this.streamAbort(frame);
      case "run.start":
        return this.runStart(frame);
      case "run.step":
        return this.runStep(frame);
      case "run.end":
        return this.runEnd(frame);
      case "template":
        this.template = frame.template;
        this.learnTemplate(frame.template);
        return this.flush();
      case "reset":
        return this.reset();
      case "error":
        return this.flash(frame.detail || "The bridge reported an error.");
      default:
        return undefined; // pong, presence, events of a newer bridge: nothing to draw
    }
  }

  onHello(frame) {
    if (this.epoch !== null && frame.epoch !== this.epoch && this.lastSeq > 0) {
      // The history our `after` referred to is gone: load it again from the start.
      this.reset();
      this.reconnectNow();
      return;
    }
    this.epoch = frame.epoch;
    this.attempts = 0;
    this.template = frame.template || null;
    this.learnTemplate(frame.template);
    this.setStatus("open", "");
    clearInterval(this.pingTimer);
    const socket = this.socket;
    this.pingTimer = setInterval(() => {
      if (socket.readyState === WebSocket.OPEN) socket.send('{"event":"ping"}');
    }, PING_MS);
    this.flush();
  }

  reset() {
    this.resets += 1;
    this.resetPending = true;
    this.epoch = null; // the next hello names the new history's epoch
    this.lastSeq = this.acked = 0;
    this.pending.clear();
    this.dropStreams();
    this.forgetAll(); // the seqs of the lost history will be reused
    this.clearError();
    this.flush();
  }

  // What the provisional bubbles need of the template: how Python will draw a message.
  learnTemplate(template) {
    if (!template || typeof template !== "object") return;
    this.writeSpeed = Number(template.write_speed) || 0;
    this.welcome = typeof template.welcome_msg === "string" ? template.welcome_msg : null;
    this.templateAvatars = { ai: template.ai_avatar || null, user: template.user_avatar || null };
  }

  receive(message, streamed) {
    if (!message || message.seq <= this.lastSeq) return; // replayed twice: drop
    this.lastSeq = message.seq;
    this.clearError(); // a failed run's note stays until the session's next message
    if (!streamed) this.drawMessage(message);
    this.pending.set(message.seq, streamed ? { ...message, streamed: true } : message);
    this.flush();
  }

  // -- bubbles: messages, streams drawn chunk by chunk, runs, Stop ---------------------------

  // A bubble of our own, shaped like st.chat_message: the avatar and a content column.
  bubble(role, kind) {
    const who = role === "user" ? "user" : "ai";
    const bubble = el("div", `sb-bubble sb-role-${who} ${kind}`);
    const body = el("div", "sb-reply");
    const avatars = this.templateAvatars || this.avatars;
    bubble.append(avatarNode(who, avatars[who]), body);
    this.streamBox.appendChild(bubble);
    return { bubble, body };
  }

  // A stored message, drawn the moment its frame arrives; Python's element replaces it.
  drawMessage(message) {
    if (message.seq <= this.acked || this.committed.has(message.seq)) return; // drawn already
    const { bubble, body } = this.bubble(message.role, "sb-message");
    if (message.type === "image") {
      this.drawImage(body, String(message.content ?? ""));
    } else if (message.role === "ai" && this.writeSpeed > 0) {
      // Python types it out word by word (the template's write_speed): until it starts,
      // show that a reply is there, not the text it is about to type.
      const typing = el("div", "sb-typing");
      typing.setAttribute("aria-label", "typing");
      for (let i = 0; i < 3; i += 1) typing.append(el("span", "sb-dot", "."));
      body.append(typing);
    } else {
      const text = el("div", "sb-message-text sb-md");
      body.append(text);
      new MarkdownView(text).render(this.shownContent(message));
    }
    if (message.stopped) body.append(el("div", "sb-caption", this.labels.stopped || "stopped"));
    this.awaitPython(message.seq, bubble);
  }

  // render.shown_content: the welcome message follows the template in force.
  shownContent(message) {
    if (message.id === "welcome" && this.welcome) return this.welcome;
    return String(message.content ?? "");
  }

  drawImage(body, content) {
    if (IMAGE_CONTENT.test(content)) {
      const img = el("img", "sb-image");
      img.alt = "";
      img.src = content;
      body.append(img);
      return;
    }
    // As Python draws it: the content as plain text and a note, never opened.
    body.append(el("div", "sb-plain-text", content.length <= 500 ? content : `${content.slice(0, 500)}…`));
    body.append(el("div", "sb-caption", this.labels.image_refused || "image not shown"));
  }

  // A reply bubble: the text, and the parts a reply may show while it is not complete (the
  // working indicator, the step line, the Stop button's place) or once it is (the stopped
  // marker). The text is markdown, sanitised; every other part is text nodes only.
  replyBubble(role) {
    const reply = this.bubble(role, "sb-reply-bubble");
    const { body } = reply;
    reply.text = el("div", "sb-stream-text sb-md");
    reply.view = new MarkdownView(reply.text);
    reply.raw = "";
    reply.renderedAt = 0;
    reply.renderCost = 0;
    reply.renderTimer = null;
    reply.thinking = el("div", "sb-thinking");
    reply.thinking.append(el("span", "sb-thinking-text", "Thinking"));
    for (let i = 0; i < 3; i += 1) reply.thinking.append(el("span", "sb-dot", "."));
    reply.thinking.hidden = true;
    reply.step = el("div", "sb-step", "");
    reply.step.hidden = true;
    reply.controls = el("div", "sb-controls");
    reply.stopped = el("div", "sb-caption sb-stopped", "");
    reply.stopped.hidden = true;
    body.append(reply.thinking, reply.text, reply.step, reply.controls, reply.stopped);
    return reply;
  }

  // Draw a reply's text now, or later if drawing it is what keeps the page busy.
  renderReply(reply, now) {
    if (now) {
      clearTimeout(reply.renderTimer);
      reply.renderTimer = null;
      const start = performance.now();
      reply.view.render(reply.raw);
      reply.renderedAt = performance.now();
      reply.renderCost = reply.renderedAt - start;
      return;
    }
    if (reply.renderTimer !== null) return;
    const wait = reply.renderedAt + RENDER_SPACING * reply.renderCost - performance.now();
    if (wait <= 0) {
      this.renderReply(reply, true);
      return;
    }
    reply.renderTimer = setTimeout(() => this.renderReply(reply, true), wait);
  }

  // A stream of a run takes over the run's working bubble: the indicator stays until the
  // first token replaces it in place (the runner opens the stream before the flow has
  // answered, often a second or more earlier); any other stream gets a bubble of its own.
  streamStart(frame) {
    if (this.streams.has(frame.stream_id)) return this.streams.get(frame.stream_id);
    const run = frame.run_id ? this.runs.get(frame.run_id) : undefined;
    if (run && run.reply && run.streamId === null) {
      run.streamId = frame.stream_id;
      return this.adoptStream(frame.stream_id, run.reply);
    }
    const reply = this.streamBubble(frame.stream_id, frame.role);
    if (frame.run_id && !(run && run.reply)) {
      // Joined mid-run (the run began before this socket), or the run's next reply after
      // an earlier one ended: its steps go in this bubble.
      this.runs.set(frame.run_id, { reply, streamId: frame.stream_id });
    }
    return reply;
  }

  streamBubble(streamId, role) {
    const stream = this.streams.get(streamId);
    return stream || this.adoptStream(streamId, this.replyBubble(role || "ai"));
  }

  adoptStream(streamId, reply) {
    reply.bubble.classList.add("sb-stream");
    reply.bubble.dataset.streamId = streamId;
    this.streams.set(streamId, reply);
    this.updateStop();
    return reply;
  }

  streamDelta(frame) {
    const stream = this.streamBubble(frame.stream_id, frame.role || "ai");
    if (frame.delta && !stream.thinking.hidden) {
      // The first token: the working indicator gives way to the text.
      stream.thinking.hidden = true;
      stream.bubble.classList.remove("sb-run");
    }
    stream.raw += frame.delta || "";
    this.renderReply(stream, false);
  }

  streamEnd(frame) {
    const message = frame.message || {};
    const stream = this.streams.get(frame.stream_id);
    this.endStream(frame.stream_id);
    const seq = frame.seq ?? message.seq;
    if (!stream) {
      this.receive({ ...message, seq }, false);
      return;
    }
    if (seq <= this.acked || seq <= this.lastSeq) {
      stream.bubble.remove(); // Python already drew it, or it is known already
    } else {
      // Until Python draws the stored message, this bubble shows it as Python will.
      if (typeof message.content === "string") stream.raw = message.content;
      this.renderReply(stream, true);
      if (message.stopped) {
        stream.stopped.textContent = this.labels.stopped || "stopped";
        stream.stopped.hidden = false;
      }
      stream.bubble.classList.add("sb-stream-done");
      this.awaitPython(seq, stream.bubble);
    }
    this.receive({ ...message, seq }, true);
  }

  // The reply failed and nothing was stored: take its bubble away and say why (a run's
  // own run.end says it where the reply would have been).
  streamAbort(frame) {
    const stream = this.streams.get(frame.stream_id);
    const ofRun = [...this.runs.values()].some((run) => run.streamId === frame.stream_id);
    this.endStream(frame.stream_id);
    if (stream) stream.bubble.remove();
    if (!ofRun) this.flash(`A streamed reply stopped: ${frame.detail || "the sender went away"}`);
  }

  // A stream is over: its bubble no longer works (no step line, no Stop), and its run, if
  // it has one and goes on, draws a new working bubble for what it does next.
  endStream(streamId) {
    const stream = this.streams.get(streamId);
    this.streams.delete(streamId);
    if (stream) {
      clearTimeout(stream.renderTimer);
      stream.renderTimer = null;
      stream.thinking.hidden = true;
      stream.step.hidden = true;
    }
    for (const run of this.runs.values()) {
      if (run.streamId === streamId) {
        run.reply = null;
        run.streamId = null;
      }
    }
    this.updateStop();
  }

  runStart(frame) {
    let run = this.runs.get(frame.run_id);
    if (!run) {
      run = { reply: null, streamId: null };
      this.runs.set(frame.run_id, run);
    }
    if (!run.reply) this.workingBubble(frame.run_id, run);
    this.updateStop();
  }

  workingBubble(runId, run) {
    run.reply = this.replyBubble("ai");
    run.reply.bubble.classList.add("sb-run");
    run.reply.bubble.dataset.runId = runId;
    run.reply.thinking.hidden = false;
  }

  runStep(frame) {
    const label = frame.label || "";
    let run = this.runs.get(frame.run_id);
    if (!run) {
      if (!label) return;
      // Joined mid-run (the start was before this socket): the run is working.
      run = { reply: null, streamId: null };
      this.runs.set(frame.run_id, run);
    }
    if (!run.reply) {
      if (!label) return;
      this.workingBubble(frame.run_id, run);
      this.updateStop();
    }
    run.reply.step.textContent = label;
    run.reply.step.hidden = !label;
  }

  runEnd(frame) {
    const run = this.runs.get(frame.run_id);
    this.runs.delete(frame.run_id);
    if (run && run.reply) {
      run.reply.thinking.hidden = true;
      run.reply.step.hidden = true;
      // A working bubble that never got tokens goes; a stream still open keeps its bubble
      // until its own stream.end or stream.abort.
      if (run.streamId === null) run.reply.bubble.remove();
    }
    if (frame.outcome === "error") this.showError(frame.reason || "The reply failed.");
    this.updateStop();
  }

  // Where the reply would have been: what went wrong, in the bridge's plain words (text,
  // not markdown). Not stored; it goes when the session's next message arrives.
  showError(reason) {
    this.clearError();
    const reply = this.replyBubble("ai");
    reply.bubble.classList.add("sb-error");
    reply.bubble.setAttribute("role", "alert");
    reply.text.classList.remove("sb-md");
    reply.text.textContent = reason;
    this.errorNote = reply.bubble;
  }

  clearError() {
    if (this.errorNote) this.errorNote.remove();
    this.errorNote = null;
  }

  // The Stop button sits in the newest bubble that is still working or streaming, and only
  // while there is one; after a click it stays disabled until every reply is over.
  updateStop() {
    const button = this.stopButton;
    let active = null;
    for (const reply of this.streams.values()) active = reply;
    for (const run of this.runs.values()) if (run.reply && run.streamId === null) active = run.reply;
    if (!active) {
      button.remove();
      button.disabled = false;
      button.textContent = this.labels.stop || "■ Stop";
      return;
    }
    if (!button.textContent) button.textContent = this.labels.stop || "■ Stop";
    if (button.parentElement !== active.controls) active.controls.appendChild(button);
  }

  sendStop() {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      this.flash("Not connected to the bridge: the reply cannot be stopped now.");
      return;
    }
    socket.send('{"event":"stop"}');
    this.stopButton.disabled = true;
    this.stopButton.textContent = this.labels.stopping || "Stopping…";
  }

  dropStreams() {
    for (const { bubble } of this.streams.values()) bubble.remove();
    this.streams.clear();
    for (const { reply } of this.runs.values()) if (reply) reply.bubble.remove();
    this.runs.clear(); // their run.end may never come
    this.updateStop();
  }

  // -- status -------------------------------------------------------------------------------

  setStatus(state, text) {
    this.root.dataset.status = state;
    this.status.textContent = text;
    this.status.hidden = state === "open";
  }

  flash(text) {
    this.status.textContent = text;
    this.status.hidden = false;
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => {
      if (this.root.dataset.status === "open") this.status.hidden = true;
    }, 5000);
  }
}

export default function (component) {
  const { data } = component;
  if (!data || !data.session_id) return;
  if (!data.close_policy) throw new Error("listener.js needs data.close_policy (bridge.wire)");
  const listeners = registry();
  let listener = listeners.get(data.key);
  if (!listener) {
    listener = new Listener(data.key);
    listeners.set(data.key, listener);
  }
  listener.bind(component);
  startPruning();
}
