"""The Typer front end of alignsam-diag: one module per command, registered in :mod:`.app`."""
