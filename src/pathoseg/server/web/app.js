// pathoseg review UI: talks only to the REST API (/api, see /docs for the schema).
//
// The editor works on glands: the mask is an instance label map (0 background, 1..N glands)
// held as a Uint16Array; every tool acts on gland ids, is undoable, and appends to an
// operation log ({type, timestamp, gland}) that is saved with the mask.
import { api, setToken } from "./api.js";
import * as L from "./labels.js";
import { decodePng, encodeLabelPng } from "./png.js";

const $ = (id) => document.getElementById(id);
// The server's limits and vocabularies (GET /api/vocabulary), read at login: no copies here.
let vocab = { max_gland_id: 0, operations: [] };
const ADD_THRESHOLD = 0.3;  // one-click add: the model's probability region above this
const UNDO_DEPTH = 40;
const state = {
  token: localStorage.getItem("pathoseg-token") || "",
  images: [], current: null, tool: "select", size: 12,
  img: null, w: 0, h: 0, labels: null, prob: null, predCanvas: null,
  overlay: null, overlayCtx: null, overlayData: null,
  selected: 0, accepted: new Set(),
  zoom: 1, ox: 0, oy: 0, undo: [], redo: [], polygon: [], line: [],
  log: [], dirty: false, openedAt: 0,
  drawing: false, stroke: null, last: null, panning: false, spaceDown: false,
};

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
    // annotators review, save and approve; the rest is for admins (the API refuses it anyway)
    document.querySelectorAll(".admin-only").forEach((el) => (el.hidden = !state.admin));
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
  state.images = await (await api("/api/images?order=" + $("order").value)).json();
  const list = $("queue-list");
  list.innerHTML = "";
  for (const im of state.images) {
    const li = document.createElement("li");
    li.dataset.id = im.id;
    li.title = im.updated_by ? `last saved by ${im.updated_by}` : "not touched yet";
    li.className = state.current && state.current.id === im.id ? "current" : "";
    const u = im.uncertainty == null ? "" : " " + im.uncertainty.toFixed(2);
    li.innerHTML = `<span>${im.name}</span><span class="badge ${im.status}">${im.status}${u}</span>`;
    li.onclick = () => openImage(im.id);
    list.appendChild(li);
  }
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
  const info = await (await api(`/api/images/${id}`)).json();
  const img = await loadImage(`/api/images/${id}/image.png`);
  const mask = await loadPng(`/api/images/${id}/mask.png`);
  if (mask.w !== info.width || mask.h !== info.height) { status("the mask does not fit the image", true); return; }
  Object.assign(state, { current: info, img, w: info.width, h: info.height, labels: Uint16Array.from(mask.values),
    prob: null, predCanvas: null, selected: 0, accepted: new Set(), undo: [], redo: [], polygon: [], line: [],
    log: [], dirty: false, drawing: false, stroke: null });
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
    for (let i = 0; i < p.values.length; i++) {
      d.data[4 * i] = d.data[4 * i + 1] = d.data[4 * i + 2] = p.values[i]; d.data[4 * i + 3] = 255;
    }
    ctx.putImageData(d, 0, 0);
    render();
  }).catch(() => {});
  fitView();
  paintOverlay();
  document.querySelectorAll("#queue-list li").forEach((li) => li.classList.toggle("current", +li.dataset.id === id));
  status(`${info.name} — ${info.width}x${info.height}, ${info.status}, mask version ${info.mask_version}, `
         + `${glandIds().size} glands`);
  $("view").focus();
}

// ---- glands (the operations themselves: labels.js) -------------------------------------
const mask = () => ({ labels: state.labels, w: state.w, h: state.h });
const glandIds = () => L.glandIds(state.labels);
const hasGland = (id) => L.hasGland(state.labels, id, vocab.max_gland_id);
const nextId = () => L.nextId(state.labels);
const area = (id) => L.area(state.labels, id);

const palette = new Map();
function colour(id) {
  if (!palette.has(id)) {  // golden-angle hues: neighbouring ids get far-apart colours
    const hue = (id * 137.508) % 360, s = 0.75, l = 0.5, k = (n) => (n + hue / 30) % 12;
    const f = (n) => l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
    palette.set(id, [f(0) * 255, f(8) * 255, f(4) * 255]);
  }
  return palette.get(id);
}

// The mask layer: each gland filled in its own colour, its outline opaque; the selected
// gland's outline yellow, accepted glands' outlines white.
function paintOverlay() {
  if (!state.labels) return;
  const { w, h, labels, selected, accepted } = state, d = state.overlayData.data;
  const fill = Math.round(($("opacity").value / 100) * 255);
  for (let i = 0; i < labels.length; i++) {
    const id = labels[i], o = 4 * i;
    if (!id) { d[o + 3] = 0; continue; }
    const x = i % w;
    const edge = x === 0 || x === w - 1 || i < w || i >= w * (h - 1)
      || labels[i - 1] !== id || labels[i + 1] !== id || labels[i - w] !== id || labels[i + w] !== id;
    const c = colour(id);
    if (edge && id === selected) { d[o] = 255; d[o + 1] = 235; d[o + 2] = 59; d[o + 3] = 255; }
    else if (edge && accepted.has(id)) { d[o] = d[o + 1] = d[o + 2] = 255; d[o + 3] = 255; }
    else if (edge) { d[o] = c[0] * 0.7; d[o + 1] = c[1] * 0.7; d[o + 2] = c[2] * 0.7; d[o + 3] = 255; }
    else { d[o] = c[0]; d[o + 1] = c[1]; d[o + 2] = c[2]; d[o + 3] = id === selected ? Math.min(255, fill + 50) : fill; }
  }
  state.overlayCtx.putImageData(state.overlayData, 0, 0);
  render();
}

// ---- view ----------------------------------------------------------------------------
function fitView() {
  const c = $("view"), wrap = $("canvas-wrap");
  c.width = wrap.clientWidth; c.height = wrap.clientHeight;  // canvas pixels == CSS pixels
  if (!state.img) return;
  state.zoom = Math.min(c.width / state.img.width, c.height / state.img.height);
  state.ox = (c.width - state.img.width * state.zoom) / 2;
  state.oy = (c.height - state.img.height * state.zoom) / 2;
  render();
}

function imageToScreen(x, y) {
  const r = $("view").getBoundingClientRect();
  return [r.left + state.ox + x * state.zoom, r.top + state.oy + y * state.zoom];
}

function screenToImage(ev) {
  const r = $("view").getBoundingClientRect();
  return [(ev.clientX - r.left - state.ox) / state.zoom, (ev.clientY - r.top - state.oy) / state.zoom];
}

function render() {
  const c = $("view"), ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, c.width, c.height);
  if (!state.img) return;
  ctx.setTransform(state.zoom, 0, 0, state.zoom, state.ox, state.oy);
  ctx.imageSmoothingEnabled = state.zoom < 1;
  ctx.drawImage(state.img, 0, 0);
  if ($("show-mask").checked && state.overlay) ctx.drawImage(state.overlay, 0, 0);
  if ($("show-pred").checked && state.predCanvas) {
    ctx.globalAlpha = 0.35;
    ctx.globalCompositeOperation = "screen";
    ctx.drawImage(state.predCanvas, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.globalAlpha = 1;
  }
  const path = (points, colourName, dash) => {
    if (!points.length) return;
    ctx.strokeStyle = colourName; ctx.lineWidth = 1.5 / state.zoom; ctx.setLineDash(dash.map((v) => v / state.zoom));
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
    ctx.setLineDash([]);
  };
  path(state.polygon, "#ffeb3b", []);
  path(state.line, "#ff1744", [4, 3]);
}

// ---- undo, log -------------------------------------------------------------------------
function snapshot() {
  return { labels: state.labels.slice(), accepted: [...state.accepted], selected: state.selected };
}

function restore(s) {
  state.labels = s.labels; state.accepted = new Set(s.accepted); state.selected = s.selected;
}

function remember() {
  state.undo.push(snapshot());
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
  state.redo = [];
}

function logOp(type, gland = null, other = null) {
  if (!vocab.operations.includes(type)) throw new Error(`the server does not know the operation ${type}`);
  const entry = { type, timestamp: new Date().toISOString(), gland };
  if (other != null) entry.other = other;
  state.log.push(entry);
  state.dirty = true;
}

function undo() {
  if (!state.labels) return;
  if (!state.undo.length) { refuse("nothing to undo"); return; }
  state.redo.push(snapshot());
  restore(state.undo.pop());
  logOp("undo");
  paintOverlay();
  status("undone");
}

function redo() {
  if (!state.labels) return;
  if (!state.redo.length) { refuse("nothing to redo"); return; }
  state.undo.push(snapshot());
  restore(state.redo.pop());
  logOp("redo");
  paintOverlay();
  status("redone");
}

function changed(message) { paintOverlay(); status(message); return true; }

// ---- gland operations (each checks its input, says why when it cannot, changes nothing then)
function requireGland(id, what = "") {
  if (!state.labels) return refuse("open an image first");
  if (!id) return refuse(`select a gland${what} first (click it with the select tool, V)`);
  if (!hasGland(id)) return refuse(`gland ${id} is not in the mask`);
  return true;
}

function pixelAt(x, y) {
  const px = Math.floor(x), py = Math.floor(y);
  if (!(px >= 0 && py >= 0 && px < state.w && py < state.h)) return -1;
  return py * state.w + px;
}

function select(id) {
  if (!state.labels) return refuse("open an image first");
  if (id && !hasGland(id)) return refuse(`gland ${id} is not in the mask`);
  state.selected = id || 0;
  paintOverlay();
  status(id ? `gland ${id} selected (${area(id)} px${state.accepted.has(id) ? ", accepted" : ""})` : "nothing selected");
  return true;
}

function selectAt(x, y) {
  const i = pixelAt(x, y);
  return select(i < 0 ? 0 : state.labels[i]);
}

function deleteGland(id = state.selected) {
  if (!requireGland(id, " to delete")) return false;
  remember();
  state.labels = L.deleteGland(state.labels, id).labels;
  state.accepted.delete(id);
  if (state.selected === id) state.selected = 0;
  logOp("delete", id);
  return changed(`gland ${id} deleted`);
}

function acceptGland(id = state.selected) {
  if (!requireGland(id, " to accept (Shift+K accepts all)")) return false;
  if (state.accepted.has(id)) return refuse(`gland ${id} is accepted already`);
  remember();
  state.accepted.add(id);
  logOp("accept", id);
  return changed(`gland ${id} accepted`);
}

function acceptAll() {
  if (!state.labels) return refuse("open an image first");
  const ids = glandIds();
  if (!ids.size) return refuse("there are no glands to accept");
  remember();
  ids.forEach((id) => state.accepted.add(id));
  logOp("accept_all");
  return changed(`all ${ids.size} glands accepted`);
}

function newGland(region, type, message) {
  const id = nextId();
  if (id > vocab.max_gland_id) return refuse(`at most ${vocab.max_gland_id} glands per mask`);
  remember();
  state.labels = L.paintRegion(state.labels, region, id);
  state.selected = id;
  logOp(type, id);
  return changed(message(id));
}

// One click: the connected region of the model's probability above 0.3 around the click
// (over background only, its enclosed holes filled); where the model sees nothing, a polygon.
function addClick(x, y) {
  if (!state.labels) return refuse("open an image first");
  const start = pixelAt(x, y);
  if (start < 0) return refuse("click inside the image to add a gland");
  if (state.labels[start]) return refuse(`there is a gland here already (gland ${state.labels[start]}); `
                                         + "select it, or delete it first");
  const cut = Math.floor(ADD_THRESHOLD * 255) + 1;  // probability x 255 above 0.3
  if (!state.prob || state.prob[start] < cut) {
    setTool("polygon");
    const why = state.prob ? `the model sees no gland here (probability ${(state.prob[start] / 255).toFixed(2)} `
                             + `<= ${ADD_THRESHOLD})` : "there is no model prediction for this image";
    return refuse(`${why}: draw a polygon around the gland instead (click its outline, Enter closes)`);
  }
  const { region, n } = L.clickRegion(mask(), state.prob, start, cut);
  if (n > state.labels.length / 2) {
    setTool("polygon");
    return refuse("the model's region here covers most of the image: draw a polygon around the gland instead");
  }
  return newGland(region, "add_click", (id) => `gland ${id} added (${area(id)} px, from the model at ${ADD_THRESHOLD})`);
}

// A polygon: pixels whose centre lies inside (even-odd), background only.
function addPolygon(points) {
  if (!state.labels) return refuse("open an image first");
  if (points.length < 3) return refuse("a polygon needs at least 3 points");
  const { region, n } = L.polygonRegion(mask(), points);
  if (!n) return refuse("the polygon covers no background: glands do not overlap");
  return newGland(region, "add_polygon", (id) => `gland ${id} added (${n} px, drawn)`);
}

function closePolygon() {
  const points = state.polygon;
  state.polygon = [];
  if (points.length) addPolygon(points);
  render();
}

// Split a gland along a drawn line: the line's pixels become background, each side of the
// line keeps or gets an id (the largest side keeps the gland's), crumbs join the side they touch.
function splitAlong(points, id = state.selected) {
  if (!state.labels) return refuse("open an image first");
  if (points.length < 2) return refuse("draw a line across the gland to split it");
  const cells = L.linePixels(mask(), points);
  if (!id) {  // the gland the line crosses most
    id = L.glandUnder(state.labels, cells);
    if (!id) return refuse("the line does not cross a gland: draw it across the gland you want to split");
  }
  if (!hasGland(id)) return refuse(`gland ${id} is not in the mask`);
  const result = L.splitGland(mask(), id, cells, vocab.max_gland_id);
  if (result.error) return refuse(result.error);
  remember();
  state.labels = result.labels;
  state.accepted.delete(id);
  state.selected = id;
  logOp("split", id, result.made[0]);
  return changed(`gland ${id} split: ${[id, ...result.made].join(", ")}`);
}

// Merge gland ``other`` into ``id``; background pixels between them (4-neighbours of both) join too.
function mergeGlands(id, other) {
  if (!requireGland(id, " to merge into")) return false;
  if (!other) return refuse(`click the gland to merge into gland ${id}`);
  if (!hasGland(other)) return refuse(`gland ${other} is not in the mask`);
  if (other === id) return refuse(`a gland cannot be merged with itself (gland ${id}): click another gland`);
  remember();
  state.labels = L.mergeGlands(mask(), id, other).labels;
  state.accepted.delete(id); state.accepted.delete(other);
  state.selected = id;
  logOp("merge", id, other);
  return changed(`gland ${other} merged into gland ${id}`);
}

function mergeClick(x, y) {
  if (!state.labels) return refuse("open an image first");
  const i = pixelAt(x, y), id = i < 0 ? 0 : state.labels[i];
  if (!state.selected) {
    if (!id) return refuse("click the first gland to merge");
    select(id);
    status(`gland ${id} selected: now click the gland to merge into it`);
    return true;
  }
  if (!id) return refuse(`click a gland to merge into gland ${state.selected}`);
  return mergeGlands(state.selected, id);
}

function fillHoles(id = state.selected) {
  if (!state.labels) return refuse("open an image first");
  if (id && !hasGland(id)) return refuse(`gland ${id} is not in the mask`);
  const result = L.fillHoles(mask(), id ? [id] : [...glandIds()]);
  if (!result.filled) return refuse(id ? `gland ${id} has no holes` : "no gland has holes");
  remember();
  state.labels = result.labels;
  logOp("fill_holes", id || null);
  return changed(`${result.filled} px of holes filled`);
}

// Boundary brush and eraser: act on the selected gland (the brush paints background only;
// on background with nothing selected it paints a new gland, logged as a drawn add).
function beginStroke(x, y) {
  if (!state.labels) return refuse("open an image first");
  const i = pixelAt(x, y), under = i < 0 ? 0 : state.labels[i];
  let id = state.selected, fresh = false;
  if (id && !hasGland(id)) return refuse(`gland ${id} is not in the mask`);
  if (!id && under) { id = under; select(id); }
  if (!id) {
    if (state.tool === "eraser") return refuse("select a gland to erase from (the eraser acts on the selected gland)");
    id = nextId(); fresh = true;
    if (id > vocab.max_gland_id) return refuse(`at most ${vocab.max_gland_id} glands per mask`);
  }
  state.stroke = { id, fresh, before: snapshot(), changed: 0 };
  state.drawing = true; state.last = [x, y];
  strokeSegment([x, y], [x, y]);
  return true;
}

function strokeSegment(a, b) {
  state.stroke.changed += L.strokeSegment(mask(), a, b, state.size / 2, state.stroke.id, state.tool === "eraser");
}

function endStroke() {
  const s = state.stroke;
  state.stroke = null; state.drawing = false;
  if (!s) return;
  if (!s.changed) { status("nothing changed: the brush paints background, the eraser the selected gland"); return; }
  state.undo.push(s.before);
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
  state.redo = [];
  state.accepted.delete(s.id);
  if (s.fresh) { state.selected = s.id; logOp("add_polygon", s.id); }
  else logOp("redraw_boundary", s.id);
  changed(s.fresh ? `gland ${s.id} painted` : `gland ${s.id}: outline ${state.tool === "eraser" ? "erased" : "painted"}`);
}

// ---- saving ----------------------------------------------------------------------------
// Ids are renumbered 1..N in order before saving (as the server stores them).
function compactIds() {
  const { labels, map } = L.compactIds(state.labels);
  if (labels === state.labels) return;
  state.labels = labels;
  state.selected = map.get(state.selected) || 0;
  state.accepted = new Set([...state.accepted].filter((id) => map.has(id)).map((id) => map.get(id)));
  paintOverlay();
}

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
    status(`saved ${state.current.name} as version ${state.current.mask_version}`);
    await loadQueue();
  } catch (e) {
    status("NOT saved: " + e.message, true);
  }
}

// ---- jobs and models -----------------------------------------------------------------
async function refreshModels() {
  const models = await (await api("/api/models")).json();
  const sel = $("models");
  sel.innerHTML = models.length ? "" : "<option>no model yet</option>";
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.version;
    // Scores come only from the project's current validation set, so versions compare.
    const sc = m.scores ? `IoU ${m.scores.iou.toFixed(3)}, F1 ${m.scores.f1.toFixed(3)} on ${m.scores.images} val`
      : "not scored on the current validation set";
    o.textContent = `model v${m.version}${m.active ? " (active)" : ""}: ${sc}`;
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

function toggleHelp(show) { $("help").hidden = show === undefined ? !$("help").hidden : !show; }

function wire() {
  $("login-btn").onclick = () => login($("token").value.trim());
  $("token").onkeydown = (e) => { if (e.key === "Enter") login($("token").value.trim()); };
  $("order").onchange = loadQueue;
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
  $("show-pred").oninput = render;
  $("opacity").oninput = paintOverlay;
  $("retrain").onclick = async () => { await api("/api/train", { method: "POST" }); };
  $("models").onchange = async (e) => { await api(`/api/models/${e.target.value}/activate`, { method: "POST" }); };
  $("export").onclick = async (e) => {
    e.preventDefault();
    const blob = await (await api("/api/export")).blob();
    const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = "pathoseg-export.zip"; a.click();
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
      state.last = [ev.clientX, ev.clientY]; render(); return;
    }
    if (!state.drawing) return;
    const p = screenToImage(ev);
    if (state.tool === "split") { state.line.push(p); render(); return; }
    if (state.stroke) { strokeSegment(state.last, p); state.last = p; paintOverlay(); }
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
    render();
  }, { passive: false });
  window.addEventListener("resize", fitView);
  window.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" && ev.target.type !== "range" && ev.target.type !== "checkbox") return;
    const k = ev.key.toLowerCase();
    if ((ev.ctrlKey || ev.metaKey) && k === "z") { ev.preventDefault(); ev.shiftKey ? redo() : undo(); return; }
    if ((ev.ctrlKey || ev.metaKey) && k === "y") { ev.preventDefault(); redo(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (k === " ") { state.spaceDown = true; ev.preventDefault(); return; }
    const keys = {
      v: () => setTool("select"), c: () => setTool("add"), p: () => setTool("polygon"), x: () => setTool("split"),
      g: () => setTool("merge"), b: () => setTool("brush"), e: () => setTool("eraser"), h: () => setTool("pan"),
      delete: () => deleteGland(), backspace: () => deleteGland(),
      k: () => (ev.shiftKey ? acceptAll() : acceptGland()),
      f: () => fillHoles(), s: () => save(false), a: () => save(true), enter: closePolygon,
      escape: () => { state.polygon = []; state.line = []; toggleHelp(false); if (state.labels) select(0); },
      m: () => { $("show-mask").checked = !$("show-mask").checked; render(); },
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
  splitAlong, mergeGlands, fillHoles, undo, redo,
};
if (state.token) login(state.token);
