"""The web layer: the HTTP API, the card page routes and the LoRA tools tab."""
