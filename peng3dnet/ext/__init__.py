"""Optional features built on the public API (ping, ...)."""
