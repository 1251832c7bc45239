"""The background health checks: scheduling from PostgreSQL, a pool of cluster clients, and the
check itself, which talks to each cluster through kubernetes_asyncio."""
