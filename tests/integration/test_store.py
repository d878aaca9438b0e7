"""The store on real databases: every test runs on a SQLite file and on PostgreSQL.

PostgreSQL tests use a database created for this test session (dropped at the end); they are
skipped, with the reason, only when the server at 127.0.0.1:5432 cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import StatementError

from qbq.errors import QbqError
from qbq.store import (
    BatchClaim,
    BatchRow,
    BatchSpec,
    OutboxRow,
    ProcessRow,
    Store,
    StoreStateError,
    acquire_batch_lease,
    complete_process,
    ensure_batches,
    ensure_process,
    get_batches,
    get_outbox,
    get_process,
    list_attempt_errors,
    mark_delivered,
    mark_delivery_failed,
    new_owner_id,
    pending_outbox,
    purge_raw_responses,
    record_attempt_error,
    record_batch_failure,
    record_batch_success,
    set_process_status,
)
from qbq.usage import Usage
from tests.support import PgServer, require_pg

REPO = Path(__file__).resolve().parents[2]
OWNER = new_owner_id()
HEAD = "0006"  # the newest migration (a new migration must update this on purpose)


def claim_batch(s: Any, key: str, owner: str = OWNER, lease_s: float = 600.0) -> BatchClaim:
    return acquire_batch_lease(s, key, owner=owner, now=datetime.now(UTC), lease_s=lease_s)

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_session_url(pg_server: PgServer | None) -> str | None:
    """One migrated database shared by the PostgreSQL tests of this session."""
    if pg_server is None:
        return None
    url = pg_server.create()
    store = Store(url)
    store.migrate()
    store.dispose()
    return url


@pytest.fixture(params=DIALECTS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgServer | None) -> str:
    """The URL of an empty, never migrated database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'qbq.db'}"
    return require_pg(pg_server).create()


@pytest.fixture(params=DIALECTS)
def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pg_server: PgServer | None,
    pg_session_url: str | None,
) -> Iterator[Store]:
    """A migrated store with empty tables."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'qbq.db'}")
        s.migrate()
    else:
        require_pg(pg_server)
        assert pg_session_url is not None
        s = Store(pg_session_url)
        with s.transaction() as session:
            session.execute(
                # CASCADE: every table that refers to these (batch jobs, ...) is emptied too
                text("TRUNCATE batch_attempts, outbox, batches, processes RESTART IDENTITY CASCADE")
            )
    yield s
    s.dispose()


def _new_process(store: Store, process_id: str = "p1", n_batches: int = 2) -> None:
    with store.transaction() as s:
        ensure_process(
            s,
            process_id=process_id,
            assessment_id="A1",
            model="gpt-4.1-mini",
            request_hash="hash-1",
            payload_format="native",
            n_students=4,
            n_batches=n_batches,
        )


def _specs(prefix: str = "k", n: int = 2) -> list[BatchSpec]:
    return [
        BatchSpec(
            idempotency_key=f"{prefix}{i}",
            batch_index=i,
            student_refs=[f"s{2 * i}", f"s{2 * i + 1}"],
            planned_prompt_tokens=1000 + i,
            max_completion_tokens=500,
            model="gpt-4.1-mini",
        )
        for i in range(n)
    ]


def _with_batches(store: Store, n: int = 2) -> list[str]:
    _new_process(store, n_batches=n)
    specs = _specs(n=n)
    with store.transaction() as s:
        ensure_batches(s, "p1", specs)
    return [spec.idempotency_key for spec in specs]


def _succeed(store: Store, key: str, *, result: dict[str, object], raw: str | None) -> bool:
    with store.transaction() as s:
        return record_batch_success(
            s,
            key,
            result=result,
            usage=Usage(replies=1, prompt_tokens=100, cached_tokens=20, completion_tokens=30,
                        reasoning_tokens=7, latency_ms=12.5),
            attempts=1,
            raw_response=raw,
        )


def _run_threads(n: int, target: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


# --- engine and migrations -------------------------------------------------------------------


def test_migrate_twice_is_idempotent(fresh_url: str) -> None:
    store = Store(fresh_url)
    try:
        store.migrate()
        store.migrate()
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            assert [v[0] for v in versions] == [HEAD]
            for table in ("processes", "batches", "batch_attempts", "outbox"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
    finally:
        store.dispose()


def test_concurrent_migrate_from_two_stores(fresh_url: str) -> None:
    stores = [Store(fresh_url) for _ in range(3)]
    barrier = threading.Barrier(len(stores))

    def migrate(i: int) -> None:
        barrier.wait(timeout=30)
        stores[i].migrate()

    try:
        assert _run_threads(len(stores), migrate) == []
        with stores[0].engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                (HEAD,)
            ]
    finally:
        for s in stores:
            s.dispose()


def test_alembic_command_line(fresh_url: str) -> None:
    cmd = [sys.executable, "-m", "alembic", "-c", "qbq/store/alembic.ini"]
    env = {**os.environ, "QBQ_DATABASE_URL": "sqlite:///never-used.db"}
    proc = subprocess.run(
        [*cmd, "-x", f"url={fresh_url}", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (REPO / "never-used.db").exists()
    store = Store(fresh_url)
    try:
        store.migrate()  # already at head: nothing to do
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
                HEAD
            )
    finally:
        store.dispose()


def test_engine_settings(store: Store) -> None:
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
        else:
            assert store.engine.pool._pre_ping  # type: ignore[attr-defined]


def test_timestamps_are_aware_utc_and_naive_is_refused(store: Store) -> None:
    _new_process(store)
    with store.transaction() as s:
        process = get_process(s, "p1")
        assert process is not None
        assert process.created_at.utcoffset() == timedelta(0)
        assert process.updated_at.tzinfo is not None
    with pytest.raises(StatementError, match="naive datetime"), store.transaction() as s:
        pending_outbox(s, now=datetime(2030, 1, 1))


# --- processes --------------------------------------------------------------------------------


def test_ensure_process_inserts_once_and_returns_existing(store: Store) -> None:
    _new_process(store)
    with store.transaction() as s:
        again = ensure_process(
            s,
            process_id="p1",
            assessment_id="other",
            model="other",
            request_hash="hash-2",
            payload_format="legacy",
            n_students=9,
            n_batches=9,
        )
        assert (again.request_hash, again.status, again.n_batches) == ("hash-1", "planned", 2)
        assert s.scalar(select(func.count()).select_from(ProcessRow)) == 1
    with store.transaction() as s:
        assert get_process(s, "missing") is None


def test_process_state_rules(store: Store) -> None:
    _new_process(store)
    with store.transaction() as s:
        set_process_status(s, "p1", "grading")
        set_process_status(s, "p1", "failed", summary={"failed": 1})
    with store.transaction() as s:
        process = get_process(s, "p1")
        assert process is not None and process.completed_at is not None
        set_process_status(s, "p1", "grading")  # a failed process may be graded again
        process = get_process(s, "p1")
        assert process is not None and process.completed_at is None
        set_process_status(s, "p1", "completed", summary={"ok": 4})
    for status in ("grading", "failed", "planned"):
        with pytest.raises(StoreStateError, match="completed"), store.transaction() as s:
            set_process_status(s, "p1", status)  # type: ignore[arg-type]
    with pytest.raises(StoreStateError, match="no process"), store.transaction() as s:
        set_process_status(s, "nope", "grading")
    with store.transaction() as s:
        process = get_process(s, "p1")
        assert process is not None
        assert (process.status, process.summary) == ("completed", {"ok": 4})
    assert issubclass(StoreStateError, QbqError) and StoreStateError.stage == "store"


# --- batches ----------------------------------------------------------------------------------


def test_ensure_batches_twice_inserts_once(store: Store) -> None:
    _new_process(store)
    with store.transaction() as s:
        first = ensure_batches(s, "p1", _specs())
    assert sorted(first) == ["k0", "k1"]
    assert first["k1"].student_refs == ["s2", "s3"]
    assert (first["k1"].status, first["k1"].attempts) == ("pending", 0)
    with store.transaction() as s:
        claim_batch(s, "k0")
        second = ensure_batches(s, "p1", _specs(n=3))  # k0 and k1 exist; k2 is new
        assert second["k0"].status == "running"  # existing rows are not reset
        assert s.scalar(select(func.count()).select_from(BatchRow)) == 3
        assert ensure_batches(s, "p1", []) == {}


def test_ensure_batches_refuses_a_key_of_another_process(store: Store) -> None:
    _with_batches(store)
    _new_process(store, "p2")
    with pytest.raises(StoreStateError, match="belongs to process"), store.transaction() as s:
        ensure_batches(s, "p2", _specs(n=1))


def test_concurrent_ensure_batches(store: Store) -> None:
    _new_process(store, n_batches=50)
    specs = _specs(n=50)
    n_threads = 4
    barrier = threading.Barrier(n_threads)

    def plan(i: int) -> None:
        # Every thread plans the same batches, in its own order and transaction.
        mine = specs[i:] + specs[:i]
        barrier.wait(timeout=30)  # all start together (SQLite then queues their transactions)
        with store.transaction() as s:
            ensure_batches(s, "p1", mine)

    assert _run_threads(n_threads, plan) == []
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BatchRow)) == 50
        assert len(get_batches(s, [spec.idempotency_key for spec in specs])) == 50


def test_get_batches_many_keys(store: Store) -> None:
    _new_process(store, n_batches=1200)
    specs = _specs(n=1200)
    with store.transaction() as s:
        ensure_batches(s, "p1", specs)
    with store.transaction() as s:
        found = get_batches(s, [spec.idempotency_key for spec in specs] + ["missing"])
    assert len(found) == 1200
    assert found["k1199"].batch_index == 1199


def test_claim_and_success(store: Store) -> None:
    _with_batches(store)
    with store.transaction() as s:
        assert claim_batch(s, "k0") == "claimed"
        # another live run holding the lease: busy; a run on another host too
        assert claim_batch(s, "k0", owner=new_owner_id()) == "busy"
        assert claim_batch(s, "k0", owner="elsewhere:1:abc") == "busy"
    assert _succeed(store, "k0", result={"grades": [1]}, raw="raw-0") is True
    with store.transaction() as s:
        batch = get_batches(s, ["k0"])["k0"]
        assert batch.status == "succeeded"
        assert batch.result == {"grades": [1]}
        assert (batch.prompt_tokens, batch.cached_tokens, batch.completion_tokens,
                batch.reasoning_tokens) == (100, 20, 30, 7)
        assert (batch.latency_ms, batch.attempts, batch.raw_response) == (12.5, 1, "raw-0")
        assert batch.usage == Usage(replies=0, prompt_tokens=100, cached_tokens=20,
                                    completion_tokens=30, reasoning_tokens=7, latency_ms=12.5)
        assert claim_batch(s, "k0") == "done"


def test_success_never_overwrites_a_succeeded_batch(store: Store) -> None:
    _with_batches(store)
    with store.transaction() as s:
        claim_batch(s, "k0")
    assert _succeed(store, "k0", result={"grades": ["first"]}, raw="first") is True
    assert _succeed(store, "k0", result={"grades": ["late"]}, raw="late") is False
    with store.transaction() as s:
        wrote = record_batch_failure(
            s, "k0", error_type="ProviderTimeoutError", stage="provider", detail="x", attempts=4
        )
        assert wrote is False  # never downgraded
        batch = get_batches(s, ["k0"])["k0"]
        assert (batch.status, batch.result, batch.raw_response) == (
            "succeeded",
            {"grades": ["first"]},
            "first",
        )
        assert batch.error_type is None


def test_failure_then_retry_then_success(store: Store) -> None:
    _with_batches(store)
    with store.transaction() as s:
        claim_batch(s, "k1")
        assert record_batch_failure(
            s, "k1", error_type="RateLimitedError", stage="provider", detail="429", attempts=4
        )
        batch = get_batches(s, ["k1"])["k1"]
        assert (batch.status, batch.error_type, batch.error_stage, batch.attempts) == (
            "failed",
            "RateLimitedError",
            "provider",
            4,
        )
    with store.transaction() as s:
        assert claim_batch(s, "k1") == "claimed"  # failed → running
        assert get_batches(s, ["k1"])["k1"].attempts == 4  # claim leaves attempts alone
    assert _succeed(store, "k1", result={"ok": True}, raw=None) is True
    with store.transaction() as s:
        batch = get_batches(s, ["k1"])["k1"]
        assert (batch.status, batch.error_type, batch.attempts) == ("succeeded", None, 1)


def test_illegal_batch_transitions_raise(store: Store) -> None:
    _with_batches(store)
    with pytest.raises(StoreStateError, match="pending → succeeded"):
        _succeed(store, "k0", result={}, raw=None)  # never claimed
    with pytest.raises(StoreStateError, match="pending → failed"), store.transaction() as s:
        record_batch_failure(s, "k0", error_type="E", stage="grade", detail="d", attempts=1)
    with pytest.raises(StoreStateError, match="no batch"), store.transaction() as s:
        claim_batch(s, "missing")
    with pytest.raises(StoreStateError, match="no batch"), store.transaction() as s:
        record_attempt_error(s, "missing", attempt=1, error_type="E", stage="grade", detail="d")
    with store.transaction() as s:
        assert get_batches(s, ["k0"])["k0"].status == "pending"


def test_attempt_errors(store: Store) -> None:
    _with_batches(store)
    with store.transaction() as s:
        record_attempt_error(
            s, "k0", attempt=2, error_type="ResponseSchemaError", stage="response", detail="bad"
        )
        record_attempt_error(
            s, "k0", attempt=1, error_type="RateLimitedError", stage="provider", detail="x" * 900
        )
    with store.transaction() as s:
        errors = list_attempt_errors(s, "k0")
        assert list_attempt_errors(s, "k1") == []
    assert [(e.attempt, e.error_type, e.stage) for e in errors] == [
        (1, "RateLimitedError", "provider"),
        (2, "ResponseSchemaError", "response"),
    ]
    assert len(errors[0].detail) == 500 and errors[0].detail.endswith("…")
    assert errors[1].detail == "bad"


def test_purge_keeps_result_and_drops_raw_response(store: Store) -> None:
    keys = _with_batches(store, n=3)
    for key in keys:
        with store.transaction() as s:
            claim_batch(s, key)
        _succeed(store, key, result={"key": key}, raw=f"raw {key}")
    with store.transaction() as s:
        assert purge_raw_responses(s, older_than=datetime(2000, 1, 1, tzinfo=UTC)) == 0
        assert purge_raw_responses(s, ["k0"]) == 1
        assert purge_raw_responses(s, ["k0"]) == 0
        assert purge_raw_responses(s, []) == 0
    with store.transaction() as s:
        batches = get_batches(s, keys)
        assert batches["k0"].raw_response is None and batches["k0"].result == {"key": "k0"}
        assert batches["k1"].raw_response == "raw k1"
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert purge_raw_responses(s, older_than=later) == 2
    with store.transaction() as s:
        batches = get_batches(s, keys)
        assert all(b.raw_response is None for b in batches.values())
        assert [batches[k].result for k in keys] == [{"key": k} for k in keys]
        assert all(b.status == "succeeded" for b in batches.values())


# --- completion and outbox --------------------------------------------------------------------


def _complete(store: Store, process_id: str, *, payload: dict[str, object] | None = None) -> int:
    with store.transaction() as s:
        row = complete_process(
            s,
            process_id,
            status="completed",
            summary={"students": 4},
            payload=payload if payload is not None else {"process": process_id},
            target_url="https://results.example/api",
            delivery_key=f"deliver-{process_id}",
        )
    assert row is not None
    return row.id


def test_complete_process_writes_status_and_outbox_in_one_transaction(store: Store) -> None:
    _new_process(store)
    with pytest.raises(RuntimeError, match="crash"), store.transaction() as s:
        row = complete_process(
            s,
            "p1",
            status="completed",
            summary={"students": 4},
            payload={"grades": []},
            target_url="https://results.example/api",
            delivery_key="deliver-p1",
        )
        assert row is not None and row.status == "pending"
        raise RuntimeError("crash before commit")
    with store.transaction() as s:
        process = get_process(s, "p1")
        assert process is not None
        assert (process.status, process.summary, process.completed_at) == ("planned", None, None)
        assert get_outbox(s, "p1") is None

    _complete(store, "p1", payload={"grades": [1]})
    with store.transaction() as s:
        first = get_process(s, "p1")
        assert first is not None and first.completed_at is not None
    _complete(store, "p1", payload={"grades": ["again"]})  # repeated: no second outbox row
    with store.transaction() as s:
        process = get_process(s, "p1")
        assert process is not None
        assert (process.status, process.summary) == ("completed", {"students": 4})
        assert process.completed_at == first.completed_at
        outbox = get_outbox(s, "p1")
        assert outbox is not None
        assert (outbox.payload, outbox.idempotency_key, outbox.attempts) == (
            {"grades": [1]},
            "deliver-p1",
            0,
        )
        assert s.scalar(select(func.count()).select_from(OutboxRow)) == 1


def test_complete_process_without_target_queues_nothing(store: Store) -> None:
    _new_process(store)
    with store.transaction() as s:
        row = complete_process(
            s,
            "p1",
            status="failed",
            summary={"failed": 2},
            payload=None,
            target_url=None,
            delivery_key="deliver-p1",
        )
        assert row is None
        process = get_process(s, "p1")
        assert process is not None and process.status == "failed"
    with pytest.raises(ValueError, match="completed or failed"), store.transaction() as s:
        complete_process(
            s, "p1", status="grading", summary={}, payload=None, target_url=None, delivery_key="x"
        )


def test_outbox_delivery_cycle(store: Store) -> None:
    for pid in ("p1", "p2", "p3"):
        _new_process(store, pid)
    ids = {pid: _complete(store, pid) for pid in ("p1", "p2", "p3")}
    now = datetime.now(UTC) + timedelta(seconds=1)
    with store.transaction() as s:
        due = pending_outbox(s, now=now)
        assert [r.process_id for r in due] == ["p1", "p2", "p3"]
        assert [r.process_id for r in pending_outbox(s, now=now, limit=2)] == ["p1", "p2"]
        assert pending_outbox(s, now=now - timedelta(hours=1)) == []

        assert mark_delivered(s, ids["p1"], at=now) is True
        assert mark_delivered(s, ids["p1"], at=now) is False  # already delivered
        retry_at = now + timedelta(minutes=5)
        assert mark_delivery_failed(s, ids["p2"], error="HTTP 503", next_attempt_at=retry_at)
        assert mark_delivery_failed(
            s, ids["p3"], error="HTTP 400", next_attempt_at=now, give_up=True
        )
        assert mark_delivery_failed(s, ids["p3"], error="x", next_attempt_at=now) is False
    with pytest.raises(StoreStateError, match="no outbox row"), store.transaction() as s:
        mark_delivered(s, 999_999, at=now)
    with store.transaction() as s:
        p1, p2, p3 = (get_outbox(s, pid) for pid in ("p1", "p2", "p3"))
        assert p1 is not None and p2 is not None and p3 is not None
        assert (p1.status, p1.attempts, p1.delivered_at) == ("delivered", 1, now)
        assert (p2.status, p2.attempts, p2.last_error) == ("pending", 1, "HTTP 503")
        assert p2.next_attempt_at == retry_at
        assert (p3.status, p3.attempts, p3.last_error) == ("failed", 1, "HTTP 400")
        assert pending_outbox(s, now=now) == []
        assert [r.process_id for r in pending_outbox(s, now=retry_at)] == ["p2"]


def test_pending_outbox_rows_are_locked_for_one_sender(store: Store) -> None:
    if store.dialect != "postgresql":
        pytest.skip("row locks (FOR UPDATE SKIP LOCKED) exist only on PostgreSQL")
    for pid in ("p1", "p2"):
        _new_process(store, pid)
        _complete(store, pid)
    now = datetime.now(UTC) + timedelta(seconds=1)
    with store.transaction() as first:
        taken = pending_outbox(first, now=now, limit=1)
        assert [r.process_id for r in taken] == ["p1"]
        seen: list[str] = []

        def other_sender(_: int) -> None:
            with store.transaction() as second:
                seen.extend(r.process_id for r in pending_outbox(second, now=now))

        assert _run_threads(1, other_sender) == []
        assert seen == ["p2"]


def test_leases_of_dead_or_expired_owners_are_taken_over(store: Store) -> None:
    _with_batches(store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_owner = f"{OWNER.split(':')[0]}:{dead.stdout.strip()}:dead"
    with store.transaction() as s:
        assert claim_batch(s, "k0", owner=dead_owner) == "claimed"
        assert claim_batch(s, "k0") == "claimed"  # its process is gone: taken over at once
        assert claim_batch(s, "k1", owner="elsewhere:1:abc", lease_s=-1) == "claimed"
        assert claim_batch(s, "k1") == "claimed"  # another host's lease, but expired
