"""The wire contract: msgspec structs for every event a producer may publish."""
