"""The database: SQLite by default, Postgres (or anything SQLAlchemy speaks) via DATABASE_URL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import ForeignKey, String, Text, create_engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///helloagents.db")
engine = create_engine(DATABASE_URL, pool_pre_ping=True)
SessionLocal = sessionmaker(engine, expire_on_commit=False)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Lesson(Base):
    __tablename__ = "lessons"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)


class Submission(Base):
    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    lesson_id: Mapped[int] = mapped_column(ForeignKey("lessons.id"))
    code: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text, default="")
    success: Mapped[bool]
    created_at: Mapped[datetime] = mapped_column(default=_now)


class AgentRun(Base):
    __tablename__ = "agent_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    agent: Mapped[str] = mapped_column(String(80))
    prompt: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_now)


LESSONS = [
    ("Hello, agents", "What an agent is: a loop of thinking, acting and observing."),
    ("Tools", "Giving an agent functions it can call."),
    ("Memory", "What an agent remembers between steps, and why."),
    ("Evaluation", "Measuring whether an agent did the job."),
]
USERS = [(f"learner{n}", f"learner{n}@example.org") for n in range(1, 21)]


def create_schema() -> None:
    """Tables and the course content, on start-up. Every worker process runs it: one that
    collides with another doing the same (a table or row that appeared meanwhile) tries again
    and finds the work done."""
    for attempt in range(10):
        try:
            Base.metadata.create_all(engine)
            with Session(engine) as session, session.begin():
                if session.scalar(select(func.count()).select_from(Lesson)) == 0:
                    session.add_all(Lesson(title=t, content=c) for t, c in LESSONS)
                    session.add_all(User(name=n, email=e) for n, e in USERS)
            return
        except (IntegrityError, OperationalError):
            if attempt == 9:
                raise
            time.sleep(0.2)


def get_session() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


def ping() -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
