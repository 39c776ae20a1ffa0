"""The SQL implementation of the backend contract, shared by every SQLAlchemy dialect.

One module per concern, each a mixin over :class:`~.core.SQLCore` (engine, transactions, retry,
error translation, dialect hooks), combined here into :class:`SQLBackend`:

* ``core``: the pool, transactions and the commit log, retry, error translation, migrations and
  the dialect hooks ``sqlite.py``, ``postgres.py`` and ``mysql.py`` fill in;
* ``checkpoints``: writes and reads of trajectories, steps, records, game states, metadata;
* ``lineage``: ancestry and children of steps, fork-tree walks, deletion, cleanup and GC;
* ``thinning``: dropping the game states of steps nothing resumes from (``thin``);
* ``search``: search nodes and FLE versions (the SearchStore role);
* ``admin``: statistics, health, maintenance, validation scans, read-only queries (AdminStore);
* ``history``: snapshots, copies, rewind and pruning (HistoryStore), over ``versioned``: the
  row-versioning model (commit stamps, history twins) in SQLAlchemy Core;
* ``tail``: the steps committed after a position, in commit order (TailStore: the live tail).

Mixins rather than composed role objects: every role shares one engine, one retry policy and one
set of dialect hooks, which a dialect overrides once on its single class.
"""

from __future__ import annotations

from ..base import Backend
from .admin import SQLAdmin
from .checkpoints import SQLCheckpoints
from .history import SQLHistory
from .search import SQLSearch
from .tail import SQLTail
from .thinning import SQLThinning


class SQLBackend(SQLAdmin, SQLTail, SQLCheckpoints, SQLThinning, SQLSearch, SQLHistory, Backend):
    """Backend over a SQLAlchemy engine, implementing every role. A dialect subclasses it and
    provides the hooks of :class:`~.core.SQLCore`."""


__all__ = ["SQLBackend"]
