"""The Python client of the embedscale service, for notebooks and scripts."""
