"""emotion-circuits: where and how language models represent emotions inferred from situations."""
__version__ = "0.1.0"
