"""The inference server: observation -> action chunk, batched across robots, hot-swapped on deploy."""
