"""The demo CRM's own table: its users (the plugin owns contacts, tags and views)."""

from __future__ import annotations

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash


class DemoBase(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=DemoBase)


class User(UserMixin, db.Model):
    __tablename__ = "crm_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(255))
    #: admin, marketer or sales: read by the plugin's default role loader.
    role: Mapped[str] = mapped_column(String(16))
    #: The organization this user works in (the plugin's workspace key).
    organization: Mapped[str] = mapped_column(String(80), default="default")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)
