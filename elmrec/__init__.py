"""elmrec: ELMRec (whole-word, graph-aware T5 recommendation) as a reproducible pipeline."""

__version__ = "0.1.0"
