"""istanas: ISTA-NAS and TE-NAS algorithms (sparse recovery, super-nets, searches, training engine)."""

__version__ = "0.1.0"
