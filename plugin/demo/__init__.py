"""A small host CRM that mounts the plugin: users with roles, contacts, tags, views, import."""

from .app import create_app

__all__ = ["create_app"]
