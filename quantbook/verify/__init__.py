"""Audit of published tables against their recipes."""

from .audit import AuditRow, audit, audit_one, compare, format_recipe, register_check

__all__ = ["AuditRow", "audit", "audit_one", "compare", "format_recipe", "register_check"]
