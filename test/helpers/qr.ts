import jsqr from "jsqr";

// A CommonJS module with an ES-style default export: the function is `.default`.
const jsQR = jsqr.default;

/**
 * Reads the text of a QR code drawn as the `qrcode` package draws SVG: one
 * path of `M x y`, `m dx dy` and `h n` commands, each `h` a run of dark
 * modules on the row at y - 0.5. The modules are painted into a bitmap
 * (4 pixels each) and decoded by jsQR, a decoder independent of the encoder.
 */
export function decodeQrSvg(svg: string): string | undefined {
  const size = Number(/viewBox="0 0 (\d+) \d+"/.exec(svg)?.[1]);
  const d = /<path stroke="[^"]+" d="([^"]+)"/.exec(svg)?.[1];
  if (!Number.isInteger(size) || d === undefined) return undefined;
  const scale = 4;
  const width = size * scale;
  const pixels = new Uint8ClampedArray(width * width * 4).fill(255);
  const dark = (mx: number, my: number) => {
    for (let py = my * scale; py < (my + 1) * scale; py++) {
      for (let px = mx * scale; px < (mx + 1) * scale; px++) {
        const i = (py * width + px) * 4;
        pixels[i] = pixels[i + 1] = pixels[i + 2] = 0;
      }
    }
  };
  let x = 0;
  let y = 0;
  for (const [, op, a, b] of d.matchAll(/([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?/g)) {
    const n = Number(a);
    if (op === "M") [x, y] = [n, Number(b)];
    else if (op === "m") [x, y] = [x + n, y + Number(b)];
    else {
      for (let i = 0; i < n; i++) dark(x + i, Math.floor(y));
      x += n;
    }
  }
  return jsQR(pixels, width, width)?.data;
}
