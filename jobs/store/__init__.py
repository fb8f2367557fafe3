"""The DuckDB store: the only code that opens DuckDB, its migrations, rows and records."""
