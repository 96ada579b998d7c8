"""Audit of published tables against their recipes."""

from .audit import AuditRow, audit, audit_one, compare, format_recipe, register_check
from . import optimality  # noqa: F401,E402  (registers the optimality checks)

__all__ = ["AuditRow", "audit", "audit_one", "compare", "format_recipe", "register_check"]
