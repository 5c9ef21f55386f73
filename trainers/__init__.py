"""absl trainers for kqreg (console scripts kqreg-classify, kqreg-sweep)."""
