"""The serving sequence: one number in the control database that orders every serving state.

Invariants:
- Every transaction that changes what the inference servers serve (a deployment, a robot added,
  removed or moved to another group, a robot token created, revoked or removed) increments the
  number once before it commits: `track` installs a flush hook that does it whatever code made the
  change, and code that reads before it writes (deploy, rollback) calls `bump` first.
- The increment is `UPDATE ... SET seq = seq + 1 ... RETURNING`: it holds the row's lock (the
  database's write lock on SQLite) to the end of the transaction, so two transactions can never get
  the same number, and they commit in number order.
- `read_locked` takes the same lock (a + 0 update) before reading: a state read with it at number n
  holds exactly the changes numbered <= n, never half of one.
"""

from __future__ import annotations

from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.control.models import ApiToken, Deployment, Robot, ServingSequence

_BUMPED = "serving_sequence_bumped_in"  # Session.info key: the transaction that already incremented


def _step(s: Session, delta: int) -> tuple[str, int]:
    t = ServingSequence.__table__
    row = s.connection().execute(update(t).where(t.c.id == 1).values(seq=t.c.seq + delta)
                                 .returning(t.c.epoch, t.c.seq)).one()
    return row.epoch, int(row.seq)


def bump(s: Session) -> int:
    """Increment the number in this transaction (once: later calls return it again); the lock is
    held until the transaction ends."""
    txn = s.get_transaction()
    done = s.info.get(_BUMPED)
    if done is not None and done[0] is txn:
        return done[1]
    _, seq = _step(s, 1)
    s.info[_BUMPED] = (txn, seq)
    return seq


def read_locked(s: Session) -> tuple[str, int]:
    """(epoch, seq), with the lock held until the transaction ends: nothing changes the serving
    state while the caller reads it."""
    return _step(s, 0)


def current(s: Session) -> tuple[str, int]:
    """(epoch, seq) as committed now, without a lock (cheap: for reconciliation checks)."""
    row = s.execute(select(ServingSequence.epoch, ServingSequence.seq).where(ServingSequence.id == 1)).one()
    return row.epoch, int(row.seq)


def _changes_serving(s: Session, obj) -> bool:
    if isinstance(obj, Deployment):
        return True
    if isinstance(obj, Robot):
        return obj in s.new or obj in s.deleted or inspect(obj).attrs.group.history.has_changes()
    if isinstance(obj, ApiToken):
        was_robot = obj.role == "robot" or "robot" in (inspect(obj).attrs.role.history.deleted or ())
        return was_robot and (obj in s.new or obj in s.deleted or any(
            inspect(obj).attrs[a].history.has_changes() for a in ("revoked_at_ns", "token_sha256", "robot_id", "role")))
    return False


def _before_flush(s: Session, _ctx, _instances) -> None:
    if any(_changes_serving(s, o) for o in (*s.new, *s.dirty, *s.deleted)):
        bump(s)


def track(factory: sessionmaker) -> None:
    """Every session from `factory` increments the number when it flushes a serving change."""
    event.listen(factory, "before_flush", _before_flush)
