"""Every use of Optuna's private names, fenced in one place (tests/test_compat.py guards them).

Optuna has no public way to reach a study's storage or to fail someone else's RUNNING
trial (``Study.tell`` only takes trials this process asked for); the lost-trial sweep of
``workbench.search`` needs both for journal storages, which have no heartbeat.
"""

from __future__ import annotations


def uses_journal_storage(study) -> bool:
    """True when ``study`` keeps its trials in an ``optuna.storages.JournalStorage``.

    Reads the private ``Study._storage``. If Optuna renames it, this raises AttributeError
    and the journal sweep of dead workers' trials stops working.
    """
    from optuna.storages.journal import JournalStorage

    return isinstance(study._storage, JournalStorage)


def fail_trial(study, trial) -> bool:
    """Mark ``trial`` (a ``FrozenTrial`` of ``study``) FAIL in the study's storage.

    Calls the storage's public ``set_trial_state_values`` with the private
    ``Study._storage`` and ``FrozenTrial._trial_id`` (the storage-wide id, not the
    per-study ``number``). Returns False when another worker changed the state first; raises
    ``optuna.exceptions.UpdateFinishedTrialError`` when the trial has already finished. If
    either private name changes, this raises AttributeError and a dead worker's trial stays
    RUNNING until someone fails it by hand.
    """
    from optuna.trial import TrialState

    return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
