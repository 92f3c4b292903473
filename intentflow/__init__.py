"""intentflow: real-time buying intent and next-best action."""

__version__ = "0.1.0"
