"""Sources: listing files and object stores into partitions, and reading documents safely."""
