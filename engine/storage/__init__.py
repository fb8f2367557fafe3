"""Storage: where tables and sources live (a folder or an object store) and its failures."""
