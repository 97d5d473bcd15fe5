import "./style.css";
import { startApp } from "./app.js";
import { clientConfig } from "./client-config.js";
import { createClients } from "./clients.js";
import { sessionStore } from "./session-store.js";

const root = document.getElementById("app");
const status = document.getElementById("status");
const serverLine = document.getElementById("server");
if (!root || !status || !serverLine) throw new Error("index.html lacks #app, #status or #server");

const meta = document.querySelector<HTMLMetaElement>('meta[name="cadenza-server"]');
const result = clientConfig(location.href, meta?.content ?? null);
if (result.ok) {
  serverLine.textContent = `Server: ${result.config.server} (${result.config.protocol})`;
  startApp({
    root,
    status,
    config: result.config,
    clients: createClients(result.config),
    sessions: sessionStore(sessionStorage, result.config.server),
  });
} else {
  const p = document.createElement("p");
  p.className = "problem";
  p.setAttribute("role", "alert");
  p.textContent = result.problem;
  root.replaceChildren(p);
}
