"""Running the server on many nodes: API-only nodes, worker nodes, the PostgreSQL queue, deployment helpers."""
