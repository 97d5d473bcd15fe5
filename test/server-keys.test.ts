import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServerKeyStore } from "../src/db/federation-stores.js";
import { StartupError } from "../src/errors.js";
import { createServerKeys } from "../src/federation/server-keys.js";
import { createFakeClock } from "./helpers/clock.js";
import { backends, type TestDatabase } from "./helpers/databases.js";

describe.each(backends)("server keys on $name", (backend) => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await backend.open();
  });
  afterAll(async () => {
    await database?.close();
  });

  const keys = (kek?: Buffer) =>
    createServerKeys({
      db: database.db,
      clock: createFakeClock(),
      logger: pino({ level: "silent" }),
      keyStore: createServerKeyStore(),
      keyEncryptionKey: kek,
    });
  const rows = async () =>
    (
      await database.db.query<{ id: number; encrypted: boolean; private_key: Uint8Array }>(
        "SELECT id, encrypted, private_key FROM server_keys ORDER BY id",
      )
    ).rows;

  it("creates one key on first start and keeps it across starts", async () => {
    await database.truncate();
    const [first, second] = await Promise.all([keys(), keys()]);
    expect(first?.current().publicKey).toEqual(second?.current().publicKey);
    expect(await rows()).toHaveLength(1);
    await first?.close();
    await second?.close();
  });

  it("encrypts a plain key in place once KEY_ENCRYPTION_KEY is set, and then needs it", async () => {
    await database.truncate();
    const plain = await keys();
    const publicKey = plain.current().publicKey;
    await plain.close();
    expect((await rows())[0]?.encrypted).toBe(false);

    const kek = Buffer.alloc(32, 1);
    const encrypted = await keys(kek);
    expect(encrypted.current().publicKey).toEqual(publicKey);
    await encrypted.close();
    const [row] = await rows();
    expect(row?.encrypted).toBe(true);
    expect(
      Buffer.from(row?.private_key ?? []).includes(Buffer.from(encrypted.current().secretKey)),
    ).toBe(false);

    await expect(keys()).rejects.toThrow(StartupError);
    await expect(keys()).rejects.toThrow(/set KEY_ENCRYPTION_KEY/);
    await expect(keys(Buffer.alloc(32, 2))).rejects.toThrow(/does not decrypt/);
  });

  it("rotates to a new current key", async () => {
    await database.truncate();
    const k = await keys();
    const old = k.current();
    const rotated = await k.rotate();
    expect(rotated.id).toBeGreaterThan(old.id);
    expect(k.current().publicKey).not.toEqual(old.publicKey);
    await k.close();
    const again = await keys();
    expect(again.current().publicKey).toEqual(rotated.publicKey);
    await again.close();
  });
});
