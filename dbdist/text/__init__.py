"""Text side of dbdist: the CLIP byte-level BPE tokenizer for prompts."""
