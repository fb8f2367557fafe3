"""Tables: schema, catalog, search, maintenance, and whole-table commits (undo, sync, verify)."""
