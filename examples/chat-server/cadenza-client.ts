/**
 * How a chat server reaches cadenza's internal port: a Connect client for
 * cadenza.homeserver.v1.HomeserverService with the internal token on every
 * call. (In your own project, generate the client from cadenza's
 * proto/cadenza/homeserver/v1/homeserver.proto with buf and protoc-gen-es.)
 */
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { HomeserverService } from "../../src/gen/cadenza/homeserver/v1/homeserver_pb.js";

export type Cadenza = Client<typeof HomeserverService>;

export function connectToCadenza(options: {
  /** cadenza's internal listener, e.g. http://127.0.0.1:2290 */
  readonly baseUrl: string;
  /** INTERNAL_TOKEN, when cadenza has one. */
  readonly token?: string | undefined;
}): Cadenza {
  const bearer: Interceptor = (next) => (req) => {
    if (options.token) req.header.set("authorization", `Bearer ${options.token}`);
    return next(req);
  };
  return createClient(
    HomeserverService,
    createConnectTransport({
      baseUrl: options.baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: true,
      interceptors: [bearer],
    }),
  );
}
