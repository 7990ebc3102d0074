"""The campaign engine: audience freezing, rendering, the runner and the campaign state machine."""
