"""vqinc.model."""
