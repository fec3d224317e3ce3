"""Accounts: email + password users and expiring API tokens."""
