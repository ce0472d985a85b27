"""The redis fixtures (redis_url, redis_ns) live in tests/conftest.py."""
