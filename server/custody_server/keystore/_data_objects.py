"""Small CKO_DATA objects on the token: state that replicas sharing the token must agree on.

SoftHSM refuses to change CKA_VALUE of an existing data object, so a write creates a new
object and then destroys the old ones. A replica reading in between may see both; each
object carries a write generation in CKA_APPLICATION ("custody#<n>") and readers take the
highest. Callers hold the module lock.
"""

from __future__ import annotations

from typing import Any

import pkcs11
from pkcs11 import Attribute, ObjectClass

from custody_server.keystore._handles import find_objects

_APPLICATION_PREFIX = "custody#"


def _ours(session: pkcs11.Session, label: str) -> list[tuple[int, Any]]:
    """(generation, object) of our data objects labelled `label`, newest first."""
    found: list[tuple[int, Any]] = []
    for data_object in find_objects(
        session, {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}
    ):
        application = str(data_object[Attribute.APPLICATION])
        generation = application.removeprefix(_APPLICATION_PREFIX)
        if application.startswith(_APPLICATION_PREFIX) and generation.isdigit():
            found.append((int(generation), data_object))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def read_data_object(session: pkcs11.Session, label: str) -> bytes | None:
    objects = _ours(session, label)
    if not objects:
        return None
    return bytes(objects[0][1][Attribute.VALUE])


def write_data_object(session: pkcs11.Session, label: str, value: bytes) -> None:
    previous = _ours(session, label)
    generation = previous[0][0] + 1 if previous else 1
    session.create_object(
        {
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,  # readable only after login
            Attribute.MODIFIABLE: False,
            Attribute.LABEL: label,
            Attribute.APPLICATION: f"{_APPLICATION_PREFIX}{generation}",
            Attribute.VALUE: value,
        }
    )
    for _, old in previous:
        old.destroy()


def delete_data_object(session: pkcs11.Session, label: str) -> bool:
    """Destroy our data objects labelled `label`; False if there was none."""
    objects = _ours(session, label)
    for _, data_object in objects:
        data_object.destroy()
    return bool(objects)
