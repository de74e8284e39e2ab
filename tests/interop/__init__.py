"""CLI interop tests (a package, so that its helpers import relatively and type-check)."""
