"""The SQL helpers the store modules share (`qbq.store.sql`), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from qbq.store import ProcessRow, Store
from qbq.store.sql import CHUNK, chunks, insert_ignore, rowcount
from tests.support import PgServer, require_pg

DIALECTS = ["sqlite", "postgresql"]


@pytest.fixture(params=DIALECTS)
def store(request: pytest.FixtureRequest, tmp_path: Path,
          pg_server: PgServer | None) -> Iterator[Store]:
    url = (require_pg(pg_server).create() if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'qbq.db'}")
    store = Store(url)
    store.migrate()
    yield store
    store.dispose()


def _process(process_id: str, n_batches: int) -> dict[str, object]:
    return {"id": process_id, "assessment_id": "a", "model": "gpt-4.1-mini", "request_hash": "h",
            "payload_format": "native", "n_students": 1, "n_batches": n_batches}


def test_insert_ignore_keeps_the_first_row_of_a_key(store: Store) -> None:
    with store.transaction() as s:
        insert_ignore(s, ProcessRow, [_process("p1", 2)], conflict=["id"])
        insert_ignore(s, ProcessRow, [_process("p1", 9), _process("p2", 3)], conflict=["id"])
    with store.transaction() as s:
        rows = dict(s.execute(select(ProcessRow.id, ProcessRow.n_batches)).tuples().all())
    assert rows == {"p1": 2, "p2": 3}


def test_rowcount_counts_the_rows_an_update_matched(store: Store) -> None:
    with store.transaction() as s:
        insert_ignore(s, ProcessRow, [_process(f"p{i}", 1) for i in range(3)], conflict=["id"])
        matched = rowcount(s.execute(update(ProcessRow).where(ProcessRow.id != "p0")
                                     .values(n_batches=5)))
        assert matched == 2
        assert s.scalar(select(func.sum(ProcessRow.n_batches))) == 11


def test_chunks_drop_repeats_and_cut_at_the_chunk_size() -> None:
    keys = [f"k{i}" for i in range(CHUNK + 10)] + ["k0", "k1"]
    parts = list(chunks(keys))
    assert [len(p) for p in parts] == [CHUNK, 10]
    assert [k for p in parts for k in p] == [f"k{i}" for i in range(CHUNK + 10)]
