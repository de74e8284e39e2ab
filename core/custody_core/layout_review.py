"""What SignLayout checks in a layout beyond its syntax, before anything is signed.

- A step's threshold counts functionaries, and a functionary is a key: a step whose
  `pubkeys` name fewer distinct keys than its threshold can never be met in Custody,
  and in in-toto-verify it can be met by one key listed under two keyids (a legacy and a
  modern keyid, or two schemes), since the reference counts keyids. Refused.
- A listed key that cannot verify (a scheme securesystemslib does not know, material
  that does not parse): in-toto-verify refuses the whole layout. Refused.
- A key whose scheme Custody and securesystemslib verify but in-toto 3.1 does not load
  (rsassa-pss-sha224, rsa-pkcs1v15-sha224): signed, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from custody_core.models import Layout, Step

__all__ = ["LayoutReview", "review_layout"]


@dataclass(frozen=True)
class LayoutReview:
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]


def review_layout(layout: Layout) -> LayoutReview:
    refusals = [
        f"layout key {keyid[:8]} cannot verify: {reason}; in-toto-verify refuses a layout "
        "that lists it"
        for keyid, reason in layout.unusable_keys.items()
    ]
    refusals += [r for step in layout.steps if (r := _threshold_shortfall(layout, step))]
    warnings = [
        f"layout key {key.keyid[:8]} has scheme {key.scheme}, which Custody verifies but "
        "in-toto 3.1 does not load: in-toto-verify refuses this layout"
        for key in layout.keys.values()
        if not key.in_reference
    ]
    return LayoutReview(tuple(refusals), tuple(warnings))


def _threshold_shortfall(layout: Layout, step: Step) -> str | None:
    keyids_of: dict[str, list[str]] = {}  # key material -> the keyids it is listed under
    absent: list[str] = []
    for keyid in dict.fromkeys(step.pubkeys):
        key = layout.keys.get(keyid)
        if key is None:
            absent.append(keyid[:8])
        else:
            keyids_of.setdefault(key.material, []).append(keyid[:8])
    if len(keyids_of) >= step.threshold:
        return None
    details = [f"keyids {', '.join(ids)} are one key" for ids in keyids_of.values()
               if len(ids) > 1]
    if absent:
        details.append(f"{', '.join(absent)} not in the layout's usable keys")
    why = f" ({'; '.join(details)})" if details else ""
    return (
        f"step '{step.name}' has threshold {step.threshold} but its pubkeys name "
        f"{len(keyids_of)} distinct key(s){why}: a functionary is a key, and in-toto-verify, "
        "which counts keyids, could accept one key's links as several"
    )
