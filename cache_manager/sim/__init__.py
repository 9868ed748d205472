"""Adapter-trace simulator: scenarios, one seeded run per policy, and the report."""
