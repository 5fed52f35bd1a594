"""Alembic runs this for every migration command; the configuration (the
connection, the schema kind) comes from alliance.migrations.config()."""
from alembic import context

from alliance.migrations import run_env

run_env(context)
