"""DSPy adapters and typed calls: the DRPO prompt layout, schema JSON, tolerant parsing."""
