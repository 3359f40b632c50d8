// The canvas: the image, the glands layer and the heat map (overlay.js), badges, and where the
// view looks (fit, zoom to a gland, screen <-> image coordinates). ``ui``: status, requireGland.
import * as L from "./labels.js";
import * as O from "./overlay.js";

const $ = (id) => document.getElementById(id);

export function createView(state, ui) {
  const mask = () => ({ labels: state.labels, w: state.w, h: state.h });

  // The mask layer (overlay.js): each gland in its own colour, unreviewed outlines dashed,
  // accepted and edited ones solid with a badge, the selected gland's outline yellow.
  // ``rect`` [x0, y0, x1, y1): only that part changed (a brush stroke's segment); badges stay put.
  function paintOverlay(rect = null) {
    if (!state.labels) return;
    const opts = { selected: state.selected, accepted: state.accepted, edited: state.edited,
      fill: Math.round(($("opacity").value / 100) * 255) };
    if (rect) {
      O.paintGlands(state.overlayData.data, mask(), { ...opts, rect });
      const [x0, y0, x1, y1] = O.clipRect(rect, state.w, state.h);
      state.overlayCtx.putImageData(state.overlayData, 0, 0, x0, y0, x1 - x0, y1 - y0);
      renderSoon();
    } else {
      state.centres = O.paintGlands(state.overlayData.data, mask(), opts);
      state.overlayCtx.putImageData(state.overlayData, 0, 0);
      render();
    }
  }

  // Render at the next frame, once however often asked before it: a moving mouse (a stroke, a
  // cut line, a pan) sends more events than the screen shows frames, and on a 2048 x 2048 tile
  // a render per event would fall behind the hand.
  let frame = 0;
  function renderSoon() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  // Badges of reviewed glands, drawn at their centres in screen pixels (a fixed size at any zoom).
  function drawBadges(ctx) {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.textAlign = "center"; ctx.textBaseline = "middle";
    for (const [id, [x, y]] of Object.entries(state.centres)) {
      const s = O.reviewState(+id, state.accepted, state.edited);
      if (s === O.UNREVIEWED) continue;
      const sx = state.ox + x * state.zoom, sy = state.oy + y * state.zoom;
      ctx.fillStyle = "#fffffff0";
      ctx.beginPath(); ctx.arc(sx, sy, 8, 0, 2 * Math.PI); ctx.fill();
      ctx.fillStyle = s === O.ACCEPTED ? "#1b5e20" : "#0d47a1";
      ctx.fillText(s === O.ACCEPTED ? "\u2713" : "\u270E", sx, sy + 1);
    }
  }

  function resizeCanvas() {
    const c = $("view"), wrap = $("canvas-wrap");
    c.width = wrap.clientWidth; c.height = wrap.clientHeight;  // canvas pixels == CSS pixels
  }

  function setView(view) { Object.assign(state, view); render(); }

  // The whole image in the view (button Fit, key 0).
  function fit() {
    if (!state.img) return;
    const c = $("view");
    setView(O.viewOf([0, 0, state.img.width, state.img.height], c.width, c.height));
  }

  // The selected gland filling most of the view, with some tissue around it (button Zoom, key Z).
  function zoomToGland(id = state.selected) {
    if (!ui.requireGland(id, " to zoom to")) return false;
    const box = L.bbox(mask(), (i) => state.labels[i] === id);
    const c = $("view");
    setView(O.viewOf([box[0], box[1], box[2] + 1, box[3] + 1], c.width, c.height, 0.25, 8));
    ui.status(`zoomed to gland ${id}; 0 fits the image again`);
    return true;
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
    if ($("show-pred").checked && state.predCanvas) ctx.drawImage(state.predCanvas, 0, 0);  // the heat map
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
    if ($("show-mask").checked) drawBadges(ctx);
  }

  return { drawBadges, fit, imageToScreen, paintOverlay, render, renderSoon, resizeCanvas, screenToImage, setView,
    zoomToGland };
}
