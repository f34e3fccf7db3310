"""Evaluation: classification metrics with honest confidence intervals, and reports."""
