"""What `retainer validate` notes about a rule file that is valid but probably not what its author meant.

A recipient and a template are open-ended on purpose: `to:` takes a role or any manager id, and `template:`
takes a template the file defines or an id the host knows. So a typo cannot be an error; a value one
letter from a role, or from a template the file defines, is worth a note.
"""

from __future__ import annotations

from ..errors import did_you_mean
from .loader import RuleSet

#: who `assignee:` and `to:` can name besides a manager id (the engine's roles)
ROLES = ("manager", "supervisor", "new_manager")


def near_misses(rules: RuleSet) -> list[str]:
    """Recipients and templates one typo away from a role or a defined template, once per rule and value."""
    out: list[str] = []
    templates = list(rules.file.templates)
    for r in rules.rules:
        for spec in r.then:
            p = spec.params
            whom = getattr(p, "assignee", None) or getattr(p, "to", None)
            if isinstance(whom, str) and whom not in ROLES and (hint := did_you_mean(whom, ROLES)):
                out.append(f"rule {r.id}: {spec.type} for {whom!r} goes to a manager of that id{hint}")
            t = getattr(p, "template", None)
            if isinstance(t, str) and t not in rules.file.templates and (hint := did_you_mean(t, templates)):
                out.append(f"rule {r.id}: template {t!r} is not defined in this file, so the host gets it as an id, "
                           f"with no subject or body{hint}")
    return list(dict.fromkeys(out))  # a ladder's steps are rules of one id
