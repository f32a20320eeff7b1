"""The instants the worker binds into SQL instead of calling a clock function there.

Citus refuses a volatile or stable function (`now()`) in `ON CONFLICT ... DO UPDATE SET` of a
distributed table (docs/scaling.md, worker/distribution.py), so every `updated_at` a
transaction writes is this one value, taken by the worker once per transaction and bound as a
parameter.
"""

from __future__ import annotations

import datetime as dt


def transaction_time() -> dt.datetime:
    """The time a transaction writes into `updated_at`, taken once per transaction by the
    worker and bound as a parameter of every statement that sets it: the SQL calls no `now()`
    where Citus would refuse it (worker/distribution.py), and every row one transaction
    writes carries the same time, as `now()` (the transaction's start) gave them before."""
    return dt.datetime.now(dt.UTC)
