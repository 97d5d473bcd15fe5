import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

/**
 * Builds the reference web client into dist/web, which cadenza serves at `/`
 * (src/server/web-ui.ts). Relative asset URLs, so a copy works from any path
 * of any origin; no module-preload polyfill, so every script is a file of
 * its own (CSP script-src 'self', nothing inline).
 */
export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./",
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../dist/web", import.meta.url)),
    emptyOutDir: true,
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    reportCompressedSize: false,
  },
});
