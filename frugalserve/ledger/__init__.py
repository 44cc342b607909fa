"""The budget ledger: exact per-tenant reservations, settlements and rate limits (SQLite, Redis)."""
