"""``fle-db ui``: a local, read-only web viewer over any fle-db database.

Pages for trajectories (filters, sorting, paging), a trajectory (reward chart, steps, lineage),
a step (code, output, feedback, game state), state diffs, search trees and status, plus the same
data as JSON under ``/api/v1/``. Starlette + Jinja2 served by uvicorn; the small script and
stylesheet are files of this package (no Node build). See :func:`fle_db.ui.serve.run`.
"""
