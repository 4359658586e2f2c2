# The fulcrum image: a statically linked binary on `scratch`, running as a non-root user.
#
#   docker build -t fulcrum .
#   docker run --rm -p 8080:8080 -v "$PWD/my.toml:/etc/fulcrum/fulcrum.toml:ro" fulcrum
#
# Without a registry, from the tree scripts/container-root lays out on the host (what scripts/ci-package
# builds with podman):
#   scripts/container-root && podman build --build-arg BINARY_FROM=host -t fulcrum .
ARG BINARY_FROM=builder

# The image's root directory, built here: static binary (release profile), CA certificates, config.
FROM docker.io/library/rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN scripts/container-root /out

# Or the same tree, laid out on the host by scripts/container-root.
FROM scratch AS host
COPY target/container-root/ /out/

FROM ${BINARY_FROM} AS root

FROM scratch
COPY --from=root /out/ /
# TLS to upstreams trusts these CAs (rustls-native-certs reads SSL_CERT_FILE).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# A user and group with no entry in /etc/passwd (there is none): it owns nothing and writes nothing;
# port 8080 needs no capability.
USER 65532:65532
EXPOSE 8080
# SIGTERM drains in-flight requests for up to [global] shutdown_timeout (30s): stop with a longer grace
# (`docker stop -t 40`, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/bin/fulcrum", "probe", "--timeout", "2", "http://127.0.0.1:9901/status"]
ENTRYPOINT ["/usr/bin/fulcrum"]
CMD ["run", "-c", "/etc/fulcrum/fulcrum.toml"]
