# syntax=docker/dockerfile:1
# Build: docker build -t multiproxy .
# Run:   see deploy/docker/README.md

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static: the runtime image has no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/multiproxy ./cmd/multiproxy \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/multiproxy /multiproxy
COPY configs/multiproxy.yaml /etc/multiproxy/multiproxy.yaml
# The volume's mount point must belong to the runtime user, or a fresh named
# volume is created root-owned and unwritable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/multiproxy
ENV MULTIPROXY_CONFIG=/etc/multiproxy/multiproxy.yaml \
    MULTIPROXY_DATA_DIR=/var/lib/multiproxy
# distroless's nonroot user (65532); ports above 1024 need no capability.
USER 65532:65532
VOLUME /var/lib/multiproxy
# 9090 is the admin listener; it binds 127.0.0.1 unless MULTIPROXY_ADMIN_LISTEN=:9090
# (set admin.token_file too when you expose it).
EXPOSE 5000 5010 5020 5030 5040 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["/multiproxy", "healthcheck"]
ENTRYPOINT ["/multiproxy"]
CMD ["serve"]
