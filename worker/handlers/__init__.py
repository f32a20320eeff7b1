"""Event handlers: one per event type, each writing a batch with set-based SQL."""
