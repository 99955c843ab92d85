"""OpenStreetMap input: file checks, streaming import into channel feature layers."""
