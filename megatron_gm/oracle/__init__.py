"""Oracle: measured per-step influence of candidate documents on the reference loss."""
