// What the editor draws over the image, as functions of arrays (no page, no state): the glands
// layer (each gland its own colour at all times, its review state by outline style), the
// model-probability heat map and its colour scale. Unit tests: tests/web/overlay.test.mjs.

// Review states of a gland in the open image: the editor's words, drawn differently.
export const UNREVIEWED = "unreviewed", ACCEPTED = "accepted", EDITED = "edited";

// Golden-angle hues: neighbouring ids get far-apart colours, the same id always the same one.
export function colour(id) {
  const hue = (id * 137.508) % 360, s = 0.75, l = 0.5, k = (n) => (n + hue / 30) % 12;
  const f = (n) => l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
  return [Math.round(f(0) * 255), Math.round(f(8) * 255), Math.round(f(4) * 255)];
}

export function reviewState(id, accepted, edited) {
  return edited.has(id) ? EDITED : accepted.has(id) ? ACCEPTED : UNREVIEWED;
}

// Unreviewed glands' outlines are dashed (3 px on, 3 px off along the diagonals): the model's
// proposal, not yet looked at. Accepted and edited outlines are solid (their badges tell which).
const dashed = (x, y) => Math.floor((x + y) / 3) % 2 === 0;

// Paint the glands layer into ``rgba`` (a Uint8ClampedArray of w x h x 4): fills at ``fill``
// (0-255) in the gland's colour, outlines opaque in it (dashed while unreviewed), the selected
// gland's outline yellow. Returns each gland's centre and size, {id: [x, y, n]}, for badges.
export function paintGlands(rgba, { labels, w, h }, { selected = 0, accepted = new Set(), edited = new Set(),
  fill = 51 } = {}) {
  const sums = new Map();
  for (let i = 0; i < labels.length; i++) {
    const id = labels[i], o = 4 * i;
    if (!id) { rgba[o + 3] = 0; continue; }
    const x = i % w, y = (i - x) / w;
    const s = sums.get(id) || [0, 0, 0];
    s[0] += x; s[1] += y; s[2] += 1; sums.set(id, s);
    const edge = x === 0 || x === w - 1 || y === 0 || y === h - 1
      || labels[i - 1] !== id || labels[i + 1] !== id || labels[i - w] !== id || labels[i + w] !== id;
    const c = colour(id);
    if (edge && id === selected) { rgba[o] = 255; rgba[o + 1] = 235; rgba[o + 2] = 59; rgba[o + 3] = 255; }
    else if (edge && (dashed(x, y) || reviewState(id, accepted, edited) !== UNREVIEWED)) {
      rgba[o] = c[0]; rgba[o + 1] = c[1]; rgba[o + 2] = c[2]; rgba[o + 3] = 255;
    } else {
      rgba[o] = c[0]; rgba[o + 1] = c[1]; rgba[o + 2] = c[2];
      rgba[o + 3] = id === selected ? Math.min(255, fill + 50) : fill;
    }
  }
  const centres = {};
  for (const [id, [sx, sy, n]] of sums) centres[id] = [sx / n, sy / n, n];
  return centres;
}

// The heat map's colour scale: dark purple through red to yellow ("inferno"-like, readable on
// H&E's pinks and purples), transparent where the model sees nothing.
const STOPS = [[0, [0, 0, 4]], [0.25, [87, 16, 110]], [0.5, [188, 55, 84]], [0.75, [249, 142, 9]],
  [1, [252, 255, 164]]];

export function heatColour(p) {
  const t = Math.max(0, Math.min(1, p));
  let k = 1;
  while (k < STOPS.length - 1 && STOPS[k][0] < t) k++;
  const [t0, c0] = STOPS[k - 1], [t1, c1] = STOPS[k], f = (t - t0) / (t1 - t0);
  return c0.map((v, j) => Math.round(v + f * (c1[j] - v)));
}

// Opacity of the heat map at probability p: 0 below 0.1, rising to 0.55 at 1, so the tissue
// shows through everywhere (nuclei stay readable) and sure glands stand out.
export const heatAlpha = (p) => (p < 0.1 ? 0 : Math.round(Math.min(0.55, p * 0.55) * 255));

// The heat map of a probability map given as bytes (probability x 255) into ``rgba``.
export function paintHeat(rgba, probBytes) {
  const lut = Array.from({ length: 256 }, (_, v) => [...heatColour(v / 255), heatAlpha(v / 255)]);
  for (let i = 0; i < probBytes.length; i++) {
    const c = lut[probBytes[i]], o = 4 * i;
    rgba[o] = c[0]; rgba[o + 1] = c[1]; rgba[o + 2] = c[2]; rgba[o + 3] = c[3];
  }
}

// The legend's CSS gradient, from the same scale.
export function heatGradient(steps = 8) {
  const stops = Array.from({ length: steps + 1 }, (_, k) => {
    const p = k / steps, [r, g, b] = heatColour(p);
    return `rgba(${r},${g},${b},${(heatAlpha(p) / 255).toFixed(2)}) ${Math.round(p * 100)}%`;
  });
  return `linear-gradient(to right, ${stops.join(", ")})`;
}

// The view {zoom, ox, oy} that shows the box [x0, y0, x1, y1] (image pixels) whole and centred
// in a canvas of cw x ch, with ``pad`` of the box's size around it; never beyond ``maxZoom``.
export function viewOf([x0, y0, x1, y1], cw, ch, pad = 0, maxZoom = Infinity) {
  const bw = (x1 - x0) * (1 + 2 * pad) || 1, bh = (y1 - y0) * (1 + 2 * pad) || 1;
  const zoom = Math.min(cw / bw, ch / bh, maxZoom);
  return { zoom, ox: cw / 2 - ((x0 + x1) / 2) * zoom, oy: ch / 2 - ((y0 + y1) / 2) * zoom };
}
