"""Key lifecycle tests (a package, so that its helpers import relatively)."""
