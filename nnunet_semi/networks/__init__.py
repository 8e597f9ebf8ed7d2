"""Plain torch modules and module utilities. Nothing here imports a trainer."""
