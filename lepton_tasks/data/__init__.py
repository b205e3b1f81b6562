"""Dataset readers and the normalized snapshot format."""
