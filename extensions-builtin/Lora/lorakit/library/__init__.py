"""LoRA files on disk: the registry, sidecar user metadata, companion files, bundled demo files."""
