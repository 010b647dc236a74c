# coalesce-proxy as a sidecar image: a static-ish Rust binary on distroless, non-root.
#   docker build -t coalesce-proxy .
#   cp config/docker.toml proxy.toml   # then point [upstreams.app] at your backend
#   docker run --rm -p 8080:8080 -p 9901:9901 -v "$PWD/proxy.toml:/etc/coalesce-proxy/proxy.toml:ro" coalesce-proxy

# The base images are build arguments with today's values as defaults, so that a build without
# a registry (CI: .ci/image.sh) can name local stand-ins. BINARY_FROM picks where the binary
# comes from: `build` compiles it here; `prebuilt` takes one built beforehand, the same way
# (CI builds it once for its own checks).
ARG BUILD_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=build

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# One build step: any change under src/ rebuilds the dependencies too (no separate
# dependency layer; a cargo-chef stage would add one at the cost of another tool).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
# Cargo.toml names the benchmark tools and the test binary; their sources must exist.
COPY bench ./bench
COPY tests ./tests
# The patched hyper ([patch.crates-io] in Cargo.toml, vendor/README.md).
COPY vendor ./vendor
# The proxy alone: the demo, test origin and fuzz entry points (the `tools` feature) stay out.
# Stripped (10 MB, not 65): the image has no debugger to read line tables with.
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --no-default-features --bin coalesce-proxy

# A binary built beforehand with the same command and profile, from `prebuilt/` in the context.
FROM scratch AS prebuilt
COPY prebuilt/coalesce-proxy /src/target/release/coalesce-proxy

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
COPY --from=binary /src/target/release/coalesce-proxy /usr/local/bin/coalesce-proxy
COPY config/docker.toml /etc/coalesce-proxy/proxy.toml
# distroless's "nonroot" user, by number so that runAsNonRoot policies can verify it.
USER 65532
# 8080: client traffic; 9901: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9901
# Kubernetes and Docker send SIGTERM to stop a container: the proxy drains on it.
STOPSIGNAL SIGTERM
# Checks whatever the mounted config says: its admin /healthz, or its listen port without one.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/coalesce-proxy", "healthcheck", "--config", "/etc/coalesce-proxy/proxy.toml"]
ENTRYPOINT ["/usr/local/bin/coalesce-proxy"]
CMD ["--config", "/etc/coalesce-proxy/proxy.toml"]
