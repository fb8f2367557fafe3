"""POST /v1/embeddings in the control plane: requests checked and gathered into model calls."""
