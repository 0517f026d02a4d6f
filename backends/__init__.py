"""Domain backends. Importing `backends.builtin` registers each of them with the core."""
