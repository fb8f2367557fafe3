"""embedscale's front doors: the CLI (and, with the job service, the HTTP API and client)."""
