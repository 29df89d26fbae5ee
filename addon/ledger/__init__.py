"""The audit ledger: its tables, its writer, payload halves and the price table."""
