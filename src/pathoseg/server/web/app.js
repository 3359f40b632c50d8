// pathoseg review UI: talks only to the REST API (/api, see /docs for the schema).
//
// The editor works on glands: the mask is an instance label map (0 background, 1..N glands)
// held as a Uint16Array; every tool acts on gland ids, is undoable, and appends to an
// operation log ({type, timestamp, gland}) that is saved with the mask.
import { api, setToken } from "./api.js";
import { createEdits } from "./edits.js";
import * as L from "./labels.js";
import * as O from "./overlay.js";
import { decodePng, encodeLabelPng } from "./png.js";
import * as Q from "./queue.js";
import { createView } from "./view.js";

const $ = (id) => document.getElementById(id);
// The server's limits and vocabularies (GET /api/vocabulary), read at login: no copies here.
let vocab = { max_gland_id: 0, operations: [] };
const state = {
  token: localStorage.getItem("pathoseg-token") || "",
  images: [], current: null, tool: "select", size: 12,
  img: null, w: 0, h: 0, labels: null, prob: null, predCanvas: null,
  overlay: null, overlayCtx: null, overlayData: null, centres: {},
  selected: 0, accepted: new Set(), edited: new Set(), deleteArmed: 0,
  zoom: 1, ox: 0, oy: 0, undo: [], redo: [], polygon: [], line: [],
  log: [], dirty: false, openedAt: 0, eventAt: 0, timings: [],
  drawing: false, stroke: null, last: null, panning: false, spaceDown: false,
};

// The canvas (view.js) and the gland edits (edits.js) over the one state, calling back here.
const ui = { status, refuse, setTool, vocab: () => vocab };
Object.assign(ui, createView(state, ui));
Object.assign(ui, createEdits(state, ui));
const { paintOverlay, render, renderSoon, resizeCanvas, fit, zoomToGland, imageToScreen, screenToImage } = ui;
const { select, selectAt, deleteKey, deleteGland, acceptGland, acceptAll, addClick, addPolygon, closePolygon, splitAlong,
  mergeGlands, mergeClick, fillHoles, beginStroke, strokeSegment, endStroke, undo, redo, compactIds } = ui;

function status(text, problem = false) {
  const line = $("status-line");
  line.textContent = text;
  line.classList.toggle("problem", problem);
}
// An operation that cannot be done: say why, change nothing.
function refuse(text) { status(text, true); return false; }

// ---- login ---------------------------------------------------------------------------
async function login(token) {
  state.token = token;
  setToken(token);
  try {
    const me = await (await api("/api/users/me")).json();
    vocab = await (await api("/api/vocabulary")).json();
    localStorage.setItem("pathoseg-token", token);
    state.admin = me.role === "admin";
    $("who").textContent = `${me.name} (${me.role})`;
    $("who").title = me.token_expires_at ? "token valid until " + me.token_expires_at.slice(0, 10) : "";
    // annotators review, save and approve; the rest is for admins (the API refuses it anyway);
    // nothing but the login shows before it
    document.querySelectorAll(".admin-only").forEach((el) => (el.hidden = !state.admin));
    document.querySelectorAll(".after-login").forEach((el) => (el.hidden = false));
    $("models").disabled = !state.admin;
    $("login").hidden = true;
    $("app").hidden = false;
    await loadQueue();
    await refreshModels();
    pollJobs();
  } catch (e) {
    $("login-error").textContent = "Login failed: " + e.message;
  }
}

// ---- queue ---------------------------------------------------------------------------
async function loadQueue() {
  try {
    state.images = await (await api("/api/images?order=" + $("order").value)).json();
  } catch (e) { status("the image list could not be loaded: " + e.message, true); return; }
  const p = Q.progress(state.images);
  $("progress").textContent = p.text;
  const list = $("queue-list");
  list.innerHTML = "";
  for (const im of Q.visible(state.images, $("filter").value)) {
    const li = document.createElement("li");
    li.dataset.id = im.id;
    li.title = (im.flag ? `flagged: ${im.flag}; ` : "") + (im.updated_by ? `last saved by ${im.updated_by}` : "not touched yet");
    li.className = (state.current && state.current.id === im.id ? "current " : "") + (im.flag ? "flagged" : "");
    const name = document.createElement("span"), badge = document.createElement("span");
    name.textContent = im.name;
    badge.className = `badge ${im.predicting ? "predicting" : im.status}`;
    badge.textContent = Q.badge(im);
    li.append(name, badge);
    if (im.flag) {
      const flag = document.createElement("span");
      flag.className = "badge flag"; flag.textContent = im.flag;
      li.append(flag);
    }
    li.onclick = () => openImage(im.id);
    list.appendChild(li);
  }
}

// The next (step 1) or previous (-1) image of the list as shown; ``unfinished``: the next one
// that still needs review.
function go(step, unfinished = false) {
  const shown = Q.visible(state.images, $("filter").value);
  const im = Q.neighbour(shown, state.current ? state.current.id : null, step, unfinished);
  if (!im) { refuse(unfinished ? "every image in the list is approved or flagged" : "no more images that way"); return; }
  openImage(im.id);
}

function loadImage(url) {
  return api(url).then((r) => r.blob()).then((b) => new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = URL.createObjectURL(b);
  }));
}

async function loadPng(url) { return decodePng(await (await api(url)).arrayBuffer()); }

async function openImage(id) {
  if (state.dirty && state.current && state.current.id !== id
      && !window.confirm(`${state.current.name} has unsaved edits. Discard them and open another image?`)) {
    status(`kept ${state.current.name}: save (S) first, or open the other image again to discard the edits`);
    return;
  }
  let info, img, mask;
  try {
    info = await (await api(`/api/images/${id}`)).json();
    img = await loadImage(`/api/images/${id}/image.png`);
    mask = await loadPng(`/api/images/${id}/mask.png`);
  } catch (e) { status(`image ${id} could not be opened: ${e.message}`, true); return; }
  if (mask.w !== info.width || mask.h !== info.height) { status("the mask does not fit the image", true); return; }
  Object.assign(state, { current: info, img, w: info.width, h: info.height, labels: Uint16Array.from(mask.values),
    prob: null, predCanvas: null, selected: 0, accepted: new Set(), edited: new Set(), undo: [], redo: [],
    polygon: [], line: [], log: [], dirty: false, drawing: false, stroke: null, deleteArmed: 0 });
  state.overlay = document.createElement("canvas");
  state.overlay.width = state.w; state.overlay.height = state.h;
  state.overlayCtx = state.overlay.getContext("2d");
  state.overlayData = state.overlayCtx.createImageData(state.w, state.h);
  state.openedAt = performance.now();
  loadPng(`/api/images/${id}/prediction.png`).then((p) => {
    if (state.current.id !== id || p.w !== state.w || p.h !== state.h) return;
    state.prob = p.values;
    state.predCanvas = document.createElement("canvas");
    state.predCanvas.width = p.w; state.predCanvas.height = p.h;
    const ctx = state.predCanvas.getContext("2d"), d = ctx.createImageData(p.w, p.h);
    O.paintHeat(d.data, p.values);
    ctx.putImageData(d, 0, 0);
    render();
  }).catch(() => {});
  resizeCanvas();
  fit();
  paintOverlay();
  document.querySelectorAll("#queue-list li").forEach((li) => li.classList.toggle("current", +li.dataset.id === id));
  status(`${info.name} — ${info.width}x${info.height}, ${info.status}, mask version ${info.mask_version}, `
         + `${L.glandIds(state.labels).size} glands`);
  $("view").focus();
}

// ---- saving ----------------------------------------------------------------------------
function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

async function save(approve) {
  if (!state.current || !state.labels) return;
  compactIds();
  const body = {
    png_base64: toBase64(await encodeLabelPng(state.labels, state.w, state.h)), kind: "labels",
    base_version: state.current.mask_version,
    // the API keeps at most a day per save: a tab left open over a weekend still saves
    seconds: Math.min(86400, (performance.now() - state.openedAt) / 1000), operations: state.log.slice(-10000),
    approve,
  };
  try {
    const res = await api(`/api/images/${state.current.id}/mask`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    state.current = await res.json();
    state.log = []; state.dirty = false; state.openedAt = performance.now();
    status(`saved ${state.current.name} as version ${state.current.mask_version}${approve ? ", approved" : ""}`);
    await loadQueue();
  } catch (e) {
    status("NOT saved: " + e.message, true);
    return;
  }
  if (approve && $("auto-next").checked) go(1, true);  // the next image that still needs review
}

// ---- jobs and models -----------------------------------------------------------------
async function refreshModels() {
  let models;
  try { models = await (await api("/api/models")).json(); } catch (e) {
    status("the model versions could not be loaded: " + e.message, true); return;
  }
  const sel = $("models");
  sel.innerHTML = models.length ? "" : "<option>no model yet</option>";
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.version;
    // Scores come only from the project's current validation set, so versions compare.
    const sc = m.scores ? `IoU ${m.scores.iou.toFixed(3)}, F1 ${m.scores.f1.toFixed(3)} on ${m.scores.images} val`
      : "not scored on the current validation set";
    const made = [m.trained_by && `by ${m.trained_by}`, m.created_at && m.created_at.slice(0, 16).replace("T", " ")]
      .filter(Boolean).join(", ");
    o.textContent = `model v${m.version}${m.active ? " (active)" : ""}: ${sc}${made ? " \u00b7 " + made : ""}`;
    o.title = m.note || "";
    o.selected = m.active;
    sel.appendChild(o);
  }
}

let lastJobState = "";
async function pollJobs() {
  try {
    const jobs = await (await api("/api/jobs")).json();
    const j = jobs[0];
    const text = j ? `${j.kind} #${j.id}: ${j.status} ${Math.round(j.progress * 100)}% ${j.message}` : "";
    $("job").textContent = text;
    $("job").title = text;  // the line is cut to fit the header; the whole message on hover
    const key = j ? j.id + j.status : "";
    if (j && key !== lastJobState && j.status === "done") { await refreshModels(); await loadQueue(); }
    lastJobState = key;
  } catch (e) { /* keep polling */ }
  setTimeout(pollJobs, 2000);
}

// ---- events --------------------------------------------------------------------------
const TOOL_HINTS = {
  select: "click a gland to select it", add: "click inside a missed gland to add it",
  polygon: "click around a gland, double-click or Enter to close", split: "draw a line across a gland to split it",
  merge: "click a gland, then the gland to merge into it", brush: "paint onto the selected gland",
  eraser: "erase from the selected gland", pan: "drag to move the view",
};

function setTool(tool) {
  state.tool = tool;
  state.polygon = []; state.line = [];
  document.querySelectorAll("#toolbar [data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  if (state.labels) { status(`${tool}: ${TOOL_HINTS[tool]}`); render(); }
}

// A request the page waits on: its failure is said in the page (never only in the console),
// and ``after`` runs either way (e.g. the model menu shows the truly active version again).
async function attempt(what, action, after = null) {
  try { await action(); } catch (e) { status(`${what}: ${e.message}`, true); }
  if (after) await after();
}

function showHeat() {
  $("legend").hidden = !$("show-pred").checked;
  if ($("show-pred").checked && state.labels && !state.predCanvas) status("no model prediction for this image yet");
  render();
}

function toggleHelp(show) { $("help").hidden = show === undefined ? !$("help").hidden : !show; }

function wire() {
  $("login-btn").onclick = () => login($("token").value.trim());
  $("token").onkeydown = (e) => { if (e.key === "Enter") login($("token").value.trim()); };
  $("order").onchange = loadQueue;
  $("filter").onchange = loadQueue;
  $("prev").onclick = () => go(-1);
  $("next").onclick = () => go(1);
  $("auto-next").checked = localStorage.getItem("pathoseg-auto-next") !== "off";
  $("auto-next").onchange = (e) => localStorage.setItem("pathoseg-auto-next", e.target.checked ? "on" : "off");
  $("fit").onclick = fit;
  $("zoom-gland").onclick = () => zoomToGland();
  $("legend-bar").style.background = O.heatGradient();
  document.querySelectorAll("#toolbar [data-tool]").forEach((b) => (b.onclick = () => setTool(b.dataset.tool)));
  $("size").oninput = (e) => (state.size = +e.target.value);
  $("delete").onclick = () => deleteGland();
  $("accept").onclick = () => acceptGland();
  $("accept-all").onclick = acceptAll;
  $("fill").onclick = () => fillHoles();
  $("undo").onclick = undo;
  $("redo").onclick = redo;
  $("help-btn").onclick = () => toggleHelp();
  $("help-close").onclick = () => toggleHelp(false);
  $("submit").onclick = () => save(false);
  $("approve").onclick = () => save(true);
  $("show-mask").oninput = render;
  $("show-pred").oninput = showHeat;
  $("opacity").oninput = paintOverlay;
  $("retrain").onclick = () => attempt("the retrain could not be started", async () => {
    const job = await (await api("/api/train", { method: "POST" })).json();
    status(`retrain queued (job ${job.id}); the model menu shows the new version when it is done`);
  });
  $("models").onchange = (e) => attempt(`model v${e.target.value} could not be activated`, async () => {
    await api(`/api/models/${e.target.value}/activate`, { method: "POST" });
    status(`model v${e.target.value} is active`);
  }, refreshModels);
  $("export").onclick = (e) => {
    e.preventDefault();
    attempt("the export failed", async () => {
      const blob = await (await api("/api/export")).blob();
      const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "pathoseg-export.zip"; a.click();
    });
  };
  $("upload").onchange = async (e) => {
    for (const f of e.target.files) {
      const fd = new FormData(); fd.append("file", f);
      try { await api("/api/images", { method: "POST", body: fd }); } catch (err) { status(`${f.name}: ${err.message}`, true); }
    }
    await loadQueue();
  };
  window.addEventListener("beforeunload", (ev) => {
    if (state.dirty) { ev.preventDefault(); ev.returnValue = ""; }
  });

  const c = $("view");
  // when the input being handled arrived (edits.js times each edit from it)
  for (const kind of ["mousedown", "mouseup", "keydown", "dblclick"]) {
    window.addEventListener(kind, () => { state.eventAt = performance.now(); }, { capture: true });
  }
  c.addEventListener("mousedown", (ev) => {
    if (!state.img) return;
    const [x, y] = screenToImage(ev);
    if (state.tool === "pan" || state.spaceDown || ev.button !== 0) {
      state.panning = true; state.last = [ev.clientX, ev.clientY]; return;
    }
    if (ev.detail > 1 && state.tool === "polygon") return;  // the double-click that closes it
    if (state.tool === "select") selectAt(x, y);
    else if (state.tool === "add") addClick(x, y);
    else if (state.tool === "merge") mergeClick(x, y);
    else if (state.tool === "polygon") { state.polygon.push([x, y]); render(); }
    else if (state.tool === "split") { state.line = [[x, y]]; state.drawing = true; render(); }
    else if (state.tool === "brush" || state.tool === "eraser") { if (beginStroke(x, y)) paintOverlay(); }
  });
  c.addEventListener("mousemove", (ev) => {
    if (state.panning) {
      state.ox += ev.clientX - state.last[0]; state.oy += ev.clientY - state.last[1];
      state.last = [ev.clientX, ev.clientY]; renderSoon(); return;
    }
    if (!state.drawing) return;
    const p = screenToImage(ev);
    if (state.tool === "split") { state.line.push(p); renderSoon(); return; }
    if (state.stroke) { paintOverlay(strokeSegment(state.last, p)); state.last = p; }
  });
  window.addEventListener("mouseup", () => {
    if (state.drawing && state.tool === "split") {
      const line = state.line;
      state.line = []; state.drawing = false;
      splitAlong(line);
      render();
    } else if (state.stroke) endStroke();
    state.drawing = false; state.panning = false;
  });
  c.addEventListener("dblclick", () => { if (state.tool === "polygon") closePolygon(); });
  c.addEventListener("contextmenu", (ev) => ev.preventDefault());
  c.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = c.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top;
    const f = ev.deltaY < 0 ? 1.15 : 1 / 1.15;
    state.ox = mx - (mx - state.ox) * f; state.oy = my - (my - state.oy) * f; state.zoom *= f;
    renderSoon();
  }, { passive: false });
  window.addEventListener("resize", () => { resizeCanvas(); fit(); });
  // a failed request nobody waited on still shows in the page
  window.addEventListener("unhandledrejection", (ev) => status("request failed: " + (ev.reason && ev.reason.message
    || ev.reason), true));
  window.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type !== "range" && ev.target.type !== "checkbox") return;
    if (ev.target.tagName === "SELECT") return;
    const k = ev.key.toLowerCase(), ctrl = ev.ctrlKey || ev.metaKey;
    // What saves or approves needs Ctrl; deleting a gland needs a second Delete (or Shift)
    if (ctrl && k === "z") { ev.preventDefault(); ev.shiftKey ? redo() : undo(); return; }
    if (ctrl && k === "y") { ev.preventDefault(); redo(); return; }
    if (ctrl && k === "s") { ev.preventDefault(); save(false); return; }
    if (ctrl && k === "enter") { ev.preventDefault(); save(true); return; }
    if (ctrl || ev.altKey) return;
    if (k === " ") { state.spaceDown = true; ev.preventDefault(); return; }
    const keys = {
      v: () => setTool("select"), c: () => setTool("add"), p: () => setTool("polygon"), x: () => setTool("split"),
      g: () => setTool("merge"), b: () => setTool("brush"), e: () => setTool("eraser"), h: () => setTool("pan"),
      delete: () => deleteKey(ev.shiftKey), backspace: () => deleteKey(ev.shiftKey),
      k: () => (ev.shiftKey ? acceptAll() : acceptGland()),
      f: () => fillHoles(), enter: closePolygon,
      s: () => status("save is Ctrl+S (nothing saved)"), a: () => status("approve is Ctrl+Enter (nothing approved)"),
      n: () => go(ev.shiftKey ? -1 : 1), 0: fit, z: () => zoomToGland(),
      escape: () => { state.polygon = []; state.line = []; state.deleteArmed = 0; toggleHelp(false); if (state.labels) select(0); },
      m: () => { $("show-mask").checked = !$("show-mask").checked; render(); },
      o: () => { $("show-pred").checked = !$("show-pred").checked; showHeat(); },
      "?": () => toggleHelp(),
      "[": () => { state.size = Math.max(1, state.size - 2); $("size").value = state.size; },
      "]": () => { state.size = Math.min(60, state.size + 2); $("size").value = state.size; },
    };
    if (keys[k]) { ev.preventDefault(); keys[k](); }
  });
  window.addEventListener("keyup", (ev) => { if (ev.key === " ") state.spaceDown = false; });
}

wire();
setTool("select");
window.pathoseg = {
  state, imageToScreen, openImage, login, save, select, deleteGland, acceptGland, acceptAll, addClick, addPolygon,
  splitAlong, mergeGlands, fillHoles, undo, redo, fit, zoomToGland, go,
};
if (state.token) login(state.token);
