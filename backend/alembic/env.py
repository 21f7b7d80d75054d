"""Alembic environment: the database URL comes from the same settings as the app."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

from app.config import AppConfig
from app.db import metadata

if context.config.config_file_name:
    fileConfig(context.config.config_file_name)

engine = create_engine(AppConfig.from_env().database_url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
