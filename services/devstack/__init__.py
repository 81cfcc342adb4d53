"""Local development stack: the three services as background processes for `make run`."""
