"""``python -m alignsam_diag.cli`` runs the CLI (the same as ``alignsam-diag``)."""

from .app import main

main()
