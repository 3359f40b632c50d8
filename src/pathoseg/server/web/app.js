// pathoseg review UI: talks only to the REST API (/api, see /docs for the schema).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: localStorage.getItem("pathoseg-token") || "",
  images: [], current: null, tool: "brush", size: 12,
  img: null, mask: null, maskCtx: null, pred: null,
  zoom: 1, ox: 0, oy: 0, undo: [], redo: [], polygon: [],
  ops: {}, openedAt: 0, drawing: false, last: null, panning: false, spaceDown: false,
};

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return res;
}

function status(text) { $("status-line").textContent = text; }

// ---- login ---------------------------------------------------------------------------
async function login(token) {
  state.token = token;
  try {
    const me = await (await api("/api/users/me")).json();
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

async function openImage(id) {
  const info = await (await api(`/api/images/${id}`)).json();
  state.current = info;
  state.img = await loadImage(`/api/images/${id}/image.png`);
  const maskImg = await loadImage(`/api/images/${id}/mask.png`);
  state.mask = document.createElement("canvas");
  state.mask.width = info.width; state.mask.height = info.height;
  state.maskCtx = state.mask.getContext("2d", { willReadFrequently: true });
  state.maskCtx.drawImage(maskImg, 0, 0);
  binarise();
  state.pred = null;
  api(`/api/images/${id}/prediction.png`).then((r) => r.blob()).then((b) => {
    const p = new Image(); p.onload = () => { state.pred = p; render(); }; p.src = URL.createObjectURL(b);
  }).catch(() => {});
  state.undo = []; state.redo = []; state.polygon = []; state.ops = {};
  state.openedAt = performance.now();
  fitView();
  document.querySelectorAll("#queue-list li").forEach((li) => li.classList.toggle("current", +li.dataset.id === id));
  status(`${info.name} — ${info.width}x${info.height}, ${info.status}, mask version ${info.mask_version}`);
  $("view").focus();
}

// Mask pixels: opaque green where gland, transparent elsewhere.
function binarise() {
  const d = state.maskCtx.getImageData(0, 0, state.mask.width, state.mask.height);
  for (let i = 0; i < d.data.length; i += 4) {
    const on = Math.max(d.data[i], d.data[i + 1]) > 127 && d.data[i + 3] > 127;  // white (loaded) or green (painted)
    d.data[i] = 0; d.data[i + 1] = on ? 255 : 0; d.data[i + 2] = 0; d.data[i + 3] = on ? 255 : 0;
  }
  state.maskCtx.putImageData(d, 0, 0);
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
  if ($("show-mask").checked) {
    ctx.globalAlpha = $("opacity").value / 100;
    ctx.drawImage(state.mask, 0, 0);
    ctx.globalAlpha = 1;
  }
  if ($("show-pred").checked && state.pred) {
    ctx.globalAlpha = 0.35;
    ctx.globalCompositeOperation = "screen";
    ctx.drawImage(state.pred, 0, 0);
    ctx.globalCompositeOperation = "source-over";
    ctx.globalAlpha = 1;
  }
  if (state.polygon.length) {
    ctx.strokeStyle = "#ffeb3b"; ctx.lineWidth = 1.5 / state.zoom;
    ctx.beginPath();
    state.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
  }
}

// ---- editing -------------------------------------------------------------------------
function snapshot() {
  state.undo.push(state.maskCtx.getImageData(0, 0, state.mask.width, state.mask.height));
  if (state.undo.length > 30) state.undo.shift();
  state.redo = [];
}

function count(op) { state.ops[op] = (state.ops[op] || 0) + 1; }

function stroke(from, to) {
  const ctx = state.maskCtx;
  ctx.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "rgb(0,255,0)";
  ctx.lineWidth = state.size; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(from[0], from[1]); ctx.lineTo(to[0], to[1]); ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
}

function closePolygon() {
  if (state.polygon.length >= 3) {
    snapshot();
    const ctx = state.maskCtx;
    ctx.fillStyle = "rgb(0,255,0)";
    ctx.beginPath();
    state.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath(); ctx.fill();
    binarise();
    count("polygon");
  }
  state.polygon = [];
  render();
}

function fillHoles() {
  snapshot();
  const w = state.mask.width, h = state.mask.height;
  const d = state.maskCtx.getImageData(0, 0, w, h);
  const outside = new Uint8Array(w * h), stack = [];
  const push = (i) => { if (!outside[i] && d.data[4 * i + 3] === 0) { outside[i] = 1; stack.push(i); } };
  for (let x = 0; x < w; x++) { push(x); push((h - 1) * w + x); }
  for (let y = 0; y < h; y++) { push(y * w); push(y * w + w - 1); }
  while (stack.length) {
    const i = stack.pop(), x = i % w;
    if (x > 0) push(i - 1);
    if (x < w - 1) push(i + 1);
    if (i >= w) push(i - w);
    if (i < w * (h - 1)) push(i + w);
  }
  for (let i = 0; i < w * h; i++) {
    if (!outside[i] && d.data[4 * i + 3] === 0) { d.data[4 * i + 1] = 255; d.data[4 * i + 3] = 255; }
  }
  state.maskCtx.putImageData(d, 0, 0);
  count("fill_holes");
  render();
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(state.maskCtx.getImageData(0, 0, state.mask.width, state.mask.height));
  state.maskCtx.putImageData(state.undo.pop(), 0, 0);
  count("undo"); render();
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(state.maskCtx.getImageData(0, 0, state.mask.width, state.mask.height));
  state.maskCtx.putImageData(state.redo.pop(), 0, 0);
  render();
}

function maskPngBase64() {
  const w = state.mask.width, h = state.mask.height;
  const src = state.maskCtx.getImageData(0, 0, w, h);
  const out = document.createElement("canvas"); out.width = w; out.height = h;
  const octx = out.getContext("2d"), o = octx.createImageData(w, h);
  for (let i = 0; i < src.data.length; i += 4) {
    const v = src.data[i + 3] > 127 ? 255 : 0;
    o.data[i] = o.data[i + 1] = o.data[i + 2] = v; o.data[i + 3] = 255;
  }
  octx.putImageData(o, 0, 0);
  return out.toDataURL("image/png").split(",")[1];
}

async function save(approve) {
  if (!state.current) return;
  const body = {
    png_base64: maskPngBase64(), base_version: state.current.mask_version,
    // the API keeps at most a day per save: a tab left open over a weekend still saves
    seconds: Math.min(86400, (performance.now() - state.openedAt) / 1000), operations: state.ops, approve,
  };
  try {
    const res = await api(`/api/images/${state.current.id}/mask`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    state.current = await res.json();
    state.ops = {}; state.openedAt = performance.now();
    status(`saved ${state.current.name} as version ${state.current.mask_version}`);
    await loadQueue();
  } catch (e) {
    status("NOT saved: " + e.message);
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
    o.textContent = `model v${m.version} (val IoU ${m.val_iou == null ? "?" : m.val_iou.toFixed(3)})`;
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
function setTool(tool) {
  state.tool = tool;
  document.querySelectorAll("#toolbar [data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
}

function wire() {
  $("login-btn").onclick = () => login($("token").value.trim());
  $("token").onkeydown = (e) => { if (e.key === "Enter") login($("token").value.trim()); };
  $("order").onchange = loadQueue;
  document.querySelectorAll("#toolbar [data-tool]").forEach((b) => (b.onclick = () => setTool(b.dataset.tool)));
  $("size").oninput = (e) => (state.size = +e.target.value);
  $("fill").onclick = fillHoles;
  $("undo").onclick = undo;
  $("redo").onclick = redo;
  $("submit").onclick = () => save(false);
  $("approve").onclick = () => save(true);
  ["show-mask", "opacity", "show-pred"].forEach((id) => ($(id).oninput = render));
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
      try { await api("/api/images", { method: "POST", body: fd }); } catch (err) { status(`${f.name}: ${err.message}`); }
    }
    await loadQueue();
  };

  const c = $("view");
  c.addEventListener("mousedown", (ev) => {
    if (!state.img) return;
    const p = screenToImage(ev);
    if (state.tool === "pan" || state.spaceDown || ev.button !== 0) {
      state.panning = true; state.last = [ev.clientX, ev.clientY]; return;
    }
    if (state.tool === "polygon") { state.polygon.push(p); render(); return; }
    snapshot();
    state.drawing = true; state.last = p;
    stroke(p, p); count(state.tool); render();
  });
  c.addEventListener("mousemove", (ev) => {
    if (state.panning) {
      state.ox += ev.clientX - state.last[0]; state.oy += ev.clientY - state.last[1];
      state.last = [ev.clientX, ev.clientY]; render(); return;
    }
    if (!state.drawing) return;
    const p = screenToImage(ev);
    stroke(state.last, p); state.last = p; render();
  });
  window.addEventListener("mouseup", () => {
    if (state.drawing) binarise();
    state.drawing = false; state.panning = false; render();
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
    if (k === " ") { state.spaceDown = true; return; }
    const keys = { b: () => setTool("brush"), e: () => setTool("eraser"), p: () => setTool("polygon"), h: () => setTool("pan"),
      f: fillHoles, s: () => save(false), a: () => save(true), enter: closePolygon, escape: () => { state.polygon = []; render(); },
      m: () => { $("show-mask").checked = !$("show-mask").checked; render(); },
      "[": () => { state.size = Math.max(1, state.size - 2); $("size").value = state.size; },
      "]": () => { state.size = Math.min(60, state.size + 2); $("size").value = state.size; } };
    if (keys[k]) { ev.preventDefault(); keys[k](); }
  });
  window.addEventListener("keyup", (ev) => { if (ev.key === " ") state.spaceDown = false; });
}

wire();
setTool("brush");
window.pathoseg = { state, imageToScreen, openImage, login };
if (state.token) login(state.token);
