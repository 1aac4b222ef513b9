"""The engine: loads networks against the loaded model and keeps its weights pristine + the requested LoRAs."""
