"""Foundation: what every layer uses and that knows nothing of dhtfs's design.

Holds errors (the exception tree, each mapped to an errno at the FUSE face), config (options and
their parsing), logs (structured, quiet logging), ids (256-bit IDs, SHA-256, XOR distance),
durable (fsync helpers), periodic (background passes that never die, the doorbell that wakes
one), randbytes, malloc, sockaddr (long Unix socket paths), systemd (sd_notify).

May import: nothing of dhtfs outside ``dhtfs.base``.
"""
