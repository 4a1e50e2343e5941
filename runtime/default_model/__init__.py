"""The bundled default model (a model directory; see ARCHITECTURE.md)."""
