// The gland edits of the open image: each checks its input, says why when it cannot (and then
// changes nothing), is undoable and appends to the operation log saved with the mask. The
// operations themselves are labels.js; this holds the editor's state around them. ``ui``:
// status, refuse, vocab (the server's vocabulary), paintOverlay, render, setTool.
import * as L from "./labels.js";

const ADD_THRESHOLD = 0.3;  // one-click add: the model's probability region above this
const UNDO_DEPTH = 40;

export function createEdits(state, ui) {
  const mask = () => ({ labels: state.labels, w: state.w, h: state.h });
  const glandIds = () => L.glandIds(state.labels);
  const hasGland = (id) => L.hasGland(state.labels, id, ui.vocab().max_gland_id);
  const nextId = () => L.nextId(state.labels);
  const area = (id) => L.area(state.labels, id);


  // ---- undo, log -------------------------------------------------------------------------
  function snapshot() {
    return { labels: state.labels.slice(), accepted: [...state.accepted], edited: [...state.edited], selected: state.selected };
  }

  function restore(s) {
    state.labels = s.labels; state.accepted = new Set(s.accepted); state.edited = new Set(s.edited);
    state.selected = s.selected;
  }

  function remember() {
    state.undo.push(snapshot());
    if (state.undo.length > UNDO_DEPTH) state.undo.shift();
    state.redo = [];
  }

  function logOp(type, gland = null, other = null) {
    if (!ui.vocab().operations.includes(type)) throw new Error(`the server does not know the operation ${type}`);
    const entry = { type, timestamp: new Date().toISOString(), gland };
    if (other != null) entry.other = other;
    state.log.push(entry);
    state.dirty = true;
  }

  function undo() {
    if (!state.labels) return;
    if (!state.undo.length) { ui.refuse("nothing to undo"); return; }
    state.redo.push(snapshot());
    restore(state.undo.pop());
    logOp("undo");
    ui.paintOverlay();
    ui.status("undone");
  }

  function redo() {
    if (!state.labels) return;
    if (!state.redo.length) { ui.refuse("nothing to redo"); return; }
    state.undo.push(snapshot());
    restore(state.redo.pop());
    logOp("redo");
    ui.paintOverlay();
    ui.status("redone");
  }

  // An edit done: repaint, say so, and note how long the editor took from the input event to
  // the repainted layer (state.timings: what a pathologist waits for; the UI benchmark reads it).
  function changed(message) {
    ui.paintOverlay();
    ui.status(message);
    const last = state.log[state.log.length - 1];
    if (last && state.eventAt) {
      state.timings.push({ type: last.type, ms: performance.now() - state.eventAt });
      if (state.timings.length > 1000) state.timings.shift();
    }
    return true;
  }

  // ---- gland operations (each checks its input, says why when it cannot, changes nothing then)
  function requireGland(id, what = "") {
    if (!state.labels) return ui.refuse("open an image first");
    if (!id) return ui.refuse(`select a gland${what} first (click it with the select tool, V)`);
    if (!hasGland(id)) return ui.refuse(`gland ${id} is not in the mask`);
    return true;
  }

  function pixelAt(x, y) {
    const px = Math.floor(x), py = Math.floor(y);
    if (!(px >= 0 && py >= 0 && px < state.w && py < state.h)) return -1;
    return py * state.w + px;
  }

  function select(id) {
    if (!state.labels) return ui.refuse("open an image first");
    if (id && !hasGland(id)) return ui.refuse(`gland ${id} is not in the mask`);
    state.selected = id || 0;
    ui.paintOverlay();
    ui.status(id ? `gland ${id} selected (${area(id)} px${state.accepted.has(id) ? ", accepted" : ""})` : "nothing selected");
    return true;
  }

  function selectAt(x, y) {
    const i = pixelAt(x, y);
    return select(i < 0 ? 0 : state.labels[i]);
  }

  // The Delete key: the first press names what a second would delete; Shift+Delete at once.
  const DELETE_CONFIRM_MS = 3000;
  function deleteKey(now) {
    if (!requireGland(state.selected, " to delete")) return;
    const armed = state.deleteArmed === state.selected && performance.now() - state.deleteArmedAt < DELETE_CONFIRM_MS;
    if (now || armed) { state.deleteArmed = 0; deleteGland(); return; }
    state.deleteArmed = state.selected; state.deleteArmedAt = performance.now();
    ui.status(`press Delete again to delete gland ${state.selected} (Shift+Delete deletes at once)`);
  }

  function deleteGland(id = state.selected) {
    if (!requireGland(id, " to delete")) return false;
    remember();
    state.labels = L.deleteGland(state.labels, id).labels;
    state.accepted.delete(id); state.edited.delete(id);
    if (state.selected === id) state.selected = 0;
    logOp("delete", id);
    return changed(`gland ${id} deleted`);
  }

  function acceptGland(id = state.selected) {
    if (!requireGland(id, " to accept (Shift+K accepts all)")) return false;
    if (state.accepted.has(id)) return ui.refuse(`gland ${id} is accepted already`);
    remember();
    state.accepted.add(id);
    logOp("accept", id);
    return changed(`gland ${id} accepted`);
  }

  function acceptAll() {
    if (!state.labels) return ui.refuse("open an image first");
    const ids = glandIds();
    if (!ids.size) return ui.refuse("there are no glands to accept");
    remember();
    ids.forEach((id) => state.accepted.add(id));
    logOp("accept_all");
    return changed(`all ${ids.size} glands accepted`);
  }

  function newGland(region, type, message) {
    const id = nextId();
    if (id > ui.vocab().max_gland_id) return ui.refuse(`at most ${ui.vocab().max_gland_id} glands per mask`);
    remember();
    state.labels = L.paintRegion(state.labels, region, id);
    state.selected = id;
    state.edited.add(id);
    logOp(type, id);
    return changed(message(id));
  }

  // One click: the connected region of the model's probability above 0.3 around the click
  // (over background only, its enclosed holes filled); where the model sees nothing, a polygon.
  function addClick(x, y) {
    if (!state.labels) return ui.refuse("open an image first");
    const start = pixelAt(x, y);
    if (start < 0) return ui.refuse("click inside the image to add a gland");
    if (state.labels[start]) return ui.refuse(`there is a gland here already (gland ${state.labels[start]}); `
                                           + "select it, or delete it first");
    const cut = Math.floor(ADD_THRESHOLD * 255) + 1;  // probability x 255 above 0.3
    if (!state.prob || state.prob[start] < cut) {
      ui.setTool("polygon");
      const why = state.prob ? `the model sees no gland here (probability ${(state.prob[start] / 255).toFixed(2)} `
                               + `<= ${ADD_THRESHOLD})` : "there is no model prediction for this image";
      return ui.refuse(`${why}: draw a polygon around the gland instead (click its outline, Enter closes)`);
    }
    const { region, n } = L.clickRegion(mask(), state.prob, start, cut);
    if (n > state.labels.length / 2) {
      ui.setTool("polygon");
      return ui.refuse("the model's region here covers most of the image: draw a polygon around the gland instead");
    }
    return newGland(region, "add_click", (id) => `gland ${id} added (${area(id)} px, from the model at ${ADD_THRESHOLD})`);
  }

  // A polygon: pixels whose centre lies inside (even-odd), background only.
  function addPolygon(points) {
    if (!state.labels) return ui.refuse("open an image first");
    if (points.length < 3) return ui.refuse("a polygon needs at least 3 points");
    const { region, n } = L.polygonRegion(mask(), points);
    if (!n) return ui.refuse("the polygon covers no background: glands do not overlap");
    return newGland(region, "add_polygon", (id) => `gland ${id} added (${n} px, drawn)`);
  }

  function closePolygon() {
    const points = state.polygon;
    state.polygon = [];
    if (points.length) addPolygon(points);
    ui.render();
  }

  // Split a gland along a drawn line: the line's pixels become background, each side of the
  // line keeps or gets an id (the largest side keeps the gland's), crumbs join the side they touch.
  function splitAlong(points, id = state.selected) {
    if (!state.labels) return ui.refuse("open an image first");
    if (points.length < 2) return ui.refuse("draw a line across the gland to split it");
    const cells = L.linePixels(mask(), points);
    if (!id) {  // the gland the line crosses most
      id = L.glandUnder(state.labels, cells);
      if (!id) return ui.refuse("the line does not cross a gland: draw it across the gland you want to split");
    }
    if (!hasGland(id)) return ui.refuse(`gland ${id} is not in the mask`);
    const result = L.splitGland(mask(), id, cells, ui.vocab().max_gland_id);
    if (result.error) return ui.refuse(result.error);
    remember();
    state.labels = result.labels;
    state.accepted.delete(id);
    [id, ...result.made].forEach((g) => state.edited.add(g));
    state.selected = id;
    logOp("split", id, result.made[0]);
    return changed(`gland ${id} split: ${[id, ...result.made].join(", ")}`);
  }

  // Merge gland ``other`` into ``id``; background pixels between them (4-neighbours of both) join too.
  function mergeGlands(id, other) {
    if (!requireGland(id, " to merge into")) return false;
    if (!other) return ui.refuse(`click the gland to merge into gland ${id}`);
    if (!hasGland(other)) return ui.refuse(`gland ${other} is not in the mask`);
    if (other === id) return ui.refuse(`a gland cannot be merged with itself (gland ${id}): click another gland`);
    remember();
    state.labels = L.mergeGlands(mask(), id, other).labels;
    state.accepted.delete(id); state.accepted.delete(other);
    state.edited.delete(other); state.edited.add(id);
    state.selected = id;
    logOp("merge", id, other);
    return changed(`gland ${other} merged into gland ${id}`);
  }

  function mergeClick(x, y) {
    if (!state.labels) return ui.refuse("open an image first");
    const i = pixelAt(x, y), id = i < 0 ? 0 : state.labels[i];
    if (!state.selected) {
      if (!id) return ui.refuse("click the first gland to merge");
      select(id);
      ui.status(`gland ${id} selected: now click the gland to merge into it`);
      return true;
    }
    if (!id) return ui.refuse(`click a gland to merge into gland ${state.selected}`);
    return mergeGlands(state.selected, id);
  }

  function fillHoles(id = state.selected) {
    if (!state.labels) return ui.refuse("open an image first");
    if (id && !hasGland(id)) return ui.refuse(`gland ${id} is not in the mask`);
    const result = L.fillHoles(mask(), id ? [id] : [...glandIds()]);
    if (!result.filled) return ui.refuse(id ? `gland ${id} has no holes` : "no gland has holes");
    remember();
    state.labels = result.labels;
    result.ids.forEach((g) => state.edited.add(g));
    logOp("fill_holes", id || null);
    return changed(`${result.filled} px of holes filled`);
  }

  // Boundary brush and eraser: act on the selected gland (the brush paints background only;
  // on background with nothing selected it paints a new gland, logged as a drawn add).
  function beginStroke(x, y) {
    if (!state.labels) return ui.refuse("open an image first");
    const i = pixelAt(x, y), under = i < 0 ? 0 : state.labels[i];
    let id = state.selected, fresh = false;
    if (id && !hasGland(id)) return ui.refuse(`gland ${id} is not in the mask`);
    if (!id && under) { id = under; select(id); }
    if (!id) {
      if (state.tool === "eraser") return ui.refuse("select a gland to erase from (the eraser acts on the selected gland)");
      id = nextId(); fresh = true;
      if (id > ui.vocab().max_gland_id) return ui.refuse(`at most ${ui.vocab().max_gland_id} glands per mask`);
    }
    state.stroke = { id, fresh, before: snapshot(), changed: 0 };
    state.drawing = true; state.last = [x, y];
    strokeSegment([x, y], [x, y]);
    return true;
  }

  // Paint (or erase) along a -> b; returns the box it may have changed, for a partial repaint
  // (exclusive on the right and bottom: + 1 past the last pixel labels.strokeSegment may paint).
  function strokeSegment(a, b) {
    const r = state.size / 2;
    state.stroke.changed += L.strokeSegment(mask(), a, b, r, state.stroke.id, state.tool === "eraser");
    return [Math.min(a[0], b[0]) - r, Math.min(a[1], b[1]) - r, Math.max(a[0], b[0]) + r + 1, Math.max(a[1], b[1]) + r + 1];
  }

  function endStroke() {
    const s = state.stroke;
    state.stroke = null; state.drawing = false;
    if (!s) return;
    if (!s.changed) { ui.status("nothing changed: the brush paints background, the eraser the selected gland"); return; }
    state.undo.push(s.before);
    if (state.undo.length > UNDO_DEPTH) state.undo.shift();
    state.redo = [];
    state.accepted.delete(s.id);
    state.edited.add(s.id);
    if (s.fresh) { state.selected = s.id; logOp("add_polygon", s.id); }
    else logOp("redraw_boundary", s.id);
    changed(s.fresh ? `gland ${s.id} painted` : `gland ${s.id}: outline ${state.tool === "eraser" ? "erased" : "painted"}`);
  }

  // Ids are renumbered 1..N in order before saving (as the server stores them).
  function compactIds() {
    const { labels, map } = L.compactIds(state.labels);
    if (labels === state.labels) return;
    state.labels = labels;
    state.selected = map.get(state.selected) || 0;
    const renumber = (ids) => new Set([...ids].filter((id) => map.has(id)).map((id) => map.get(id)));
    state.accepted = renumber(state.accepted); state.edited = renumber(state.edited);
    ui.paintOverlay();
  }

  return { acceptAll, acceptGland, addClick, addPolygon, beginStroke, changed, closePolygon, compactIds, deleteGland, deleteKey, endStroke, fillHoles, logOp, mergeClick, mergeGlands, newGland, pixelAt, redo, remember, requireGland, restore, select, selectAt, snapshot, splitAlong, strokeSegment, undo };
}
