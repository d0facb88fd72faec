# One small image with the three services and mailctl, running as a non-root user.
#   docker build -t mailflow .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
    -p mailflow-ingress -p mailflow-policy -p mailflow-relay -p mailctl

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mailflow
COPY --from=build /src/target/release/mailflow-ingress /src/target/release/mailflow-policy \
    /src/target/release/mailflow-relay /src/target/release/mailctl /usr/local/bin/
USER 10001
# The SMTP listeners are high ports inside the pod; the Service maps 25, 587 and 465.
EXPOSE 2525 2587 2465 50051 50052 9101
ENV MAILFLOW_CONFIG=/etc/mailflow/mailflow.toml
