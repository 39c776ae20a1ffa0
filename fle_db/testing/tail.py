"""The TailStore role's conformance suite (the live tail), part of
:class:`~fle_db.testing.BackendConformance`."""

from __future__ import annotations

from .. import DatabaseClient, ValidationError
from .conformance import _step, _Suite, require_role


def _keys(items: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(item["trajectory_id"], item["step_number"]) for item in items]


class TailStoreConformance(_Suite):
    """The TailStore role (skipped for a backend without it): new steps in commit order, from
    the current end or just after a cursor, filtered, with their parts on request."""

    def test_the_tail_yields_new_steps_in_commit_order_and_resumes_after_a_cursor(self, db: DatabaseClient) -> None:
        require_role(db, "TailStore")
        db.save_step(_step("before", 0))
        tail = db.tail(timeout=1, poll_interval=0.05)
        start = tail.cursor
        db.save_step(_step("b", 0, action="x"))
        db.batch_save_steps([_step("a", n, reward=n) for n in range(3)])
        db.save_step(_step("b", 1))
        first = [next(tail) for _ in range(2)]
        tail.close()
        assert _keys(first) == [("b", 0), ("a", 0)]
        assert first[0]["step"]["action"] == "x"
        rest = list(db.tail(cursor=first[-1]["cursor"], timeout=0.3, poll_interval=0.05))
        assert _keys(rest) == [("a", 1), ("a", 2), ("b", 1)]
        assert _keys(list(db.tail(cursor=start, timeout=0.3, poll_interval=0.05))) == _keys(first + rest)
        assert list(db.tail(cursor=rest[-1]["cursor"], timeout=0.2, poll_interval=0.05)) == []

    def test_the_tail_filters_and_gives_parts_on_request(self, db: DatabaseClient) -> None:
        require_role(db, "TailStore")
        db.save_trajectory({"id": "t", "task": "smelt"})
        start = db.tail().cursor
        db.save_step(_step("t", 0), agent_output={"code": "c"}, environment_feedback={"stdout": "ok"})
        db.save_step(_step("u", 0))
        found = list(db.tail(task="smelt", cursor=start, with_parts=True, timeout=0.3, poll_interval=0.05))
        assert _keys(found) == [("t", 0)]
        assert found[0]["agent_output"] == {"code": "c"} and found[0]["environment_feedback"] == {"stdout": "ok"}
        only_u = list(db.tail(trajectory_ids=["u"], cursor=start, timeout=0.3, poll_interval=0.05))
        assert _keys(only_u) == [("u", 0)] and "agent_output" not in only_u[0]

    def test_a_malformed_cursor_is_a_validation_error(self, db: DatabaseClient) -> None:
        require_role(db, "TailStore")
        for cursor in ("", "t1.x", "nonsense", 5):
            try:
                db.tail(cursor=cursor)  # type: ignore[arg-type]
            except ValidationError:
                continue
            raise AssertionError(f"cursor {cursor!r} was accepted")


__all__ = ["TailStoreConformance"]
