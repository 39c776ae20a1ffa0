"""Helper programs the fault tests run in child processes (and kill)."""
