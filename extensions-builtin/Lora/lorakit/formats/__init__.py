"""File formats: reading LoRA files safely, key families and the key resolver, model families, blocks."""
