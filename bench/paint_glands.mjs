// The editor's glands layer repaint (src/pathoseg/server/web/overlay.js paintGlands) on a
// 2048 x 2048 tile of ~290 glands, against the version at a baseline commit, in one run:
//   node bench/paint_glands.mjs [BASELINE_COMMIT]      (default fde78f4, before the per-id tables)
// Prints the median ms of a full repaint for both, and of a brush segment's partial repaint.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const baseline = process.argv[2] || "fde78f4";
const dir = mkdtempSync(join(tmpdir(), "paint-"));
writeFileSync(join(dir, "overlay.js"),
  execFileSync("git", ["show", `${baseline}:src/pathoseg/server/web/overlay.js`], { cwd: root }));
const before = await import(join(dir, "overlay.js"));
const now = await import(join(root, "src/pathoseg/server/web/overlay.js"));

const w = 2048, h = 2048, labels = new Uint16Array(w * h);
let id = 0;  // ellipses of about a GlaS gland's size on a grid
for (let cy = 60; cy < h; cy += 120) {
  for (let cx = 60; cx < w; cx += 120) {
    id++;
    for (let y = cy - 45; y < cy + 45; y++) {
      for (let x = cx - 55; x < cx + 55; x++) if (((x - cx) / 55) ** 2 + ((y - cy) / 45) ** 2 < 1) labels[y * w + x] = id;
    }
  }
}
const rgba = new Uint8ClampedArray(w * h * 4), accepted = new Set([...Array(100).keys()].map((k) => k + 1));
const median = (f, n) => {
  const t = [];
  for (let k = 0; k < n; k++) { const s = performance.now(); f(); t.push(performance.now() - s); }
  return t.sort((a, b) => a - b)[n >> 1];
};
const opts = { accepted, selected: 5 };
const full0 = median(() => before.paintGlands(rgba, { labels, w, h }, opts), 7);
const full1 = median(() => now.paintGlands(rgba, { labels, w, h }, opts), 7);
const part = median(() => now.paintGlands(rgba, { labels, w, h }, { ...opts, rect: [500, 500, 530, 530] }), 51);
console.log(`${id} glands on ${w} x ${h}: full repaint ${full0.toFixed(1)} ms at ${baseline}, ${full1.toFixed(1)} ms now; ` +
  `a brush segment's box ${part.toFixed(2)} ms`);
