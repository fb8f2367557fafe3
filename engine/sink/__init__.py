"""The sink: fragments written on workers, committed once by the driver, and the commit log."""
