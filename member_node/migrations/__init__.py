"""The member database's Alembic environment (SPEC §12): env.py and
versions/. Run through :mod:`alliance.migrations` (`alliance member db
upgrade`); the version table is ``alembic_version_member``."""
