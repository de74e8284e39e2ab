"""The Node/TypeScript client (clients/node) and its example agent, against the real server
(a package, so that its helpers import relatively and type-check)."""
