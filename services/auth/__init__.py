"""API keys, dashboard accounts, and the principal every catalog call carries."""
