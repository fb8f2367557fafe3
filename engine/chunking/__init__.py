"""Chunking: documents cut into token-sized chunks with the model's own tokenizer."""
