"""Store outages (issue 15, item 4): a PostgreSQL behind a loopback proxy that drops every
connection is waited out for up to QBQ_DB_OUTAGE_S; a longer outage and a persistent error
(a read-only database) end in one `StoreUnavailableError` naming the store and the cause."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import make_url

from qbq import pipeline
from qbq.errors import StoreUnavailableError
from qbq.grading import grade_batch
from qbq.preparation import Prepared, prepare
from qbq.sample import write_sample
from qbq.settings import GradingPolicy, QbqSettings
from qbq.store import Store, repository
from qbq.store.models import BatchRow, ProcessRow
from qbq.testing.fakes import FakeClock, ScriptedProvider, fake_run
from qbq.testing.tcp_proxy import TcpProxy
from tests.support import PgServer, require_pg


@pytest.fixture(scope="module")
def proxied_url(pg_server: PgServer | None) -> Iterator[tuple[str, TcpProxy]]:
    """A migrated PostgreSQL database reached through a proxy that can fail."""
    url = make_url(require_pg(pg_server).create())
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port, password="s3cret-pw")
        text = proxied.render_as_string(hide_password=False)
        store = Store(text)
        store.migrate()
        store.dispose()
        yield text, proxy


def _outage_until(proxy: TcpProxy, release: threading.Event) -> threading.Thread:
    started = threading.Event()

    def run() -> None:
        with proxy.outage():
            started.set()
            release.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    return thread


def test_a_transaction_waits_out_an_outage_and_then_writes(
        proxied_url: tuple[str, TcpProxy]) -> None:
    url, proxy = proxied_url
    release = threading.Event()
    refused_before = proxy.refused

    def sleep_then_end_outage(seconds: float) -> None:
        if proxy.refused - refused_before >= 3:  # the store kept trying during the outage
            release.set()
        threading.Event().wait(min(seconds, 0.05))

    store = Store(url, outage_s=30, sleep=sleep_then_end_outage)
    try:
        with store.transaction() as session:
            session.execute(select(1))  # a pooled connection, about to be dropped
        thread = _outage_until(proxy, release)
        with store.transaction() as session:
            repository.ensure_process(session, process_id="outage-1", assessment_id="a",
                                      model="m", request_hash="h", payload_format="native",
                                      n_students=1, n_batches=1)
        thread.join(5)
        assert proxy.refused - refused_before >= 3
        with store.transaction() as session:
            assert session.get(ProcessRow, "outage-1") is not None
    finally:
        release.set()
        store.dispose()


def test_an_outage_longer_than_the_budget_is_one_clear_error(
        proxied_url: tuple[str, TcpProxy]) -> None:
    url, proxy = proxied_url
    release = threading.Event()
    thread = _outage_until(proxy, release)
    store = Store(url, outage_s=0.3)
    try:
        with pytest.raises(StoreUnavailableError) as info, store.transaction() as session:
            session.execute(select(1))
        message = info.value.message
        assert f"127.0.0.1:{proxy.port}" in message and "unreachable" in message
        assert "QBQ_DB_OUTAGE_S=0.3" in message and "s3cret-pw" not in message
    finally:
        release.set()
        thread.join(5)
        store.dispose()


def test_a_read_only_database_is_a_persistent_error_naming_the_cause(tmp_path: Path) -> None:
    path = tmp_path / "qbq.db"
    writable = Store(f"sqlite:///{path}")
    writable.migrate()
    writable.dispose()
    store = Store(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with pytest.raises(StoreUnavailableError) as info, store.transaction() as session:
            repository.ensure_process(session, process_id="p", assessment_id="a", model="m",
                                      request_hash="h", payload_format="native",
                                      n_students=1, n_batches=1)
        assert info.value.message.endswith("failed: the database is read-only")
    finally:
        store.dispose()


class _Cut:
    """A store whose connection drops when the first statement starting with `statement` runs
    (mid-transaction); the outage ends once the store has tried to reconnect 3 times."""

    def __init__(self, url: str, proxy: TcpProxy, statement: str,
                 also: str = "") -> None:
        self.proxy, self.statement, self.also = proxy, statement, also
        self.release = threading.Event()
        self.refused_before = proxy.refused
        self.outages: list[threading.Thread] = []
        self.store = Store(url, outage_s=30, sleep=self._sleep)
        event.listen(self.store.engine, "before_cursor_execute", self._hook)

    @property
    def refusals(self) -> int:
        return self.proxy.refused - self.refused_before

    def _sleep(self, seconds: float) -> None:
        if self.refusals >= 3:
            self.release.set()
        threading.Event().wait(min(seconds, 0.05))

    def _hook(self, _conn: object, _cursor: object, statement: str, *_: object) -> None:
        if not self.outages and statement.startswith(self.statement) and self.also in statement:
            self.outages.append(_outage_until(self.proxy, self.release))

    def close(self) -> None:
        self.release.set()
        for thread in self.outages:
            thread.join(5)
        self.store.dispose()


def _prepared(folder: Path, seed: int) -> Prepared:
    request = write_sample(folder / "s", students=2, pages=1, questions=2, seed=seed)
    return prepare(request, settings=QbqSettings(page_cache_dir=str(folder / "cache")),
                   policy=GradingPolicy())


def test_a_paid_reply_is_held_through_an_outage_and_written_once_the_store_is_back(
        proxied_url: tuple[str, TcpProxy], tmp_path: Path) -> None:
    """The connection drops as the batch's result is written: the reply is not dropped, the
    batch is written once the store is back, and the model was called once."""
    url, proxy = proxied_url
    prepared = _prepared(tmp_path, seed=3)
    cut = _Cut(url, proxy, "UPDATE batches", also="result=")
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions])
    try:
        pipeline.register(cut.store, prepared, QbqSettings(database_url=url))
        batch = prepared.plan.batches[0]
        outcome = grade_batch(batch, prepared.request,
                              fake_run(cut.store, provider, FakeClock()).deps)
        assert outcome.status == "succeeded" and len(provider.calls) == 1
        assert cut.outages and cut.refusals >= 3  # the write was cut, then replayed
        with cut.store.transaction() as session:
            row = repository.get_batches(session, [batch.idempotency_key])[batch.idempotency_key]
            assert row.status == "succeeded" and row.result is not None
    finally:
        cut.close()


def test_registering_a_run_is_replayed_when_its_connection_drops(
        proxied_url: tuple[str, TcpProxy], tmp_path: Path) -> None:
    url, proxy = proxied_url
    prepared = _prepared(tmp_path, seed=4)
    cut = _Cut(url, proxy, "INSERT INTO batches")
    try:
        pipeline.register(cut.store, prepared, QbqSettings(database_url=url))
        assert cut.outages and cut.refusals >= 3
        keys = [b.idempotency_key for b in prepared.plan.batches]
        with cut.store.transaction() as session:
            assert session.get(ProcessRow, prepared.plan.process_id) is not None
            assert set(repository.get_batches(session, keys)) == set(keys)
    finally:
        cut.close()


def _disk_full_on_results(store: Store) -> None:
    """Writing a batch's result fails as a full disk does (SQLITE_FULL); the rest works."""

    def hook(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE batches") and "result=" in statement:
            full = sqlite3.OperationalError("database or disk is full")
            full.sqlite_errorcode = 13  # SQLITE_FULL
            raise full

    event.listen(store.engine, "before_cursor_execute", hook)


def test_a_full_disk_stops_the_run_once_and_the_paid_reply_is_written_by_the_rerun(
        tmp_path: Path) -> None:
    """The first batch's reply is paid and its write meets a full disk: the store stops (one
    error naming the store and the cause), the reply goes to the spill folder, the next batch
    fails without a model call; the rerun writes the kept reply without paying again."""
    url = f"sqlite:///{tmp_path / 'qbq.db'}"
    request = write_sample(tmp_path / "s", students=3, pages=1, questions=2, seed=5)
    settings = QbqSettings(page_cache_dir=str(tmp_path / "cache"), database_url=url)
    prepared = prepare(request, settings=settings,
                       policy=GradingPolicy(max_students_per_batch=1))
    first, second = prepared.plan.batches[:2]
    provider = ScriptedProvider([q.question_number for q in prepared.request.questions])
    store = Store(url)
    store.migrate()
    pipeline.register(store, prepared, settings)
    _disk_full_on_results(store)
    deps = fake_run(store, provider, FakeClock()).deps
    deps.spill_dir = tmp_path / "spill"
    try:
        with pytest.raises(StoreUnavailableError) as info:
            grade_batch(first, prepared.request, deps)
        assert info.value.message == f"the store {tmp_path / 'qbq.db'} failed: the disk is full"
        assert len(provider.calls) == 1 and len(list(deps.spill_dir.iterdir())) == 1
        with pytest.raises(StoreUnavailableError, match="the disk is full"):
            grade_batch(second, prepared.request, deps)
        assert len(provider.calls) == 1  # stopped: no model call paid for nothing
    finally:
        store.dispose()

    rerun = Store(url)  # the disk has room again; the first run's process and lease are gone
    with rerun.transaction() as session:
        session.execute(update(BatchRow).values(lease_expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    deps = fake_run(rerun, provider, FakeClock()).deps
    deps.spill_dir = tmp_path / "spill"
    try:
        outcome = grade_batch(first, prepared.request, deps)
        assert outcome.status == "succeeded" and outcome.n_graded == 1
        assert len(provider.calls) == 1  # the kept reply, not a new one
        assert list(deps.spill_dir.iterdir()) == []
        with rerun.transaction() as session:
            row = repository.get_batches(session, [first.idempotency_key])[first.idempotency_key]
            assert row.status == "succeeded" and row.result is not None
            assert set(row.result["students"]) == {first.refs[0]}
    finally:
        rerun.dispose()
