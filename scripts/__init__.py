"""Drivers above the packages: the demo (`python -m scripts.demo`, its corpus,
stages, sizes and report).

They may use every package (docs/INTERFACES.md "Layout"); nothing imports them.
"""
