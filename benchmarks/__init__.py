"""Benchmarks of fle-db against raw drivers and LangGraph's checkpoint savers.

Not part of the ``fle_db`` package. Run from the repository root:

* ``python -m benchmarks.run``   -- FLE-like checkpoints, one durable transaction each (peers.md workload);
* ``python -m benchmarks.batch`` -- ``batch_save_steps`` throughput of small steps;
* ``python -m benchmarks.scale`` -- resume and state-load latency in a database of a million steps.

See ``benchmarks/README.md`` for the methodology.
"""
