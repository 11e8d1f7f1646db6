// modelyard dashboard: refreshes the server-rendered parts of a page, runs
// load/unload with a progress bar, and drives the playground. No build step.
"use strict";

// Every call carries this header: with a session cookie, the orchestrator
// accepts a change only when it is present (a page of another site cannot add it).
const UI_HEADERS = { "x-modelyard-ui": "1" };

function signIn() {
  window.location.href = "/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "HTTP " + response.status;
}

// --- parts: <div data-part="/ui/part/..." data-every="2"> ---------------------

const refreshers = [];
let actionRunning = false; // a load or unload under way: its buttons stay disabled through refreshes

function startParts() {
  document.querySelectorAll("[data-part]").forEach((element) => {
    let busy = false;
    const refresh = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const response = await fetch(element.dataset.part, { headers: UI_HEADERS, cache: "no-store" });
        if (response.status === 401) { signIn(); return; }
        if (!response.ok) return; // keep what is shown; the next round tries again
        replaceKeepingScroll(element, await response.text());
        if (actionRunning) element.querySelectorAll("[data-action]").forEach((b) => { b.disabled = true; });
      } catch (_) {
        // the orchestrator restarting: try again next round
      } finally {
        busy = false;
      }
    };
    refreshers.push(refresh);
    const seconds = parseFloat(element.dataset.every || "0");
    if (seconds > 0) setInterval(refresh, seconds * 1000);
    if (element.dataset.follow) scrollToEnd(element);
  });
}

function refreshAll() { refreshers.forEach((refresh) => refresh()); }

function scrollToEnd(element) {
  const pre = element.querySelector("pre");
  if (pre) pre.scrollTop = pre.scrollHeight;
}

// A log follows its end while the reader is there, and stays put when they scrolled up.
function replaceKeepingScroll(element, html) {
  const pre = element.querySelector("pre");
  const atEnd = !pre || pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
  const top = pre ? pre.scrollTop : 0;
  element.innerHTML = html;
  const fresh = element.querySelector("pre");
  if (fresh) fresh.scrollTop = atEnd && element.dataset.follow ? fresh.scrollHeight : top;
}

// --- load / unload, with a progress bar ------------------------------------------

async function serviceAction(button) {
  const model = button.dataset.model;
  const action = button.dataset.action;
  const row = document.getElementById("action-progress");
  const bar = document.getElementById("action-bar");
  const label = document.getElementById("action-label");
  const clock = document.getElementById("action-time");
  const problem = document.getElementById("action-error");
  const facts = document.getElementById("service");
  // The last load's duration, when known, makes the bar an estimate; otherwise it only moves.
  const expected = action === "load" && facts ? parseFloat(facts.dataset.loadSeconds || "") : NaN;
  problem.hidden = true;
  label.textContent = (action === "load" ? "loading " : "unloading ") + model;
  row.hidden = false;
  const began = performance.now();
  const tick = () => {
    const seconds = (performance.now() - began) / 1000;
    if (expected > 0) {
      bar.max = 1;
      bar.value = Math.min(seconds / expected, 0.99);
      clock.textContent = seconds.toFixed(0) + " s / ~" + expected.toFixed(0) + " s";
    } else {
      bar.removeAttribute("value");
      clock.textContent = seconds.toFixed(0) + " s";
    }
  };
  tick();
  const timer = setInterval(tick, 250);
  actionRunning = true;
  document.querySelectorAll("[data-action]").forEach((b) => { b.disabled = true; });
  try {
    const response = await fetch("/admin/services/" + encodeURIComponent(model) + "/" + action,
      { method: "POST", headers: UI_HEADERS });
    if (response.status === 401) { signIn(); return; }
    if (!response.ok) {
      problem.textContent = await errorMessage(response);
      problem.hidden = false;
    }
  } catch (error) {
    problem.textContent = "the orchestrator did not answer: " + error;
    problem.hidden = false;
  } finally {
    clearInterval(timer);
    actionRunning = false;
    row.hidden = true;
    refreshAll();
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button && !button.disabled && !actionRunning) serviceAction(button);
});

// --- playground ---------------------------------------------------------------------

function startPlayground() {
  const form = document.getElementById("playground");
  if (!form) return;
  const select = document.getElementById("pg-model");
  const prompt = document.getElementById("pg-prompt");
  const transcript = document.getElementById("pg-chat");
  const media = document.getElementById("pg-media");
  const status = document.getElementById("pg-status");
  const problem = document.getElementById("pg-error");
  const send = document.getElementById("pg-send");
  const stop = document.getElementById("pg-stop");
  const maxTokens = document.getElementById("pg-max-tokens");
  const duration = document.getElementById("pg-duration");
  let history = [];
  let aborter = null;

  const typeOf = () => select.selectedOptions[0].dataset.type;
  const showFields = () => {
    maxTokens.closest("label").hidden = typeOf() !== "text";
    duration.closest("label").hidden = typeOf() !== "audio";
  };
  select.addEventListener("change", () => { history = []; transcript.textContent = ""; showFields(); });
  showFields();
  document.getElementById("pg-clear").addEventListener("click", () => {
    history = []; transcript.textContent = ""; media.textContent = ""; status.textContent = ""; problem.hidden = true;
  });
  stop.addEventListener("click", () => { if (aborter) aborter.abort(); });

  const say = (role, text) => {
    const line = document.createElement("div");
    line.className = "msg " + role;
    line.textContent = text;
    transcript.appendChild(line);
    transcript.scrollTop = transcript.scrollHeight;
    return line;
  };
  const fail = (message) => { problem.textContent = message; problem.hidden = false; };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    problem.hidden = true;
    send.disabled = true;
    stop.disabled = false;
    aborter = new AbortController();
    const began = performance.now();
    try {
      if (typeOf() === "text") await chat(text, began);
      else if (typeOf() === "image") await image(text, began);
      else await audio(text, began);
      prompt.value = "";
    } catch (error) {
      if (error.name === "AbortError") status.textContent = "stopped";
      else fail(String(error.message || error));
    } finally {
      send.disabled = false;
      stop.disabled = true;
      aborter = null;
    }
  });

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST", signal: aborter.signal,
      headers: { ...UI_HEADERS, "content-type": "application/json" }, body: JSON.stringify(body),
    });
    if (response.status === 401) { signIn(); throw new Error("signed out"); }
    if (!response.ok) throw new Error(await errorMessage(response));
    return response;
  }

  async function chat(text, began) {
    // The turn joins the history only with its answer: a failed or stopped one leaves no lone
    // user message behind (chat templates that need alternating roles would refuse the next).
    const turn = { role: "user", content: text };
    say("user", text);
    const answer = say("assistant", "");
    answer.id = "pg-answer";
    status.textContent = "waiting for " + select.value + "…";
    const response = await post("/v1/chat/completions", {
      model: select.value, messages: [...history, turn], stream: true, max_tokens: parseInt(maxTokens.value, 10) || 128,
      stream_options: { include_usage: true },
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", carriage = "", firstToken = null, usage = null, done = false;
    // One SSE event: comments (": loading model ...") and data lines, joined as the spec says.
    const handle = (event) => {
      const data = [];
      for (const line of event.split("\n")) {
        if (line.startsWith(":")) status.textContent = line.slice(1).trim();
        else if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      if (data.length === 0) return;
      const text = data.join("\n");
      if (text === "[DONE]") { done = true; return; }
      const message = JSON.parse(text);
      if (message.error) throw new Error(message.error.message);
      if (message.usage) usage = message.usage;
      const delta = message.choices && message.choices[0] && message.choices[0].delta;
      if (delta && delta.content) {
        if (firstToken === null) firstToken = performance.now() - began;
        answer.textContent += delta.content;
        transcript.scrollTop = transcript.scrollHeight;
      }
    };
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      let text = carriage + decoder.decode(chunk.value, { stream: true });
      carriage = text.endsWith("\r") ? "\r" : ""; // a \r\n may be split between two chunks
      if (carriage) text = text.slice(0, -1);
      buffer += text.replace(/\r\n?/g, "\n");
      let end;
      while (!done && (end = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    buffer += carriage.replace("\r", "\n");
    if (!done && buffer.trim()) handle(buffer); // a last event without its blank line
    history.push(turn);
    history.push({ role: "assistant", content: answer.textContent });
    const seconds = ((performance.now() - began) / 1000).toFixed(1);
    status.textContent = (usage ? usage.completion_tokens + " tokens · " : "") +
      (firstToken !== null ? "first token " + firstToken.toFixed(0) + " ms · " : "") + seconds + " s";
  }

  async function image(text, began) {
    status.textContent = "generating with " + select.value + "…";
    const response = await post("/v1/images/generations",
      { model: select.value, prompt: text, response_format: "b64_json" });
    const body = await response.json();
    media.textContent = "";
    body.data.forEach((item) => {
      const picture = document.createElement("img");
      picture.alt = text;
      picture.src = "data:image/png;base64," + item.b64_json;
      media.appendChild(picture);
    });
    status.textContent = ((performance.now() - began) / 1000).toFixed(1) + " s";
  }

  async function audio(text, began) {
    status.textContent = "generating with " + select.value + "…";
    const response = await post("/v1/audio/generations",
      { model: select.value, prompt: text, duration: parseFloat(duration.value) || 4, response_format: "audio" });
    const player = document.createElement("audio");
    player.controls = true;
    player.src = URL.createObjectURL(await response.blob());
    media.textContent = "";
    media.appendChild(player);
    status.textContent = ((performance.now() - began) / 1000).toFixed(1) + " s";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startParts();
  startPlayground();
});
