"""matplotlib figures made from stored (HDF5) results."""
