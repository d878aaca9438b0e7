"""Payload revisions: a process may queue several outbox rows, one per changed payload.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

The outbox loses its one-row-per-process rule; `(process_id, revision)` is unique instead,
`content_hash` says what the revision holds (so an unchanged rerun queues nothing), and
`superseded` marks an undelivered revision that a newer one replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.drop_constraint(op.f("uq_outbox_process_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_outbox_process_id_revision"), ["process_id", "revision"])
        batch.drop_constraint(op.f("ck_outbox_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_outbox_status"), "status IN ('pending', 'delivered', 'failed', 'superseded')")


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE revision > 1")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_constraint(op.f("ck_outbox_status"), type_="check")
        batch.create_check_constraint(op.f("ck_outbox_status"),
                                      "status IN ('pending', 'delivered', 'failed')")
        batch.drop_constraint(op.f("uq_outbox_process_id_revision"), type_="unique")
        batch.create_unique_constraint(op.f("uq_outbox_process_id"), ["process_id"])
        batch.drop_column("content_hash")
        batch.drop_column("revision")
