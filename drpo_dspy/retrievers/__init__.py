"""In-context examples: the alignment bank, example records, embedders, the vector index."""
