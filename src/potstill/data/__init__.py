"""Reading and checking input data, task types and output filters."""
