"""The WebUI host: paths, options, model loading, generation, API and UI shell."""
