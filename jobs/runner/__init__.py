"""The runner: the one driver loop that feeds the cluster, commits and ends jobs."""
