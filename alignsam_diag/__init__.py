"""alignsam-diag: SAM-family training and the Align-SAM paper's diagnostics.

The library is importable from a notebook; it never prints and never imports the CLI
(Typer/Rich). Long-running functions take a ``progress`` callback (see
:mod:`alignsam_diag.progress`).
"""

__version__ = "0.1.0"
