"""Batch API jobs of a process (batch mode), so a crash never submits the same requests twice.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("job_key", sa.String(200), nullable=False),
        sa.Column("process_id", sa.String(200), nullable=False),
        sa.Column("batch_keys", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="submitting"),
        sa.Column("input_file_id", sa.String(200), nullable=True),
        sa.Column("provider_batch_id", sa.String(200), nullable=True),
        sa.Column("provider_status", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["process_id"], ["processes.id"],
                                name="fk_batch_jobs_process_id_processes"),
        sa.PrimaryKeyConstraint("job_key", name="pk_batch_jobs"),
    )
    op.create_index("ix_batch_jobs_process_id", "batch_jobs", ["process_id"])


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_process_id", table_name="batch_jobs")
    op.drop_table("batch_jobs")
