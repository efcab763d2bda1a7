"""Budgetfacile banksync: the library every service shares (events, settings, logging, auth, I/O helpers)."""
