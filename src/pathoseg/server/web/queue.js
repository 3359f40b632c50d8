// The review queue as functions of the image list the API returns (GET /api/images, in the
// chosen order): what the filter shows, the progress line, the next image to review.
// Unit tests: tests/web/queue.test.mjs.

// Filters of the queue: every image, those still to review, or one status.
export const FILTERS = {
  all: () => true,
  todo: (im) => im.status === "new" || im.status === "predicted",
  corrected: (im) => im.status === "corrected",
  approved: (im) => im.status === "approved",
  flagged: (im) => Boolean(im.flag),
};

export function visible(images, filter = "all") {
  return images.filter(FILTERS[filter] || FILTERS.all);
}

export function progress(images) {
  const n = images.length, approved = images.filter((im) => im.status === "approved").length;
  const corrected = images.filter((im) => im.status === "corrected").length;
  return { n, approved, corrected, text: `${approved} of ${n} approved` + (corrected ? `, ${corrected} saved` : "") };
}

// The image ``step`` places after (or before, step -1) ``currentId`` among ``images``; with
// ``unfinished``, the nearest one after it that still needs review (not approved, not flagged),
// wrapping around; null when there is none.
export function neighbour(images, currentId, step = 1, unfinished = false) {
  const n = images.length;
  if (!n) return null;
  const at = images.findIndex((im) => im.id === currentId);
  for (let k = 1; k <= n; k++) {
    const i = at < 0 ? (step > 0 ? k - 1 : n - k) : at + step * k;
    if (!unfinished && (i < 0 || i >= n)) return null;
    const im = images[((i % n) + n) % n];
    if (im.id === currentId) return null;
    if (!unfinished || (im.status !== "approved" && !im.flag)) return im;
  }
  return null;
}

// The badge text of an image in the queue.
export function badge(im) {
  if (im.predicting) return "predicting";
  const u = im.uncertainty == null ? "" : " " + im.uncertainty.toFixed(2);
  return im.status + u;
}
