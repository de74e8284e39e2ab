"""Key lifecycle: versions of a service key, their overlap windows, and rotation.

- `rotation`: pure rules over versions and time (which version signs, which verify at t).
- `model`: key versions as the rest of the server sees them (alias, keys, lifecycle).
- `keyring`: the service keys by alias and version on the token, with a cached view.
- `token_state`: the lifecycle record of an alias, kept as a data object in the token.
- `guard`: the cross-process lock that makes lifecycle changes happen once.
- `manager`: rotate, retire, destroy and scheduled work, with audit events.
- `scheduler`: the server thread that runs the manager's due work.
- `service_key_policy` and `functionaries`: how Verify and SignLayout use the windows.

Submodules are imported by name; this package imports nothing, so that config.py can use
`durations` without pulling in the key store.
"""
