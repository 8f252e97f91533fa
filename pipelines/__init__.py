"""Pipeline definitions and their compile/run entry points (they only compose components)."""
