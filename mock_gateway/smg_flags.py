"""The ``smg launch`` 1.13.0 flags the mock gateway does not model, by the number of values each takes.

Listed from ``smg launch --help`` (1.13.0) minus the flags ``config.build_parser`` models. The gateway
accepts them as SMG does (so an ``smg launch`` command line runs unchanged) and reports them by name in
``GatewayConfig.ignored``; a flag in neither list is an error.
"""

# switches
NO_VALUE: tuple[str, ...] = (
    "--control-plane-audit-enabled", "--disable-tokenizer-autoload", "--dp-aware",
    "--dp-minimum-tokens-scheduler", "--enable-igw", "--enable-mesh", "--enable-rl", "--enable-trace",
    "--enable-wasm", "--epd-disaggregation", "--log-json", "--log-mm-timing", "--mm-allow-private-media-hosts",
    "--mm-pixel-rdma", "--no-remove-unhealthy-workers", "--no-worker-auto-recovery", "--oracle-external-auth",
    "--priority-scheduler-enabled", "--remove-unhealthy-workers", "--service-discovery",
    "--tenant-rate-limit-enabled", "--tokenizer-cache-enable-l0", "--tokenizer-cache-enable-l1",
    "--trust-tenant-header", "--upstream-http2", "--worker-auto-recovery",
)

# one value each
ONE_VALUE: tuple[str, ...] = (
    "--backend", "--bucket-adjust-interval-secs", "--cache-boundaries", "--cache-index", "--cache-ttl-secs",
    "--chat-template", "--client-cert-path", "--client-key-path",
    "--discovery-check-interval-secs", "--discovery-file", "--discovery-provider", "--encode-policy",
    "--header-read-timeout-secs", "--health-check-port", "--history-backend", "--history-memory-max-items",
    "--history-memory-max-responses", "--history-memory-retention-secs", "--idle-connection-timeout-secs",
    "--jemalloc-prof-dir", "--job-queue-capacity", "--job-queue-concurrency", "--jwt-audience", "--jwt-issuer",
    "--jwt-jwks-uri", "--kv-connector-annotation", "--kv-engine-id-annotation", "--kv-index", "--log-dir",
    "--max-background-responses", "--max-buffered-request-bytes", "--max-concurrent-requests",
    "--mcp-config-path", "--mesh-advertise-host", "--mesh-host", "--mesh-port", "--mesh-server-name",
    "--mesh-tls-ca-cert", "--mesh-tls-cert", "--mesh-tls-key", "--mm-allowed-media-domains",
    "--mm-per-request-image-limit", "--mm-pixel-cache-mb", "--mm-processing", "--model", "--model-alias",
    "--model-id-from", "--model-path", "--multimodal-max-inflight-bytes", "--multimodal-shm-min-bytes",
    "--multimodal-tensor-transport", "--oracle-connect-descriptor", "--oracle-password", "--oracle-pool-max",
    "--oracle-pool-min", "--oracle-pool-timeout-secs", "--oracle-tns-alias", "--oracle-username",
    "--oracle-wallet-path", "--otlp-traces-endpoint", "--overlap-decay", "--parser", "--pd-admission-wait-secs",
    "--postgres-db-url", "--postgres-op-timeout-secs", "--postgres-pool-max",
    "--prefill-max-inflight-requests-per-worker", "--prefill-queue-size",
    "--prefill-queue-timeout-secs", "--priority-scheduler-config", "--priority-scheduler-default-max-class",
    "--priority-scheduler-tenant-metric-top-n", "--queue-size", "--queue-timeout-secs",
    "--rate-limit-tokens-per-second", "--rdma-listen-ip", "--rdma-slot-ttl-s", "--reasoning-parser",
    "--redis-op-timeout-secs", "--redis-pool-max", "--redis-retention-days", "--redis-url",
    "--rl-control-timeout-secs", "--rl-fanout-concurrency", "--schema-config", "--selection-accounting-ttl-ms",
    "--selection-policy", "--selection-temperature", "--service-discovery-namespace",
    "--service-discovery-port", "--shutdown-grace-period-secs", "--sse-keepalive-secs",
    "--storage-hook-wasm-path", "--stream-body-stall-timeout-secs", "--tenant-api-key", "--tenant-header-name",
    "--tenant-rate-limit-config", "--tls-cert-path", "--tls-key-path", "--tokenizer-cache-l0-max-entries",
    "--tokenizer-cache-l0-max-memory", "--tokenizer-cache-l1-max-memory", "--tokenizer-path",
    "--tool-call-parser", "--upstream-pool-idle-timeout-secs", "--worker-stale-secs", "--worker-stall-secs",
    "--worker-startup-delay", "--worker-warmup-blocks", "--worker-warmup-divert-every", "--worker-warmup-secs",
    "--worker-warmup-share", "--worker-warmup-thin-ratio", "--worker-wedge-secs", "--zmq-engine-count",
)

# zero or more values
ANY_VALUES: tuple[str, ...] = (
    "--ca-cert-paths", "--control-plane-api-keys", "--cors-allowed-origins", "--jwt-role-mapping",
    "--mesh-peer-urls", "--request-id-headers", "--storage-context-headers",
)

# one or more values
ONE_OR_MORE_VALUES: tuple[str, ...] = (
    "--decode-selector", "--encode", "--encode-selector", "--prefill-selector",
    "--prometheus-duration-buckets", "--router-selector", "--selector",
)

# argparse's nargs of each group (None: one value)
BY_NARGS: tuple[tuple[tuple[str, ...], int | str | None], ...] = (
    (NO_VALUE, 0),
    (ONE_VALUE, None),
    (ANY_VALUES, "*"),
    (ONE_OR_MORE_VALUES, "+"),
)
