"""The gateway database's Alembic environment (SPEC §12): env.py and
versions/. Run through :mod:`alliance.migrations` (`alliance admin db
upgrade`); the version table is ``alembic_version_gateway``."""
