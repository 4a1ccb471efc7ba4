"""gridcase services: one package per service."""
