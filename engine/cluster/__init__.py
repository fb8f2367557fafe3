"""Clusters: starting or reaching Dask, specs, TLS, autoscaling, GPU placement and recovery."""
