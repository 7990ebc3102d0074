"""Demo CRM pages (views); routes join the ``crm`` blueprint of ``views.py``."""

from __future__ import annotations

from .views import bp

__all__ = ["bp"]
