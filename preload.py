"""Host command-line flags. Each extension may add its own flags in its own `preload.py` (same `preload(parser)`)."""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    """Register the host's flags on `parser`."""
    parser.add_argument("--port", type=int, default=7860, help="port to serve the UI and API on")
    parser.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 instead of 127.0.0.1")
    parser.add_argument("--data-dir", type=str, default=None, help="base folder for models, outputs, config.json")
    parser.add_argument("--models-dir", type=str, default=None, help="folder holding Stable-diffusion/, Lora/, ...")
    parser.add_argument("--ckpt-dir", type=str, default=None, help="folder with checkpoints")
    parser.add_argument("--ckpt", type=str, default=None, help="checkpoint to load at start (name or path)")
    parser.add_argument("--vae-dir", type=str, default=None, help="folder with VAE files (default: models/VAE)")
    parser.add_argument("--styles-file", type=str, default=None, help="prompt styles CSV (default: styles.csv in "
                        "the data folder)")
    parser.add_argument("--outputs-dir", type=str, default=None, help="folder for generated images")
    parser.add_argument("--api-auth", type=str, default=None,
                        help="user:pass[,user2:pass2] HTTP basic auth for the API and every UI request that writes or generates")
    parser.add_argument("--gradio-auth", type=str, default=None,
                        help="user:pass[,user2:pass2] HTTP basic auth for the whole UI (as A1111's flag)")
    parser.add_argument("--allowed-hosts", type=str, default=None,
                        help="comma-separated Host names the server answers besides its bind address (reverse proxies; * = any)")
    parser.add_argument("--nowebui", action="store_true", help="serve the API only")
    parser.add_argument("--device", type=str, default=None, help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--precision", choices=["auto", "float32", "float16", "bfloat16", "full", "half", "autocast"],
                        default="auto", help="model dtype: auto = float32 on CPU, float16 on CUDA (A1111's full = "
                        "float32, half = float16, autocast = auto)")
    parser.add_argument("--no-hashing", action="store_true", help="do not compute file hashes")
    parser.add_argument("--no-embedded-default", action="store_true",
                        help="do not write the tiny demo checkpoint and LoRAs into an empty models folder")
    parser.add_argument("--disable-extensions", action="store_true", help="load no extension from extensions/")
