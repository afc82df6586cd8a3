"""The original DRPO release's artifacts: import, export, safe unpickling."""
