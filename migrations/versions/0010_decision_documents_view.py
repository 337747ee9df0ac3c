"""The view decision_documents: a decision's breakdown and state before as JSON documents

From this revision on, a decision row stores its two bulky documents (`breakdown`,
`state_before`) as their JSON text, a JSON string, which its hash covers as it is; rows
written before hold the documents themselves. Nothing stored changes. For SQL readers (a
compliance query), the view gives both kinds of row as documents:

    SELECT d.seq, x.breakdown -> 'sizing' FROM decisions d JOIN decision_documents x USING (id)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 15:00:00
"""
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

DOCUMENTS = ("breakdown", "state_before")


def _document(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"CASE WHEN jsonb_typeof({column}) = 'string' THEN ({column} #>> '{{}}')::jsonb ELSE {column} END"
    return f"CASE WHEN json_type({column}) = 'text' THEN json(json_extract({column}, '$')) ELSE {column} END"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    columns = ", ".join(f"{_document(c, dialect)} AS {c}" for c in DOCUMENTS)
    op.execute(f"CREATE VIEW decision_documents AS SELECT id, portfolio_id, seq, {columns} FROM decisions")
    if dialect == "postgresql":
        op.execute("GRANT SELECT ON decision_documents TO rpm_app")


def downgrade() -> None:
    op.execute("DROP VIEW decision_documents")
