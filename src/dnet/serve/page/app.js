// dnet's page: a chat box (or, for an encoder, an embeddings box) over the server's own OpenAI API,
// and the plan over the cluster with live figures from GET /v1/dnet/status, polled every second.
// Plain browser JavaScript, no libraries: the page must work on machines with no internet access.
// Text from the model or the server is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;        // how often the status is read
const RETRY_MS = 3000;       // after a failed read: the server may be restarting
const KEY_STORE = "dnet.apiKey";
const SHOWN_VALUES = 8;      // the first values of an embedding listed under its strip

const $ = (id) => document.getElementById(id);

const state = {
  status: null,        // the last /v1/dnet/status answer
  kind: null,          // "text" or "embeddings", once the status has told
  history: [],         // the conversation so far, sent with each question: {role, content}
  controller: null,    // the AbortController of the answer streaming now
  chat: 0,             // which conversation: "New chat" starts another, and a late answer stays out of it
  pollTimer: null,
  waitingForKey: false,
};

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function headers(withBody) {
  const h = {};
  if (withBody) h["Content-Type"] = "application/json";
  const key = storedKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// The message of an OpenAI-style error body, {"error": {"message": ...}}, else the status line.
async function errorOf(response) {
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON (a proxy's page, say): the status line says enough
  }
  return new ApiError(response.status, message);
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: headers(options.body !== undefined)});
  if (!response.ok) throw await errorOf(response);
  return response;
}

// The data of each server-sent event in a fetch body, as it arrives. An event ends at a blank line;
// its "data:" lines are joined by newlines (the format's rule). dnet's server ends lines with "\n".
async function* serverEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  } finally {
    // leaving early (an error event, the page's own error) closes the connection: the server then
    // cancels the generation and frees its slot
    reader.cancel().catch(() => {});
  }
}

// ------------------------------------------------------------------ errors and the key

function showError(message) {
  $("alert-text").textContent = message;
  $("alert").hidden = false;
}

function clearError() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
}

function askForKey(reason) {
  state.waitingForKey = true;
  stopPolling();
  setConnection("key", "API key needed");
  $("key-reason").textContent = reason;
  if (!state.status) $("model-line").textContent = "locked until an API key is entered";
  $("key-panel").hidden = false;
  $("key").focus();
}

// A 401 means no key was sent or the key was refused: either way the page asks for one.
function handleUnauthorized(err) {
  const had = storedKey() !== "";
  sessionStorage.removeItem(KEY_STORE);
  askForKey(had
    ? `The server refused this key (401: ${err.message}). Enter the key again.`
    : `This server needs an API key (401: ${err.message}).`);
}

function useKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key").value = "";
  $("key-panel").hidden = true;
  $("change-key").hidden = false;
  state.waitingForKey = false;
  clearError();
  poll();
}

// ------------------------------------------------------------------ status, polled

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

async function poll() {
  stopPolling();
  let next = POLL_MS;
  try {
    const response = await api("/v1/dnet/status");
    render(await response.json());
    setConnection("live", "live");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      handleUnauthorized(err);
      return;           // polling resumes once a key is entered
    }
    setConnection("off", err instanceof ApiError ? `error ${err.status}` : "offline, retrying");
    next = RETRY_MS;
  }
  if (!state.waitingForKey) state.pollTimer = setTimeout(poll, next);
}

function setConnection(kind, text) {
  const el = $("connection");
  el.dataset.state = kind;
  el.textContent = text;
}

function render(status) {
  state.status = status;
  if (status.kind !== state.kind) showKind(status.kind);
  renderModel(status);
  if (status.kind === "embeddings") {
    setFigures([
      ["dimensions", "Dimensions", fmtInt(status.dimensions)],
      ["requests", "Requests", fmtInt(status.requests)],
      ["tokens", "Tokens embedded", fmtInt(status.tokens)],
    ]);
    renderNodes([{name: "local", address: null, used: true}], []);
    return;
  }
  const stats = status.stats || {};
  const stepMs = stats.decode_steps ? 1e3 * stats.decode_seconds / stats.decode_steps : null;
  setFigures([
    ["tps", "Tokens per second", fmtNum(status.tokens_per_second, 1)],
    ["running", "Running", fmtInt(status.running)],
    ["waiting", "Waiting", fmtInt(status.waiting)],
    ["step", "Decode step ms", fmtNum(stepMs, 1)],
    ["requests", "Requests", fmtInt(stats.requests)],
    ["generated", "Tokens generated", fmtInt(stats.generated_tokens)],
    ["kv", "KV cache in use", fmtBytes(status.kv_bytes_in_use)],
  ]);
  renderPlan(status.plan);
}

function showKind(kind) {
  state.kind = kind;
  const encoder = kind === "embeddings";
  $("chat-panel").hidden = encoder;
  $("embed-panel").hidden = !encoder;
  $("plan-panel").hidden = encoder;
}

function renderModel(s) {
  const parts = s.kind === "embeddings"
    ? [s.model, "encoder", `${s.dimensions} dimensions`]
    : [s.model, s.arch, `${s.layers} layers`, `context ${s.context}`, `${s.slots} slots`,
       `${fmtBytes(s.weight_bytes)} weights`];
  $("model-line").textContent = parts.filter(Boolean).join(" · ");
  if (s.kind === "embeddings") {
    $("embed-note").textContent =
      `Chat is not available: ${s.model} is an encoder model; it serves /v1/embeddings only.`;
  }
}

// The live figures, made once and then updated in place (no flicker, nothing for a reader to lose).
function setFigures(rows) {
  const dl = $("figures");
  const wanted = rows.map(([id]) => "fig-" + id).join(" ");
  if (dl.dataset.ids !== wanted) {
    dl.replaceChildren();
    for (const [id, label] of rows) {
      const box = el("div", "figure");
      box.append(el("dt", null, label));
      const dd = el("dd", "mono");
      dd.id = "fig-" + id;
      dd.setAttribute("aria-label", label);
      box.append(dd);
      dl.append(box);
    }
    dl.dataset.ids = wanted;
  }
  for (const [id, , value] of rows) $("fig-" + id).textContent = value;
}

function renderPlan(plan) {
  const stages = (plan && plan.stages) || [];
  const colors = nodeColors(plan);
  const total = stages.reduce((n, s) => n + s.layers, 0) || 1;
  const slowest = Math.max(0, ...stages.map((s) => s.measured_ms || 0));

  const bar = $("plan-bar");
  bar.replaceChildren();
  for (const s of stages) {
    const part = el("div", "plan-part" + (s.node === plan.bottleneck ? " bottleneck" : ""),
                    `${s.node} · ${s.layers}`);
    part.style.flexGrow = String(s.layers / total);
    part.style.background = colors.get(s.node);
    part.title = `${s.node}: ${s.layers} layers, ${s.first} – ${s.last}`;
    bar.append(part);
  }

  const body = $("plan").tBodies[0];
  body.replaceChildren();
  stages.forEach((s, k) => {
    const row = el("tr", s.node === plan.bottleneck ? "bottleneck" : null);
    row.append(el("td", "mono", String(k)));
    const node = el("td");
    node.append(swatch(colors.get(s.node)), document.createTextNode(s.node));
    row.append(node);
    row.append(el("td", "num mono", fmtInt(s.layers)));
    row.append(el("td", "mono", `${s.first} – ${s.last}`));
    row.append(el("td", "num mono", fmtNum(s.planned_ms, 2)));
    const measured = el("td", "num mono");
    if (s.measured_ms != null && slowest > 0) {
      const meter = el("span", "meter");
      meter.style.width = `${Math.round(100 * s.measured_ms / slowest)}%`;
      measured.append(meter);
    }
    measured.append(document.createTextNode(fmtNum(s.measured_ms, 2)));
    row.append(measured);
    body.append(row);
  });
  $("bottleneck").textContent = stages.length
    ? `Bottleneck: ${plan.bottleneck}` + (stages.length > 1 ? ` (the stage that sets the pace of the pipeline)` : "")
    : "No plan yet.";
  renderNodes(plan.nodes || [], stages);
}

function renderNodes(nodes, stages) {
  const colors = new Map(nodes.map((n, i) => [n.name, paletteColor(i)]));
  const list = $("nodes");
  list.replaceChildren();
  for (const n of nodes) {
    const item = el("li", n.used ? null : "spare");
    item.append(swatch(colors.get(n.name)));
    item.append(el("span", "node-name", n.name));
    item.append(el("span", "node-address mono", n.address || "this machine"));
    const held = stages.map((s, k) => [s, k]).filter(([s]) => s.node === n.name);
    const role = !n.used ? "spare"
      : held.length ? `stage ${held.map(([, k]) => k).join(", ")} · ${held.reduce((a, [s]) => a + s.layers, 0)} layers`
      : "in use";
    item.append(el("span", "node-role", role));
    list.append(item);
  }
}

// One color per node, by its place in the node list, shared by the bar, the table and the list.
function nodeColors(plan) {
  const names = (plan && plan.nodes ? plan.nodes.map((n) => n.name) : []);
  for (const s of (plan && plan.stages) || []) if (!names.includes(s.node)) names.push(s.node);
  return new Map(names.map((name, i) => [name, paletteColor(i)]));
}

function paletteColor(i) {
  const hues = [212, 152, 32, 280, 350, 188, 96, 250];
  return `hsl(${hues[i % hues.length]} 55% 52%)`;
}

function swatch(color) {
  const s = el("span", "swatch");
  s.style.background = color;
  s.setAttribute("aria-hidden", "true");
  return s;
}

// ------------------------------------------------------------------ chat

function addMessage(role, text) {
  $("log-empty").hidden = true;
  const article = el("article", "message " + role);
  article.setAttribute("aria-label", role === "user" ? "Question" : "Answer");
  article.append(el("div", "who", role === "user" ? "You" : state.status ? state.status.model : "model"));
  const body = el("div", "text", text);
  article.append(body);
  const meta = el("div", "meta mono");
  article.append(meta);
  $("log").append(article);
  scrollLog();
  return {article, body, meta};
}

function scrollLog() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function readNumber(input, name, min, max, integer) {
  const value = Number(input.value);
  if (input.value.trim() === "" || !Number.isFinite(value) || value < min || value > max
      || (integer && !Number.isInteger(value))) {
    throw new Error(`${name} must be ${integer ? "a whole number" : "a number"} from ${min} to ${max}`);
  }
  return value;
}

const FINISHED = {stop: "finished", length: "max tokens reached", stopped: "stopped"};

async function ask(question) {
  if (!state.status) {
    showError("Not connected to the server yet: its status could not be read.");
    return;
  }
  let temperature, maxTokens;
  try {
    temperature = readNumber($("temperature"), "Temperature", 0, 2, false);
    maxTokens = readNumber($("max-tokens"), "Max tokens", 1, state.status.context || 1e9, true);
  } catch (err) {
    showError(err.message);
    return;
  }
  clearError();
  const system = $("system").value.trim();
  const question_ = {role: "user", content: question};
  const messages = [...(system ? [{role: "system", content: system}] : []), ...state.history, question_];
  addMessage("user", question);
  const answer = addMessage("assistant", "");
  const chat = state.chat;
  answer.article.dataset.state = "streaming";
  // busy while streaming: a screen reader reads the answer once, not once per token
  answer.article.setAttribute("aria-busy", "true");
  answer.meta.textContent = "waiting for the first token…";
  const controller = state.controller = new AbortController();
  setBusy(true);

  const started = performance.now();
  let text = "", pieces = 0, first = null, last = null, finish = null, usage = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      body: JSON.stringify({model: state.status.model, messages, stream: true,
                            stream_options: {include_usage: true}, temperature, max_tokens: maxTokens}),
    });
    for await (const data of serverEvents(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message);   // a failure mid-stream
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        last = performance.now();
        if (first === null) first = last;
        text += piece;
        pieces += 1;
        answer.body.textContent = text;
        answer.meta.textContent = `${pieces} tokens…`;
        scrollLog();
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (chat === state.chat) state.history.push(question_, {role: "assistant", content: text});
    answer.article.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
      answer.article.dataset.state = "stopped";
      // what was shown is what the model said: the next question follows on from it
      if (text && chat === state.chat) state.history.push(question_, {role: "assistant", content: text});
    } else {
      answer.article.dataset.state = "failed";
      if (err instanceof ApiError && err.status === 401) handleUnauthorized(err);
      // fetch's own failures (TypeError "Failed to fetch", "network error") mean the server went away
      const message = err instanceof ApiError || err instanceof SyntaxError ? err.message
        : `the connection to the server was lost (${err.message})`;
      showError(message);
      answer.meta.textContent = `failed: ${message}`;
      return;
    }
  } finally {
    state.controller = null;
    answer.article.removeAttribute("aria-busy");
    setBusy(false);
  }
  answer.meta.textContent = answerSummary(usage ? usage.completion_tokens : pieces, started, first, last, finish);
}

// "16 tokens · 41.2 tokens/s · first token 85 ms · max tokens reached"
function answerSummary(tokens, started, first, last, finish) {
  const parts = [`${tokens} tokens`];
  if (first !== null && last > first && tokens > 1) {
    parts.push(`${fmtNum((tokens - 1) / ((last - first) / 1e3), 1)} tokens/s`);
  }
  if (first !== null) parts.push(`first token ${fmtNum(first - started, 0)} ms`);
  parts.push(FINISHED[finish] || finish || "ended");
  return parts.join(" · ");
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function onSend(event) {
  event.preventDefault();
  const question = $("prompt").value.trim();
  if (!question || state.controller) return;
  $("prompt").value = "";
  ask(question);
}

function newChat() {
  state.chat += 1;
  if (state.controller) state.controller.abort();
  state.history = [];
  for (const m of [...$("log").querySelectorAll("article")]) m.remove();
  $("log-empty").hidden = false;
  clearError();
}

// ------------------------------------------------------------------ embeddings

async function onEmbed(event) {
  event.preventDefault();
  const text = $("embed-input").value;
  if (!text.trim() || !state.status) return;
  clearError();
  try {
    const response = await api("/v1/embeddings", {
      method: "POST", body: JSON.stringify({model: state.status.model, input: text}),
    });
    const body = await response.json();
    showEmbedding(body.data[0].embedding, body.usage.prompt_tokens);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) handleUnauthorized(err);
    showError(err.message);
  }
}

function showEmbedding(vector, tokens) {
  const norm = Math.sqrt(vector.reduce((a, x) => a + x * x, 0));
  $("embed-summary").textContent = `${vector.length} dimensions · ${tokens} tokens · norm ${norm.toFixed(4)}`;
  const list = $("embed-values");
  list.replaceChildren(...vector.slice(0, SHOWN_VALUES).map((x) => el("li", null, x.toFixed(6))));
  drawStrip(vector);
  $("embed-out").hidden = false;
}

// The vector as a strip of cells, blue below zero and orange above, scaled to its largest value.
function drawStrip(vector) {
  const canvas = $("embed-strip");
  const ctx = canvas.getContext("2d");
  const top = Math.max(...vector.map(Math.abs)) || 1;
  const w = canvas.width / vector.length;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  vector.forEach((x, i) => {
    const a = Math.min(1, Math.abs(x) / top);
    ctx.fillStyle = x < 0 ? `rgba(47, 111, 235, ${a})` : `rgba(221, 107, 32, ${a})`;
    ctx.fillRect(i * w, 0, Math.ceil(w), canvas.height);
  });
}

// ------------------------------------------------------------------ formatting

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtNum(x, digits) {
  return x == null || !Number.isFinite(x) ? "—" : x.toFixed(digits);
}

function fmtInt(x) {
  return x == null ? "—" : Math.round(x).toLocaleString("en-US");
}

function fmtBytes(x) {
  if (x == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i += 1;
  }
  return `${x.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ------------------------------------------------------------------ start

function start() {
  $("chat-form").addEventListener("submit", onSend);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) onSend(event);
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) state.controller.abort();
  });
  $("new-chat").addEventListener("click", newChat);
  $("embed-form").addEventListener("submit", onEmbed);
  $("key-form").addEventListener("submit", useKey);
  $("change-key").addEventListener("click", () => askForKey("Enter the server's API key."));
  $("alert-close").addEventListener("click", clearError);
  $("change-key").hidden = storedKey() === "";
  poll();
}

start();
