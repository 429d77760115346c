"""Guards applied after rules propose. Each held-back action becomes a `Suppression` with a code.

Reason codes are part of the public contract (DESIGN §4); extensions are documented in docs/.
"""

from __future__ import annotations

from typing import Final

DO_NOT_CONTACT: Final = "do_not_contact"
NO_ELIGIBLE_MANAGER: Final = "no_eligible_manager"
NO_RECIPIENT: Final = "no_recipient"  # extension: an escalation/task whose recipient does not exist
DUPLICATE: Final = "duplicate"

REASON_CODES: Final = (DO_NOT_CONTACT, NO_ELIGIBLE_MANAGER, NO_RECIPIENT, DUPLICATE)


def do_not_contact(contact_policy: str | None) -> str | None:
    """Always on: a client who asked not to be contacted gets no action at all, internal ones included,
    because every action retainer plans (a task to call, a reassignment to a new manager who will
    call, an offer) exists to lead to a contact. Returns the detail when the client is blocked."""
    if contact_policy == "do_not_contact":
        return "the client's contact_policy is do_not_contact"
    return None
