"""LM clients and accounting: the embedded model, the raw-text route, metering, budgets, the run cache."""
