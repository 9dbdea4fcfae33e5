# syntax=docker/dockerfile:1
# The simulated Upbit REST API of the test harness (binary `upbit-sim` of the makenaide-tests crate), for the
# Docker RIE setup in docker/compose.yaml. Build context: the repository root.
FROM public.ecr.aws/docker/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p makenaide-tests --bin upbit-sim \
 && cp target/release/upbit-sim /usr/local/bin/upbit-sim

FROM public.ecr.aws/docker/library/debian:bookworm-slim
COPY --from=build /usr/local/bin/upbit-sim /usr/local/bin/upbit-sim
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/upbit-sim"]
