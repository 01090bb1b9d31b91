# axeq-server image: build stage (Debian 12 toolchain + gRPC) then a slim runtime with only the
# shared libraries, running as a non-root user. Without a registry, pass a local base:
#   podman build --isolation=chroot --build-arg BASE=localhost/debian:bookworm-local -t axeq-server .
# The default command serves TLS with bearer tokens from /etc/axeq (mount the secrets there, as
# deploy/k8s does); without those files the server exits with "cannot read ...". Plaintext only when
# asked: pass your own arguments including --insecure (deploy/smoke-test.sh does).
ARG BASE=debian:bookworm
FROM ${BASE} AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make libeigen3-dev libabsl-dev libssl-dev libxxhash-dev libgtest-dev libgmock-dev nlohmann-json3-dev \
      libcli11-dev libfmt-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libtcmalloc-minimal4 \
      grpc-proto prometheus-cpp-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree (.dockerignore drops build trees, .git, docs, examples, bench): every folder the root
# CMakeLists.txt adds is there, whatever the layout.
COPY . .
# Portable binaries (no -march=native): the image may run on other CPUs than the builder.
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DAXEQ_NATIVE=OFF -DAXEQ_BUILD_BENCH=OFF \
    && cmake --build build -j"$(nproc)" --target axeq-server axeq axeq-health-probe \
    && mkdir /out && for t in axeq-server axeq axeq-health-probe; do \
         cp "$(find build -type f -name "$t" -perm -u+x | head -n1)" /out/; done \
    && strip /out/*

FROM ${BASE} AS runtime
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libssl3 libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 libtcmalloc-minimal4 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/axeq --create-home axeq
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/axeq
# gRPC, Prometheus metrics
EXPOSE 50051 9464
VOLUME ["/var/lib/axeq/results"]
ENTRYPOINT ["/usr/local/bin/axeq-server"]
CMD ["--address", "0.0.0.0:50051", "--metrics-address", "0.0.0.0:9464", "--results-dir", "/var/lib/axeq/results", \
     "--tls-cert", "/etc/axeq/tls/tls.crt", "--tls-key", "/etc/axeq/tls/tls.key", "--tokens-file", "/etc/axeq/auth/tokens"]
