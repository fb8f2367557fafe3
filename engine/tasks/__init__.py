"""Tasks: what runs on a worker (a partition, a slice of one, an embedding request)."""
