"""TE-NAS: training-free indicators (NTK condition number, linear regions) and the pruning search."""
