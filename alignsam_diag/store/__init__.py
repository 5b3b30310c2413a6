"""HDF5 storage of every result type. One module per result type; :mod:`.h5io` holds the
atomic write and the checked open that all of them use."""

from .h5io import atomic_h5, open_h5, write_atomic

__all__ = ["atomic_h5", "open_h5", "write_atomic"]
