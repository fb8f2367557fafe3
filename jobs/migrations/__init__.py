"""Changing a table's model without downtime: generations, their build, switch and rollback."""
