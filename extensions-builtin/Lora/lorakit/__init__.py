"""lorakit: the Lora extension's code, one package with a subpackage per layer (lowest first).

`formats` (file reading, key families, model families, block taxonomy) -> `algorithms` (one module per strategy,
shared math, the one recogniser) -> `library` (files on disk: registry, sidecars, companion files, demos) ->
`engine` (loader, patcher, diffusers method, engine) -> `prompt` (tags, block weights, schedules, trigger words,
infotext, the `lora` extra network) -> `tools` (merge, extract, combine) -> `web` (API, cards, tools tab).
A module imports only from its own layer or lower ones, and the host (`modules/`) never imports this package.
`errors` (the exception root) and `a1111` (the view behind the A1111 facade modules) stand beside the layers.
"""
