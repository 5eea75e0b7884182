"""Size limits of the protocol, in a module light enough for every command to import."""

DEFAULT_CHUNK_BYTES = 1 << 20   # payload bytes per Chunk by default
MAX_CHUNK_BYTES = 4 << 20       # protocol limit on Chunk.data
# gRPC's own cap on one message: a full Chunk plus room for its header fields.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (64 << 10)
