"""vqinc.runtime."""
