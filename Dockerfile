# A small image with the oras-fs CLI, laid out like the classic ORAS image: the binary is the
# entrypoint and the working directory is /workspace, so files given on the command line come
# from the directory mounted there.
#
#   docker build -t oras-fs .
#   docker run --rm -v "$PWD:/workspace" oras-fs push registry.example/hello:v1 hi.txt
#   docker run --rm -v "$PWD:/workspace" oras-fs pull registry.example/hello:v1 -o out
#
# `oras-fs mount` inside a container needs FUSE: --device /dev/fuse --cap-add SYS_ADMIN
# (and often --security-opt apparmor:unconfined). Credentials: mount a Docker config and set
# DOCKER_CONFIG, or use -u/--password-stdin.

# The build is the README's: cargo, from the repository root (release profile, locked deps).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin oras-fs \
    && strip target/release/oras-fs

# fuse3 brings fusermount3 (mounts); ca-certificates the roots that TLS verification uses.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates fuse3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/oras-fs /usr/local/bin/oras-fs
WORKDIR /workspace
ENTRYPOINT ["oras-fs"]
CMD ["--help"]
