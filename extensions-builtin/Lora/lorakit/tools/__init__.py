"""Command-line and tab tools: merge LoRAs into a checkpoint, extract a LoRA, combine LoRAs."""
