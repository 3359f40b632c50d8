// PNG as the API stores masks: label maps and probabilities read and written exactly (one
// channel, 8 or 16 bit), with the browser's (and Node's) own deflate.
async function inflate(bytes, compress) {
  const stream = new Blob([bytes]).stream().pipeThrough(compress ? new CompressionStream("deflate")
                                                                  : new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// First channel of a non-interlaced PNG (grey, grey+alpha, RGB or RGBA; 8 or 16 bit).
export async function decodePng(buffer) {
  const b = new Uint8Array(buffer), dv = new DataView(buffer);
  let pos = 8, w = 0, h = 0, depth = 0, type = 0, interlace = 0;
  const parts = [];
  while (pos + 8 <= b.length) {
    const len = dv.getUint32(pos), kind = String.fromCharCode(...b.subarray(pos + 4, pos + 8));
    if (kind === "IHDR") {
      w = dv.getUint32(pos + 8); h = dv.getUint32(pos + 12);
      depth = b[pos + 16]; type = b[pos + 17]; interlace = b[pos + 20];
    } else if (kind === "IDAT") parts.push(b.subarray(pos + 8, pos + 8 + len));
    else if (kind === "IEND") break;
    pos += 12 + len;
  }
  const channels = { 0: 1, 2: 3, 4: 2, 6: 4 }[type];
  if (!channels || (depth !== 8 && depth !== 16) || interlace) throw new Error("unsupported PNG");
  const raw = await inflate(new Blob(parts), false);
  const bpp = channels * depth / 8, stride = w * bpp, out = new Uint8Array(h * stride);
  for (let y = 0; y < h; y++) {
    const filter = raw[y * (stride + 1)], src = y * (stride + 1) + 1, row = y * stride, up = row - stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? out[row + x - bpp] : 0, u = y ? out[up + x] : 0, c = x >= bpp && y ? out[up + x - bpp] : 0;
      let v = raw[src + x];
      if (filter === 1) v += a;
      else if (filter === 2) v += u;
      else if (filter === 3) v += (a + u) >> 1;
      else if (filter === 4) {
        const p = a + u - c, pa = Math.abs(p - a), pb = Math.abs(p - u), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? u : c;
      }
      out[row + x] = v & 255;
    }
  }
  const values = depth === 16 ? new Uint16Array(w * h) : new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) values[i] = depth === 16 ? (out[i * bpp] << 8) | out[i * bpp + 1] : out[i * bpp];
  return { w, h, values };
}

const CRC = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const x of bytes) c = CRC[(c ^ x) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A one-channel PNG of the label map: 8-bit when every id fits, else 16-bit.
export async function encodeLabelPng(labels, w, h) {
  let top = 0;
  for (const v of labels) if (v > top) top = v;
  const deep = top > 255, bpp = deep ? 2 : 1, stride = w * bpp, raw = new Uint8Array(h * (stride + 1));
  for (let y = 0; y < h; y++) {
    const row = y * (stride + 1) + 1;  // filter byte 0: none
    for (let x = 0; x < w; x++) {
      const v = labels[y * w + x];
      if (deep) { raw[row + 2 * x] = v >> 8; raw[row + 2 * x + 1] = v & 255; } else raw[row + x] = v;
    }
  }
  const chunk = (kind, data) => {
    const out = new Uint8Array(12 + data.length), dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = kind.charCodeAt(i);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const head = new Uint8Array(13), hv = new DataView(head.buffer);
  hv.setUint32(0, w); hv.setUint32(4, h); head[8] = deep ? 16 : 8;  // colour type 0 (grey), no interlace
  const png = new Blob([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", head),
    chunk("IDAT", await inflate(raw, true)), chunk("IEND", new Uint8Array(0))]);
  return new Uint8Array(await png.arrayBuffer());
}

