"""dist_int: distributed Implicit Neural Teaching for SIREN neural fields."""

__version__ = "0.1.0"
