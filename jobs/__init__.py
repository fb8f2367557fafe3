"""embedscale's control plane: job store, tenants, quotas and scheduling over DuckDB.

The only package that opens DuckDB. Built on the engine (`engine.run`'s building blocks).
"""
