"""Skill tables (SQLAlchemy Core), on the shared metadata; migration 0007 creates them."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from palyra.storage.schema import metadata

# Trusted publisher keys. A publisher may hold several keys (rotation); key_id = sha256(raw)[:16] hex.
skill_publishers = Table(
    "skill_publishers",
    metadata,
    Column("publisher", String(64), primary_key=True),
    Column("key_id", String(16), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("added_at", Float, nullable=False),
)

# Installed skill versions. ``files`` is the verified {path: sha256} map the re-audit checks against;
# exactly one version per skill_id has current = true.
skills = Table(
    "skills",
    metadata,
    Column("skill_id", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("publisher", String(64), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("capabilities", Text, nullable=False),
    Column("path", String(1000), nullable=False),
    Column("files", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("installed_at", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("quarantine_reasons", Text, nullable=True),
    Column("quarantined_at", Float, nullable=True),
    Column("last_audit_at", Float, nullable=True),
    Column("current", Boolean, nullable=False),
)
Index("ix_skills_current", skills.c.skill_id, skills.c.current)
