import type { WebSocket } from "ws";

/**
 * Keeps an hRPC WebSocket honest: pings it every `intervalMs` and terminates
 * it when the previous ping went unanswered, so a peer that vanished without
 * closing does not hold a stream (and its socket) forever. Returns the stop
 * function; the socket's close stops it too.
 */
export function startPinger(ws: WebSocket, intervalMs: number): () => void {
  let answered = true;
  const onPong = (): void => {
    answered = true;
  };
  ws.on("pong", onPong);
  const timer = setInterval(() => {
    if (!answered) {
      ws.terminate();
      return;
    }
    answered = false;
    ws.ping();
  }, intervalMs);
  const stop = (): void => {
    clearInterval(timer);
    ws.off("pong", onPong);
  };
  ws.once("close", stop);
  return stop;
}
