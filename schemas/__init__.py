"""Event and API models and topic declarations. No I/O lives here."""
