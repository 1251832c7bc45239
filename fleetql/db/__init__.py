"""PostgreSQL: tables, the engine and its sessions, and the queries the rest of fleetql runs.

Nothing here knows GraphQL; callers hand in plain values and get rows back.
"""
