// The dungeon play page: plain JavaScript over the game API (/v1/...), no build step.
// Model text is only ever put into the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let game = null;      // the game as the API last returned it
let busy = false;     // a request that changes the game is running

// --- talking to the server ---------------------------------------------------------------

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem("dungeon-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function send(method, path, body, retried) {
  const used = localStorage.getItem("dungeon-api-key");
  const res = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && !retried) {
    // Another request may have asked for the key meanwhile: then just try again with it.
    if (localStorage.getItem("dungeon-api-key") !== used) return send(method, path, body, true);
    const key = prompt("This server needs its API key:");
    if (key) {
      localStorage.setItem("dungeon-api-key", key.trim());
      return send(method, path, body, true);
    }
  }
  return res;
}

async function api(method, path, body) {
  const res = await send(method, path, body);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(errorText(data, res));
  return data;
}

function errorText(data, res) {
  const err = data && (data.error || data.detail);
  const msg = err && (err.message || err.msg);
  let text = msg || `${res.status} ${res.statusText}`;
  const wait = res.headers && res.headers.get("Retry-After");
  if (wait) text += ` (try again in ${wait} s)`;
  return text;
}

// Server-sent events over a POST: call on(event, data) for each event.
async function stream(path, body, on) {
  const res = await send("POST", path, body);
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    throw new Error(errorText(data, res));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) on(event, JSON.parse(data));
    }
  }
}

// --- showing things ----------------------------------------------------------------------

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

function setBusy(on, text) {
  busy = on;
  $("status").textContent = on ? (text || "The story is being written...") : "";
  for (const el of document.querySelectorAll("#game button, #game input, #game select")) {
    el.disabled = on;
  }
  if (!on && game) updateButtons();
}

function para(cls, text) {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  return p;
}

function actionLine(turn) {
  if (turn.mode === "do" || turn.mode === "say") return para("player", "> " + turn.action);
  if (turn.mode === "story") return para("player story", turn.action);
  return null;
}

function render(g) {
  game = g;
  location.hash = "game=" + encodeURIComponent(g.id);
  $("start").hidden = true;
  $("game").hidden = false;
  $("title").textContent = g.title || "An adventure";
  const story = $("story");
  story.replaceChildren(para("premise", g.premise));
  g.turns.forEach((turn) => {
    const line = actionLine(turn);
    if (line) story.append(line);
    story.append(para("response", turn.response));
  });
  story.dataset.turns = String(g.turns.length);
  const memory = $("memory");
  memory.replaceChildren(...g.story.memory.map((fact, i) => {
    const li = document.createElement("li");
    li.append(document.createTextNode(fact + " "));
    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "small";
    forget.textContent = "forget";
    forget.onclick = () => change("DELETE", `/memory/${i}`);
    li.append(forget);
    return li;
  }));
  $("note").value = g.story.author_note || "";
  $("game-candidates").value = String(Math.min(g.settings.candidates, 4));
  updateButtons();
  story.lastElementChild.scrollIntoView({ block: "end" });
}

function updateButtons() {
  $("undo").disabled = busy || !game.can_undo;
  $("redo").disabled = busy || !game.can_redo;
  $("retry").disabled = busy || !game.turns.length;
  const last = game.turns[game.turns.length - 1];
  const many = last && last.candidates.length > 1;
  $("candidates").hidden = !many;
  if (many) {
    $("which").textContent = `response ${last.chosen + 1} of ${last.candidates.length}`;
    $("prev").disabled = busy || last.chosen === 0;
    $("next").disabled = busy || last.chosen === last.candidates.length - 1;
  }
}

// --- the start screen --------------------------------------------------------------------

async function showStart() {
  game = null;
  history.replaceState(null, "", "/");
  $("game").hidden = true;
  $("start").hidden = false;
  const [{ scenarios }, { saves }] = await Promise.all([
    api("GET", "/v1/scenarios"), api("GET", "/v1/saves"),
  ]);
  const select = $("scenario");
  select.replaceChildren(...scenarios.map((s) => {
    const o = document.createElement("option");
    o.value = s.name;
    o.textContent = `${s.title} (${s.genre})`;
    o.dataset.description = s.description;
    return o;
  }));
  select.onchange = () => {
    const o = select.selectedOptions[0];
    $("scenario-desc").textContent = o ? o.dataset.description : "";
  };
  select.onchange();
  const list = $("saves");
  list.replaceChildren(...saves.slice(0, 30).map((s) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = s.name;
    b.onclick = () => startWith({ save: s.name });
    li.append(b, document.createTextNode(" " + s.saved_at.replace("T", " ").replace("Z", " UTC")));
    return li;
  }));
  if (!saves.length) list.append(para("hint", "No saved games yet."));
}

async function startWith(body) {
  showError(null);
  const seed = $("seed").value.trim();
  if (seed && !body.save) body.seed = Number(seed);
  if (!body.save) body.candidates = Number($("start-candidates").value);
  try {
    setBusy(true, "Starting...");
    const g = await api("POST", "/v1/games", body);
    setBusy(false);
    render(g);
    $("text").focus();
  } catch (err) {
    setBusy(false);
    showError(err);
  }
}

// --- playing -----------------------------------------------------------------------------

async function play(path, body) {
  if (busy || !game) return;
  showError(null);
  setBusy(true);
  const story = $("story");
  let live = null;
  if (path.startsWith("/retry")) {
    // The last response is being replaced: show the new one where it was.
    live = story.lastElementChild;
    live.textContent = "";
  } else {
    const line = actionLine({ mode: body.mode, action: body.text });
    if (line && body.text) story.append(line);
    live = para("response writing", "");
    story.append(live);
  }
  let result = null;
  try {
    await stream(`/v1/games/${encodeURIComponent(game.id)}${path}`, body, (event, data) => {
      if (event === "piece") {
        live.textContent += data.text;
        live.scrollIntoView({ block: "end" });
      } else if (event === "turn") {
        result = data;
      } else if (event === "error") {
        throw new Error(errorText(data, {}));
      }
    });
    if (!result) throw new Error("the connection closed before the turn was done");
    setBusy(false);
    render(result.game);
    if (result.notice) $("status").textContent = result.notice;
  } catch (err) {
    setBusy(false);
    showError(err);
    await reload();
  }
}

async function reload() {
  if (!game) return;
  try {
    render(await api("GET", `/v1/games/${encodeURIComponent(game.id)}`));
  } catch (err) {
    showError(err);
  }
}

async function change(method, path, body) {
  if (busy || !game) return;
  showError(null);
  try {
    setBusy(true, "Saving...");
    const g = await api(method, `/v1/games/${encodeURIComponent(game.id)}${path}`, body);
    setBusy(false);
    render(g);
  } catch (err) {
    setBusy(false);
    showError(err);
  }
}

async function saveAs() {
  const name = prompt("Save a copy as (letters, digits, '.', '-', '_'):", game.id + "-copy");
  if (!name) return;
  try {
    const res = await api("POST", `/v1/games/${encodeURIComponent(game.id)}/save`, { name });
    $("status").textContent = `Saved as ${res.saved}.`;
  } catch (err) {
    showError(err);
  }
}

async function exportStory() {
  const res = await send("GET", `/v1/games/${encodeURIComponent(game.id)}/export?format=markdown`);
  if (!res.ok) return showError(new Error(`export failed: ${res.status}`));
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${game.id}.md`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function wire() {
  $("act").onsubmit = (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    const mode = text ? $("mode").value : "continue";
    $("text").value = "";
    play("/turns/stream", { text, mode });
  };
  $("continue").onclick = () => play("/turns/stream", { text: "", mode: "continue" });
  $("retry").onclick = () => play("/retry/stream", undefined);
  $("undo").onclick = () => change("POST", "/undo");
  $("redo").onclick = () => change("POST", "/redo");
  $("prev").onclick = () => {
    const last = game.turns[game.turns.length - 1];
    change("POST", "/choose", { index: last.chosen - 1 });
  };
  $("next").onclick = () => {
    const last = game.turns[game.turns.length - 1];
    change("POST", "/choose", { index: last.chosen + 1 });
  };
  $("remember").onclick = () => {
    const text = $("memory-text").value.trim();
    if (text) change("POST", "/memory", { text }).then(() => { $("memory-text").value = ""; });
  };
  $("set-note").onclick = () => change("PUT", "/author-note", { text: $("note").value });
  $("game-candidates").onchange = () =>
    change("PATCH", "/settings", { candidates: Number($("game-candidates").value) });
  $("save").onclick = saveAs;
  $("export").onclick = exportStory;
  $("new").onclick = () => showStart().catch(showError);
  $("start-scenario").onclick = () => startWith({ scenario: $("scenario").value });
  $("start-premise").onclick = () => startWith({ premise: $("premise").value });
  $("mode").onchange = () => {
    const hints = { do: "What do you do?", say: "What do you say?", story: "What happens next?" };
    $("text").placeholder = hints[$("mode").value];
  };
}

async function main() {
  wire();
  const id = new URLSearchParams(location.hash.slice(1)).get("game");
  try {
    if (id) render(await api("GET", `/v1/games/${encodeURIComponent(id)}`));
    else await showStart();
  } catch (err) {
    showError(err);
    if (!game) await showStart().catch(showError);
  }
}

main();
