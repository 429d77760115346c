"""retainer: declarative client-retention rules for CRMs.

Read facts, evaluate rules as of an explicit instant, get a deterministic, explained plan of
actions for the host CRM to execute.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .actions import (
    Action,
    AnyAction,
    CreateDeal,
    CreateTask,
    Escalate,
    NotifyClient,
    NotifyManager,
    ProposeOffer,
    Reassign,
    StartProcess,
    Suppression,
    Tag,
    Untag,
    parse_action,
)
from .engine import Engine, Explanation
from .errors import (
    ArgumentError,
    DataError,
    DispatchError,
    RetainerError,
    RulesError,
    RunInProgressError,
    StoreBusyError,
    StoreError,
)
from .ledger import LedgerEntry, RunRecord, RunReport, Status
from .model import Client, Contract, Deal, Invoice, Manager, Offer, Task, Touch
from .plan import Plan
from .rules.loader import RuleSet, load_rules
from .stores import MemoryStore, SQLiteStore, Store, open_store

__all__ = [
    "Action",
    "AnyAction",
    "ArgumentError",
    "Client",
    "Contract",
    "CreateDeal",
    "CreateTask",
    "DataError",
    "Deal",
    "DispatchError",
    "Engine",
    "Escalate",
    "Explanation",
    "Invoice",
    "LedgerEntry",
    "Manager",
    "MemoryStore",
    "NotifyClient",
    "NotifyManager",
    "Offer",
    "Plan",
    "ProposeOffer",
    "Reassign",
    "RetainerError",
    "RuleSet",
    "RulesError",
    "RunInProgressError",
    "RunRecord",
    "RunReport",
    "SQLiteStore",
    "StartProcess",
    "Status",
    "Store",
    "StoreBusyError",
    "StoreError",
    "Suppression",
    "Tag",
    "Task",
    "Touch",
    "Untag",
    "__version__",
    "load_rules",
    "open_store",
    "parse_action",
]
