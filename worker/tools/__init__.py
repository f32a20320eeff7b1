"""Operator commands: one module each, thin over the core modules; never imported by them."""
