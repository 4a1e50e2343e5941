"""vqinc.export."""
