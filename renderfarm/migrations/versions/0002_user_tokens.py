"""users.token_hash: the sha256 of each user's API token (unique: a token finds its user by its hash)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("token_hash", sa.String(64), nullable=True))
    op.create_unique_constraint("uq_users_token_hash", "users", ["token_hash"])


def downgrade() -> None:
    op.drop_constraint("uq_users_token_hash", "users", type_="unique")
    op.drop_column("users", "token_hash")
