"""DSPy modules: AlignedResponder and its example-bank parameter."""
