"""Evaluation: task metrics, speed and memory of every model, results.json."""
