"""The HTTP API: the FastAPI app, its routes, schemas, limits and metrics."""
