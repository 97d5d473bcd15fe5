import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AuthServiceClient } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.client.js";
import type { AuthStep as SdkAuthStep } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.js";
import { HrpcTransport } from "@harmony-dev/transport-hrpc";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import {
  AuthStepSchema,
  BeginAuthResponseSchema,
  KeyResponseSchema,
  LoginFederatedRequestSchema,
  NextStepRequestSchema,
  StreamStepsRequestSchema,
  StreamStepsResponseSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import { tokenFromSubprotocols } from "../src/server/hrpc/stream.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { newUser } from "./helpers/flow.js";
import { stepStreamPaths } from "./helpers/server.js";

// The Harmony SDK's transport uses the browser's WebSocket; Node 20 has none.
(globalThis as { WebSocket?: unknown }).WebSocket = WebSocket;

const path = (method: string) => `/protocol.auth.v1.AuthService/${method}`;
const utf8 = (s: string) => new TextEncoder().encode(s);

const cases = backends.flatMap((backend) =>
  stepStreamPaths.map((streamSteps) => ({ name: backend.name, backend, streamSteps })),
);

describe.each(cases)(
  "hRPC on $name, StreamSteps on the $streamSteps path",
  ({ backend, streamSteps }) => {
    let database: TestDatabase;
    let ctx: AppContext;
    let server: RunningServer;

    beforeAll(async () => {
      database = await backend.open();
      ctx = await createAppContext(
        testConfig({ SHUTDOWN_GRACE: "1s", HRPC_STREAM_REQUEST_TIMEOUT: "300ms" }),
        {
          db: database.db,
          hasher: fastHasher,
          logger: pino({ level: "silent" }),
          background: false,
        },
      );
      server = await startServer(ctx, { streamSteps });
    });
    afterAll(async () => {
      await server?.close();
      await ctx?.close();
      await database?.close();
    });

    describe("with Harmony's own TypeScript SDK, driven as the Tempest client drives it", () => {
      /** BeginAuth, open StreamSteps, NextStep with no step, then act only on what the stream shows. */
      async function drive(
        client: AuthServiceClient,
        answer: (step: SdkAuthStep) => Parameters<AuthServiceClient["nextStep"]>[0]["step"],
      ) {
        const { response } = await client.beginAuth({});
        const { authId } = response;
        const call = client.streamSteps({ authId });
        const shown: SdkAuthStep[] = [];
        const streamed = (async () => {
          // Runs until the server closes the stream, which it must do after the Session step.
          for await (const res of call.responses) {
            if (!res.step) continue;
            shown.push(res.step);
            if (res.step.step.oneofKind !== "session") {
              await client.nextStep({ authId, step: answer(res.step) });
            }
          }
        })();
        // Tempest opens the stream, then asks for the first step without waiting
        // for it to attach, nor need it: a stream is sent the steps made before
        // it attached, and each later one is made only after the stream showed
        // the one before.
        await client.nextStep({ authId, step: { oneofKind: undefined } });
        await streamed;
        const last = shown.at(-1)?.step;
        if (last?.oneofKind !== "session") throw new Error("the stream ended without a session");
        const session = last.session;
        return { session, shown };
      }

      const formOf = (values: { email: string; username?: string; password: string }) => ({
        oneofKind: "form" as const,
        form: {
          fields: [
            { field: { oneofKind: "string" as const, string: values.email } },
            ...(values.username === undefined
              ? []
              : [{ field: { oneofKind: "string" as const, string: values.username } }]),
            { field: { oneofKind: "bytes" as const, bytes: utf8(values.password) } },
          ],
        },
      });

      it("registers, checks the session, and logs in", async () => {
        const transport = new HrpcTransport({ baseUrl: server.url });
        const client = new AuthServiceClient(transport);
        const user = newUser();

        const registered = await drive(client, (step) =>
          step.step.oneofKind === "choice" && step.step.choice.title === "initial"
            ? { oneofKind: "choice", choice: { choice: "register" } }
            : formOf(user),
        );
        expect(registered.shown.map((s) => s.step.oneofKind)).toEqual([
          "choice",
          "form",
          "session",
        ]);
        expect(registered.session.sessionToken).toMatch(/^[A-Za-z0-9_-]{43}$/);

        transport.setSession(registered.session.sessionToken);
        await client.checkLoggedIn({});

        const loggedIn = await drive(client, (step) =>
          step.step.oneofKind === "choice"
            ? { oneofKind: "choice", choice: { choice: "login" } }
            : formOf({ email: user.email, password: user.password }),
        );
        expect(loggedIn.session.userId).toBe(registered.session.userId);
      });

      it("reports h.blank-session by identifier, as the client logs out on it", async () => {
        const transport = new HrpcTransport({ baseUrl: server.url });
        transport.setSession("A".repeat(43));
        await expect(new AuthServiceClient(transport).checkLoggedIn({})).rejects.toMatchObject({
          code: "h.blank-session",
        });
      });
    });

    describe("unary protocol", () => {
      const post = (method: string, body: Uint8Array, headers: Record<string, string> = {}) =>
        fetch(`${server.url}${path(method)}`, {
          method: "POST",
          headers: { "content-type": "application/hrpc", ...headers },
          body,
        });
      const errorOf = async (res: Response) => {
        expect(res.headers.get("content-type")).toBe("application/hrpc");
        expect(res.headers.get("hrpc-version")).toBe("1");
        return fromBinary(ErrorSchema, new Uint8Array(await res.arrayBuffer()));
      };

      it("answers with a binary message and both hRPC headers", async () => {
        const res = await post("BeginAuth", new Uint8Array());
        expect(res.status).toBe(200);
        expect(res.headers.get("content-type")).toBe("application/hrpc");
        expect(res.headers.get("hrpc-version")).toBe("1");
        const { authId } = fromBinary(
          BeginAuthResponseSchema,
          new Uint8Array(await res.arrayBuffer()),
        );
        expect(authId).toMatch(/^[A-Za-z0-9_-]{32}$/);
      });

      it("serves Key over hRPC, for other homeservers", async () => {
        const res = await post("Key", new Uint8Array());
        expect(res.status).toBe(200);
        const { key } = fromBinary(KeyResponseSchema, new Uint8Array(await res.arrayBuffer()));
        expect(key).toEqual(ctx.serverKeys.current().publicKey);
      });

      it.each([
        [
          "an application error",
          () => post("CheckLoggedIn", new Uint8Array()),
          400,
          "h.blank-session",
        ],
        [
          "an unknown auth_id",
          () =>
            post(
              "NextStep",
              toBinary(
                NextStepRequestSchema,
                create(NextStepRequestSchema, { authId: "Z".repeat(32) }),
              ),
            ),
          400,
          "h.bad-auth-id",
        ],
        [
          "a body that does not decode",
          () => post("NextStep", new Uint8Array([0x0a, 0xff])),
          400,
          "hrpc.http.bad-unary-request",
        ],
        [
          "a wrong content type",
          () => post("BeginAuth", new Uint8Array(), { "content-type": "text/plain" }),
          400,
          "hrpc.http.bad-unary-request",
        ],
        [
          "a wrong method",
          () =>
            fetch(`${server.url}${path("BeginAuth")}`, {
              headers: { "content-type": "application/hrpc" },
            }),
          400,
          "hrpc.http.bad-unary-request",
        ],
        [
          "a streaming method as unary",
          () => post("StreamSteps", new Uint8Array()),
          400,
          "hrpc.http.bad-unary-request",
        ],
        ["an unknown method", () => post("Nope", new Uint8Array()), 404, "hrpc.not-found"],
        [
          "a body over READ_MAX_BYTES",
          () => post("NextStep", new Uint8Array(70_000)),
          429,
          "hrpc.resource-exhausted",
        ],
        [
          "a federation policy refusal",
          () =>
            post(
              "LoginFederated",
              toBinary(
                LoginFederatedRequestSchema,
                create(LoginFederatedRequestSchema, {
                  authToken: { sig: new Uint8Array(64), data: new Uint8Array([8, 1]) },
                  serverId: "127.0.0.1:1",
                }),
              ),
            ),
          403,
          "h.host-not-allowed",
        ],
      ] as const)(
        "answers %s with its status and an hrpc.v1.Error body",
        async (_what, call, status, identifier) => {
          const res = await call();
          expect(res.status).toBe(status);
          const error = await errorOf(res);
          expect(error.identifier).toBe(identifier);
          expect(error.humanMessage.length).toBeGreaterThan(5);
        },
      );
    });

    describe("streaming protocol", () => {
      const wsUrl = (method: string) => `${server.url.replace(/^http/, "ws")}${path(method)}`;

      function open(method: string, protocols: string[] = ["hrpc1"]) {
        const ws = new WebSocket(wsUrl(method), protocols);
        const frames: Buffer[] = [];
        ws.on("message", (data) => frames.push(data as Buffer));
        const closed = new Promise<{ code: number }>((resolve) =>
          ws.on("close", (code) => resolve({ code })),
        );
        const opened = new Promise<void>((resolve, reject) => {
          ws.once("open", () => resolve());
          ws.once("error", reject);
        });
        return { ws, frames, closed, opened };
      }

      async function handshakeError(method: string, protocols: string[]) {
        const ws = new WebSocket(wsUrl(method), protocols);
        ws.on("error", () => {});
        const response = await new Promise<import("node:http").IncomingMessage>(
          (resolve, reject) => {
            ws.once("unexpected-response", (_req, res) => resolve(res));
            ws.once("open", () => reject(new Error("handshake succeeded")));
          },
        );
        const chunks: Buffer[] = [];
        for await (const chunk of response) chunks.push(chunk as Buffer);
        ws.terminate();
        return {
          status: response.statusCode,
          headers: response.headers,
          error: fromBinary(ErrorSchema, Buffer.concat(chunks)),
        };
      }

      it("answers the hrpc1 subprotocol, frames steps with 0x00, and closes cleanly after the session", async () => {
        const { authId } = await ctx.flows.begin().then((id) => ({ authId: id }));
        const stream = open("StreamSteps", ["hrpc1", "some-token"]);
        await stream.opened;
        expect(stream.ws.protocol).toBe("hrpc1");
        stream.ws.send(
          toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })),
        );
        await ctx.flows.advance(authId, { kind: "current" });
        await ctx.flows.advance(authId, { kind: "choice", choice: "register" });
        const user = newUser();
        await ctx.flows.advance(authId, {
          kind: "form",
          values: [
            { kind: "string", value: user.email },
            { kind: "string", value: user.username },
            { kind: "bytes", value: utf8(user.password) },
          ],
        });
        expect((await stream.closed).code).toBe(1000);
        expect(stream.frames.map((f) => f[0])).toEqual([0, 0, 0]);
        const last = fromBinary(
          StreamStepsResponseSchema,
          stream.frames[2]?.subarray(1) ?? new Uint8Array(),
        );
        expect(last.step?.step.case).toBe("session");
      });

      it("sends errors as 0x01 frames", async () => {
        const stream = open("StreamSteps");
        await stream.opened;
        stream.ws.send(
          toBinary(
            StreamStepsRequestSchema,
            create(StreamStepsRequestSchema, { authId: "Y".repeat(32) }),
          ),
        );
        await stream.closed;
        expect(stream.frames).toHaveLength(1);
        expect(stream.frames[0]?.[0]).toBe(1);
        expect(
          fromBinary(ErrorSchema, stream.frames[0]?.subarray(1) ?? new Uint8Array()).identifier,
        ).toBe("h.bad-auth-id");
      });

      it("refuses a text request and an undecodable one", async () => {
        for (const send of [
          (ws: WebSocket) => ws.send("hello"),
          (ws: WebSocket) => ws.send(Buffer.from([0x0a, 0xff])),
        ]) {
          const stream = open("StreamSteps");
          await stream.opened;
          send(stream.ws);
          await stream.closed;
          const error = fromBinary(ErrorSchema, stream.frames[0]?.subarray(1) ?? new Uint8Array());
          expect(error.identifier).toBe("hrpc.http.bad-streaming-request");
        }
      });

      it("closes a socket that never sends its request", async () => {
        const stream = open("StreamSteps");
        await stream.opened;
        expect((await stream.closed).code).toBe(1008);
        expect(
          fromBinary(ErrorSchema, stream.frames[0]?.subarray(1) ?? new Uint8Array()).identifier,
        ).toBe("hrpc.http.bad-streaming-request");
      });

      it("answers pings", async () => {
        const stream = open("StreamSteps");
        await stream.opened;
        const pong = new Promise<Buffer>((resolve) => stream.ws.once("pong", resolve));
        stream.ws.ping("are you there");
        expect((await pong).toString()).toBe("are you there");
        stream.ws.terminate();
      });

      it.each([
        [
          "without the hrpc1 subprotocol",
          "StreamSteps",
          ["chat"],
          400,
          "hrpc.http.bad-streaming-request",
        ],
        ["on a unary method", "BeginAuth", ["hrpc1"], 400, "hrpc.http.bad-streaming-request"],
        ["on an unknown method", "Nope", ["hrpc1"], 404, "hrpc.not-found"],
      ])(
        "fails a handshake %s with an hRPC error body",
        async (_what, method, protocols, status, identifier) => {
          const { status: got, headers, error } = await handshakeError(method, protocols);
          expect(got).toBe(status);
          expect(headers["hrpc-version"]).toBe("1");
          expect(error.identifier).toBe(identifier);
        },
      );
    });

    it("decodes steps byte-compatibly with the SDK's own generated types", async () => {
      const { AuthStep } = await import("@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.js");
      const bytes = toBinary(
        AuthStepSchema,
        create(AuthStepSchema, {
          canGoBack: true,
          step: {
            case: "form",
            value: { title: "login", fields: [{ name: "email", type: "email" }] },
          },
        }),
      );
      const decoded = AuthStep.fromBinary(bytes);
      expect(decoded.canGoBack).toBe(true);
      expect(decoded.step.oneofKind === "form" && decoded.step.form.title).toBe("login");
    });
  },
);

describe("hRPC helpers", () => {
  it.each([
    [["hrpc1"], undefined],
    [["hrpc1", "tok.en-1"], "tok.en-1"],
    [["hrpc1", "hrpc1"], undefined],
  ])("reads the session token from subprotocols %j", (offered, token) =>
    expect(tokenFromSubprotocols(offered)).toBe(token),
  );
});
