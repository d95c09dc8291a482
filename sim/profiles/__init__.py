"""Hardware and model profiles: the latency coefficients and KV capacity of one model served on one GPU type at one
TP size, as data (``sim/profiles/data/*.toml``; ``docs/profiles.md``)."""
