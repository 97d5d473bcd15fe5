// Records the mode every file and folder under a root is created with, as the
// kernel applies it (the mode asked for, less the umask at that moment).
// PGlite's Emscripten NODEFS creates them with these three calls. CommonJS, so
// that a child process (cadenza's initdb) can load it with `node --require`:
// with CADENZA_RECORD_CREATIONS=<root>\n<file> set, it records from the start
// and appends each creation to <file> as a JSON line.
const fs = require("node:fs");

function recordCreations(root, onCreated) {
  const created = [];
  const originals = {
    writeFileSync: fs.writeFileSync,
    mkdirSync: fs.mkdirSync,
    openSync: fs.openSync,
  };
  const note = (path, mode, fallback) => {
    if (typeof path !== "string" || !path.startsWith(root)) return;
    const asked = typeof mode === "number" ? mode : fallback;
    const entry = { path, mode: asked & 0o777 & ~process.umask() };
    created.push(entry);
    onCreated?.(entry, originals);
  };
  fs.writeFileSync = (...args) => {
    note(args[0], args[2]?.mode, 0o666);
    return originals.writeFileSync(...args);
  };
  fs.mkdirSync = (...args) => {
    const options = args[1];
    note(args[0], typeof options === "object" ? options?.mode : options, 0o777);
    return originals.mkdirSync(...args);
  };
  fs.openSync = (...args) => {
    if (args[2] !== undefined) note(args[0], args[2], 0o666);
    return originals.openSync(...args);
  };
  return { created, restore: () => Object.assign(fs, originals) };
}

const wanted = process.env.CADENZA_RECORD_CREATIONS;
if (wanted) {
  const [root, file] = wanted.split("\n");
  recordCreations(root, (entry, originals) => {
    const line = `${JSON.stringify(entry)}\n`;
    const fd = originals.openSync(file, "a");
    fs.writeSync(fd, line);
    fs.closeSync(fd);
  });
}

module.exports = { recordCreations };
