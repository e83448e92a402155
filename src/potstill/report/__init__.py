"""The report: built from a run's files alone."""
