"""Drop-in interfaces of other libraries, backed by gainet's own implementations."""
