"""The render system's tables (SQLAlchemy 2). The schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# A connection's execution options for one statement outside a transaction: no BEGIN and no ROLLBACK round trips.
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A user of the API. `token_hash` is the sha256 (hex) of their API token: the token itself is never
    stored. None for a user made before tokens existed, until `invoke seed-credits` gives them one."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("token_hash", name="uq_users_token_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class CreditEntry(Base):
    """Append-only: a balance is the sum of a user's entries. One charge and one refund per render."""

    __tablename__ = "credit_entries"
    __table_args__ = (
        UniqueConstraint("mjid", "reason", name="uq_credit_entries_mjid_reason"),
        CheckConstraint("reason in ('seed', 'charge', 'refund')", name="ck_credit_entries_reason"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(16))
    mjid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Render(Base):
    __tablename__ = "renders"
    mjid: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    quality: Mapped[str] = mapped_column(String(16))
    price: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WorkerCredential(Base):
    """A render worker's credential (`invoke worker-config`): the sha256 (hex) of its worker token, and since when
    it is revoked. A worker token lets its holder take part in the jobs it is given (start, heartbeat, report);
    it reads no user's data and no credit ledger. The worker's Redis user (provisioner.redis_acl) has the same name."""

    __tablename__ = "worker_credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def balance(session: Session, user_id: int) -> int:
    total = session.scalar(select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(CreditEntry.user_id == user_id))
    return int(total or 0)


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email))
