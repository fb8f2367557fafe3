"""The runner's pure policies: no cluster, no database, only decisions on data."""
