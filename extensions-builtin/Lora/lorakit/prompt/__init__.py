"""The prompt layer: `<lora:...>` tags, block weights, step schedules, trigger words, infotext, the handler."""
