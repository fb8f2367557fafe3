"""Tenants: accounts, tiers, API keys, daily quotas and promised chunks."""
