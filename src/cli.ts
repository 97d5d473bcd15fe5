import { runCli } from "./admin-cli.js";

/** `npm run cli -- <command>` (in the image, `node dist/cli.js <command>`): see src/admin-cli.ts. */
runCli(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    // runCli reports every failure itself; this is a bug in it.
    process.stderr.write(`cadenza: ${String(err)}\n`);
    process.exit(1);
  },
);
