"""ORM tables of the store: processes, their batches, failed batch attempts and the delivery outbox.

Every datetime is timezone-aware UTC in Python, whatever the database keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from qbq.usage import Usage

__all__ = [
    "BATCH_STATUSES",
    "OUTBOX_STATUSES",
    "PROCESS_STATUSES",
    "Base",
    "BatchAttemptRow",
    "BatchJobRow",
    "BatchRow",
    "BatchStatus",
    "OutboxRow",
    "OutboxStatus",
    "ProcessRow",
    "ProcessStatus",
    "UTCDateTime",
    "utcnow",
]

ProcessStatus = Literal["planned", "grading", "completed", "failed"]
BatchStatus = Literal["pending", "running", "succeeded", "failed"]
OutboxStatus = Literal["pending", "delivered", "failed", "superseded"]

PROCESS_STATUSES: tuple[ProcessStatus, ...] = ("planned", "grading", "completed", "failed")
BATCH_STATUSES: tuple[BatchStatus, ...] = ("pending", "running", "succeeded", "failed")
OUTBOX_STATUSES: tuple[OutboxStatus, ...] = ("pending", "delivered", "failed", "superseded")

#: Constraint names are deterministic so later (batch-mode) migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as UTC and read back timezone-aware; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store needs timezone-aware datetimes")
        value = value.astimezone(UTC)
        # SQLite has no time zones: keep naive UTC there so text comparisons stay correct.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base holding the store's metadata."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class StoreMetaRow(Base):
    """One row naming this database: cached task results are scoped to `instance_id`."""

    __tablename__ = "store_meta"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64))


class ProcessRow(Base):
    """One grading process (one request), identified by its process id."""

    __tablename__ = "processes"
    __table_args__ = (CheckConstraint(_in("status", PROCESS_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    assessment_id: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(20), default="planned", server_default="planned")
    payload_format: Mapped[str] = mapped_column(String(20))
    n_students: Mapped[int] = mapped_column(Integer)
    n_batches: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchRow(Base):
    """One batch of students graded in one model request; keyed by its idempotency key."""

    __tablename__ = "batches"
    __table_args__ = (CheckConstraint(_in("status", BATCH_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    process_id: Mapped[str] = mapped_column(ForeignKey("processes.id"), index=True)
    batch_index: Mapped[int] = mapped_column(Integer)
    student_refs: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    planned_prompt_tokens: Mapped[int] = mapped_column(Integer)
    max_completion_tokens: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    cached_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float | None] = mapped_column(default=None)
    model: Mapped[str] = mapped_column(String(200))
    error_type: Mapped[str | None] = mapped_column(String(100), default=None)
    error_stage: Mapped[str | None] = mapped_column(String(50), default=None)
    error_detail: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    raw_response: Mapped[str | None] = mapped_column(Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def usage(self) -> Usage:
        """What this batch's model replies cost (zeros while it has none)."""
        return Usage.from_counts(
            replies=int((self.result or {}).get("model_calls", 0)),
            prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens, reasoning_tokens=self.reasoning_tokens,
            latency_ms=self.latency_ms)


class BatchAttemptRow(Base):
    """One failed attempt at a batch: what failed, where, and a short detail."""

    __tablename__ = "batch_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(ForeignKey("batches.idempotency_key"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxRow(Base):
    """One revision of a process's results payload, waiting to be (or already) delivered.

    A finalize whose payload differs from the last revision queued adds revision N + 1
    (`content_hash` tells them apart); an undelivered older revision is then `superseded`.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("status", OUTBOX_STATUSES), name="status"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        UniqueConstraint("process_id", "revision", name="uq_outbox_process_id_revision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    process_id: Mapped[str] = mapped_column(ForeignKey("processes.id"))
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    target_url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class BatchJobRow(Base):
    """One Batch API job of a process (batch mode): recorded before it is submitted, its
    provider batch id stored the moment it exists, so a rerun resumes it instead of submitting
    the same planned requests again. `status`: submitting → submitted → collected."""

    __tablename__ = "batch_jobs"

    job_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    process_id: Mapped[str] = mapped_column(ForeignKey("processes.id"), index=True)
    #: The planned batches (idempotency keys) the job's input lines carry, as `custom_id`s.
    batch_keys: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="submitting",
                                        server_default="submitting")
    input_file_id: Mapped[str | None] = mapped_column(String(200), default=None)
    provider_batch_id: Mapped[str | None] = mapped_column(String(200), default=None)
    provider_status: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PageContentRow(Base):
    """The content first seen under a declared page id of an assessment (issue 15).

    A later request that declares the same id with other content is refused unless it asks to
    regrade, so new scans never pick up the marks of old ones.
    """

    __tablename__ = "page_contents"

    assessment_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: sha256 hex of the page's original file (with `#p<n>` for page n of a multi-page file).
    content_sha: Mapped[str] = mapped_column(String(100))
    process_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SubmittedRequestRow(Base):
    """A request stored by `qbq submit`, so a flow run takes its id instead of the request:
    Prefect keeps flow-run parameters in clear, and a request holds image bytes, signed URLs
    and instructions (issue 15)."""

    __tablename__ = "submitted_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The request JSON as submitted.
    body: Mapped[str] = mapped_column(Text)
    #: Folder its relative page paths resolve against.
    base_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
