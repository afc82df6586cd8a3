"""The DRPO teleprompter: the beam search, its compilation, ICL optimisation, estimates."""
