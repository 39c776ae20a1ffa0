"""Retention policies: one setting (``retention=`` / ``FLE_DB_RETENTION``) that keeps storage
bounded, e.g. ``"thin states older than 30 days to every 10th; delete trajectories older than 180
days except the best 5 per task"``.

Grammar (case-insensitive, words separated by any whitespace, rules separated by ``;``, each kind
of rule at most once, an empty rule is an error)::

    policy   := rule (";" rule)*
    rule     := thin | delete
    thin     := "thin states older than" AGE "to every" ORDINAL
    delete   := "delete trajectories older than" AGE ["except the best" COUNT "per task"]
    AGE      := COUNT UNIT            UNIT: minute(s), hour(s), day(s), week(s)
    ORDINAL  := COUNT ("st" | "nd" | "rd" | "th")
    COUNT    := 1 to 6 decimal digits, at least 1 (AGE: at most 100 years)

``thin`` is :meth:`~fle_db.DatabaseClient.thin` with ``older_than=AGE, keep_every=ORDINAL``;
``delete`` is :meth:`~fle_db.DatabaseClient.cleanup` with ``older_than=AGE`` (and
``keep_best_per_task=COUNT``): ages are measured as ``cleanup(older_than=)`` measures them (no
trajectory or step written for that long) and deletion is lineage-aware (a trajectory a kept fork
descends from is kept). Parsing is strict: anything else raises ConfigurationError naming the rule
that does not parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from .errors import ConfigurationError

#: Longest policy text accepted.
MAX_POLICY_LENGTH = 1000
_UNITS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
_MAX_AGE_SECONDS = 100 * 365 * 86400
_COUNT = r"([0-9]{1,6})"
_AGE = _COUNT + r"\s+(minute|hour|day|week)s?"
_THIN = re.compile(r"thin\s+states\s+older\s+than\s+" + _AGE + r"\s+to\s+every\s+" + _COUNT + r"(?:st|nd|rd|th)")
_DELETE = re.compile(
    r"delete\s+trajectories\s+older\s+than\s+" + _AGE + r"(?:\s+except\s+the\s+best\s+" + _COUNT + r"\s+per\s+task)?"
)
_EXPECTED = (
    '"thin states older than N days to every Kth" or '
    '"delete trajectories older than N days [except the best M per task]" (units: minutes, hours, days, weeks)'
)


@dataclass(frozen=True, slots=True)
class ThinClause:
    """Thin the states of trajectories idle for ``older_than`` to every ``keep_every``-th step."""

    older_than: timedelta
    keep_every: int


@dataclass(frozen=True, slots=True)
class DeleteClause:
    """Delete trajectories idle for ``older_than``, except the ``keep_best_per_task`` best per
    task (None: no exception)."""

    older_than: timedelta
    keep_best_per_task: int | None


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A parsed policy; ``text`` is its canonical form (what :func:`parse` gives back equal)."""

    thin: ThinClause | None
    delete: DeleteClause | None

    @property
    def text(self) -> str:
        rules = []
        if self.thin is not None:
            rules.append(
                f"thin states older than {_age(self.thin.older_than)} to every {_ordinal(self.thin.keep_every)}"
            )
        if self.delete is not None:
            rule = f"delete trajectories older than {_age(self.delete.older_than)}"
            if self.delete.keep_best_per_task is not None:
                rule += f" except the best {self.delete.keep_best_per_task} per task"
            rules.append(rule)
        return "; ".join(rules)


def parse(text: object, source: str = "retention") -> RetentionPolicy:
    """Parse a policy (see the module docstring). ``source`` names the setting in errors.

    Raises:
        ConfigurationError: not a string, too long, a control character, an empty or unknown
            rule, a rule given twice, a zero count or an age beyond 100 years; the message names
            the rule.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"{source} must be a string such as {_EXPECTED}, got {type(text).__name__}")
    if len(text) > MAX_POLICY_LENGTH:
        raise ConfigurationError(f"{source} is {len(text):,} characters, over the limit of {MAX_POLICY_LENGTH:,}")
    if any(ch < " " and ch not in "\t\n\r" for ch in text):
        raise ConfigurationError(f"{source} contains a control character")
    thin: ThinClause | None = None
    delete: DeleteClause | None = None
    for raw in text.split(";"):
        rule = " ".join(raw.split()).lower()
        shown = raw.strip()[:120]
        if not rule:
            raise ConfigurationError(f"{source} has an empty rule (two ';' in a row, or one at an end)")
        if match := _THIN.fullmatch(rule):
            if thin is not None:
                raise ConfigurationError(f"{source}: more than one thin rule ({shown!r})")
            thin = ThinClause(_timedelta(match[1], match[2], shown, source), _positive(match[3], shown, source))
        elif match := _DELETE.fullmatch(rule):
            if delete is not None:
                raise ConfigurationError(f"{source}: more than one delete rule ({shown!r})")
            best = _positive(match[3], shown, source) if match[3] is not None else None
            delete = DeleteClause(_timedelta(match[1], match[2], shown, source), best)
        else:
            raise ConfigurationError(f"{source}: cannot parse the rule {shown!r}; expected {_EXPECTED}")
    return RetentionPolicy(thin, delete)


def _positive(digits: str, rule: str, source: str) -> int:
    value = int(digits)
    if value < 1:
        raise ConfigurationError(f"{source}: the rule {rule!r} has a count of 0; counts start at 1")
    return value


def _timedelta(digits: str, unit: str, rule: str, source: str) -> timedelta:
    seconds = _positive(digits, rule, source) * _UNITS[unit]
    if seconds > _MAX_AGE_SECONDS:
        raise ConfigurationError(f"{source}: the rule {rule!r} reaches back more than 100 years")
    return timedelta(seconds=seconds)


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit in ("week", "day", "hour", "minute"):
        count, rest = divmod(seconds, _UNITS[unit])
        if not rest:
            return f"{count} {unit}{'s' if count != 1 else ''}"
    raise AssertionError(f"an age of {seconds} seconds is not a whole number of minutes")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


__all__ = ["MAX_POLICY_LENGTH", "DeleteClause", "RetentionPolicy", "ThinClause", "parse"]
