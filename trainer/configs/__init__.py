"""Trainer `get_config()` files; `base.py` holds every field with its meaning."""
