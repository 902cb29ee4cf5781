"""PostgreSQL, the system of record: migrations and data access (parameterized SQL only)."""
