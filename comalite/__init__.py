"""comalite: Compression-then-Matching multimodal embeddings, small enough to read."""
