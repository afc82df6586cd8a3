"""Experiment tracking: a DRPO compile in MLflow (``pip install drpo-dspy[tracking]``); MLflow is imported only
when used."""

from drpo_dspy.tracking.mlflow_events import MLflowLogger

__all__ = ["MLflowLogger"]
