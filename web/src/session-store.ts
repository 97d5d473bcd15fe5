/** The session the page signed in with, kept for the tab's life (sessionStorage), per server. */
export interface StoredSession {
  readonly userId: string;
  readonly token: string;
}

export interface SessionStore {
  load(): StoredSession | undefined;
  save(session: StoredSession): void;
  clear(): void;
}

/**
 * sessionStorage rather than localStorage: the session ends with the tab, and
 * other tabs of the origin never see it.
 */
export function sessionStore(storage: Storage, server: string): SessionStore {
  const key = `cadenza.session ${server}`;
  return {
    load() {
      try {
        const parsed: unknown = JSON.parse(storage.getItem(key) ?? "null");
        if (
          typeof parsed === "object" &&
          parsed !== null &&
          typeof (parsed as StoredSession).userId === "string" &&
          typeof (parsed as StoredSession).token === "string"
        ) {
          return {
            userId: (parsed as StoredSession).userId,
            token: (parsed as StoredSession).token,
          };
        }
      } catch {
        // Unreadable: as if there were none.
      }
      return undefined;
    },
    save: (session) => storage.setItem(key, JSON.stringify(session)),
    clear: () => storage.removeItem(key),
  };
}
