// The chat page's listener: one WebSocket per tab and session, feeding Python one value
// at a time. Loaded by streamlit_client/component.py as an st.components.v2 module.
//
// Streamlit calls the default export again on every `data` change and never runs the
// previous cleanup, so all state lives in a page-global registry keyed by the component
// key, and the function only (re)binds to it. Why each rule exists is measured in
// docs/push-approaches.md:
// - at most one value in flight to Python: a value per event caused rerun storms;
// - streams are drawn here, chunk by chunk, with no rerun; Python draws the committed
//   message, and the bubble goes when Python acknowledges that seq;
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

const REGISTRY = "__streamlitBridgeListeners";
const PRUNER = "__streamlitBridgePruner";
const ACK_TIMEOUT_MS = 4000; // resend if a rerun was lost (e.g. an exception in the page)
const PING_MS = 25000;
const PRUNE_EVERY_MS = 5000;
const PRUNE_AFTER_MS = 15000; // longer than a slow rerun, during which the element may move

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
    this.committed = new Map(); // seq -> bubble awaiting Python's ack
    this.avatars = {};
    this.closePolicy = null; // bridge.wire.close_policy(), from `data`
    this.detachedSince = null; // when the element left the page (see prune)
    this.flashTimer = null;
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
    for (const [seq, bubble] of [...this.committed]) {
      if (seq <= this.acked) {
        bubble.remove();
        this.committed.delete(seq);
      }
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
    this.dropStreams();
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
    this.clearError();
    this.flush();
  }

  receive(message, streamed) {
    if (!message || message.seq <= this.lastSeq) return; // replayed twice: drop
    this.lastSeq = message.seq;
    this.clearError(); // a failed run's note stays until the session's next message
    this.pending.set(message.seq, streamed ? { ...message, streamed: true } : message);
    this.flush();
  }

  // -- replies: streams drawn chunk by chunk, runs, Stop -----------------------------------

  // A reply bubble: the text, and the parts a reply may show while it is not complete (the
  // working indicator, the step line, the Stop button's place) or once it is (the stopped
  // marker). Every part is text nodes only.
  replyBubble(role) {
    const reply = this.lookalikeBubble(role) || this.plainBubble(role);
    const { body } = reply;
    reply.thinking = el("div", "sb-thinking");
    reply.thinking.append(el("span", "sb-thinking-text", "Thinking"));
    for (let i = 0; i < 3; i += 1) reply.thinking.append(el("span", "sb-dot", "."));
    reply.thinking.hidden = true;
    reply.step = el("div", "sb-step", "");
    reply.step.hidden = true;
    reply.controls = el("div", "sb-controls");
    reply.stopped = el("div", "sb-stopped", "");
    reply.stopped.hidden = true;
    body.prepend(reply.thinking);
    body.append(reply.step, reply.controls, reply.stopped);
    this.streamBox.appendChild(reply.bubble);
    return reply;
  }

  // A copy of a chat message Streamlit drew for the same role, emptied: the stream looks
  // exactly like the message that will replace it (theme, avatar, spacing).
  lookalikeBubble(role) {
    const label = `Chat message from ${role}`;
    const contents = document.querySelectorAll(
      `[data-testid="stChatMessageContent"][aria-label="${CSS.escape(label)}"]`,
    );
    const original = contents.length ? contents[contents.length - 1].parentElement : null;
    if (!original) return null;
    const bubble = original.cloneNode(true);
    bubble.querySelectorAll("[data-testid]").forEach((node) => node.removeAttribute("data-testid"));
    bubble.removeAttribute("data-testid");
    const content = bubble.querySelector(`[aria-label="${CSS.escape(label)}"]`);
    if (!content) return null;
    const body = el("div", "sb-reply");
    const text = el("div", "sb-stream-text", "");
    body.append(text);
    content.replaceChildren(body);
    return { bubble, body, text };
  }

  plainBubble(role) {
    const bubble = el("div", `sb-plain sb-role-${role === "user" ? "user" : "ai"}`);
    const avatar = this.avatars[role === "user" ? "user" : "ai"];
    bubble.append(el("div", "sb-avatar", avatar || (role === "user" ? "U" : "AI")));
    const body = el("div", "sb-reply");
    const text = el("div", "sb-stream-text", "");
    body.append(text);
    bubble.append(body);
    return { bubble, body, text };
  }

  // A stream of a run takes over the run's working bubble (the tokens replace the
  // indicator in place); any other stream gets a bubble of its own.
  streamStart(frame) {
    if (this.streams.has(frame.stream_id)) return this.streams.get(frame.stream_id);
    const run = frame.run_id ? this.runs.get(frame.run_id) : undefined;
    if (run && run.reply && run.streamId === null) {
      run.streamId = frame.stream_id;
      run.reply.thinking.hidden = true;
      run.reply.bubble.classList.remove("sb-run");
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
    stream.text.appendChild(document.createTextNode(frame.delta || ""));
  }

  streamEnd(frame) {
    const message = frame.message || {};
    const stream = this.streams.get(frame.stream_id);
    this.endStream(frame.stream_id);
    if (!stream) {
      this.receive({ ...message, seq: frame.seq ?? message.seq }, false);
      return;
    }
    const seq = frame.seq ?? message.seq;
    if (seq <= this.acked) {
      stream.bubble.remove(); // Python already drew it
    } else {
      // Until Python draws the stored message, this bubble shows it as Python will.
      stream.text.textContent = message.content ?? stream.text.textContent;
      if (message.stopped) {
        stream.stopped.textContent = this.labels.stopped || "stopped";
        stream.stopped.hidden = false;
      }
      stream.bubble.classList.add("sb-stream-done");
      this.committed.set(seq, stream.bubble);
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

  // Where the reply would have been: what went wrong, in the bridge's plain words. Not
  // stored; it goes when the session's next message arrives.
  showError(reason) {
    this.clearError();
    const reply = this.replyBubble("ai");
    reply.bubble.classList.add("sb-error");
    reply.bubble.setAttribute("role", "alert");
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
