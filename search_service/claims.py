"""The claim protocol: how concurrent workers agree on which trial scores a mask.

Workers share nothing but the study's storage, so a mask is claimed there: a trial writes the
mask it means to score to its trial system attribute ``mro:mask`` (``keys.MASK_KEY``) and then
reads the study's trials back (``keeps_claim``). Of two trials claiming one mask, the lower trial
number keeps it; the other claims again (``claim``: at most ``CLAIM_ROUNDS`` rounds, each with a
mask that ``choose`` picks from what the round read). A trial that sees only higher-numbered
rivals waits briefly for them to move on, since they may have checked (and kept the mask)
before its own claim was written; so a mask is never kept twice. A trial that loses every round
withdraws its claim (an empty ``mro:mask``) so that no other trial waits for it.

A claimed mask is the trial's mask from then on (``trial_index.trial_mask``): its retry after a
dead worker keeps it (``storage.RetryStaleTrialCallback``), and the budget and the mask space
count it as held. The sampler (``search_service.sampler``) decides which mask to claim; this
module only settles who keeps it. Nothing here lives only in one process: every decision is
taken on the trials as just read from the storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from search_service.keys import MASK_KEY
from search_service.trial_index import Mask, TrialIndex

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

CLAIM_ROUNDS = 8  # claims a trial makes before it gives up (its trial then gets no mask)
CLAIM_WAIT_S = 5.0  # how long a claim waits for higher-numbered rivals to move on (a rival
# that kept the mask writes its parameters at once: the wait is this long only when its worker
# stalls between its claim and its check, e.g. on a machine with more workers than cores)
CLAIM_POLL_S = 0.02


def mask_text(mask: Sequence[int]) -> str:
    """A mask as stored in ``mro:mask`` (``"0110..."``)."""
    return "".join(str(int(b)) for b in mask)


def claim(study: Study, trial: FrozenTrial, index: TrialIndex, choose: Callable[[int, set[Mask]], Mask | None]) -> tuple[Mask | None, bool]:
    """Claim rounds for ``trial``: each reads the study's trials into ``index``, asks
    ``choose(round, lost)`` for a mask (``lost``: the masks this trial claimed and lost so far;
    None: no mask is left to claim), writes the claim and checks it (``keeps_claim``).

    Returns ``(mask, False)`` for the mask the trial keeps, ``(None, False)`` when ``choose``
    found no mask, ``(None, True)`` when every one of ``CLAIM_ROUNDS`` claims was lost. A lost
    last claim is withdrawn. ``index`` is left updated with the trials as last read."""
    storage = study._storage
    lost: set[Mask] = set()
    for claim_round in range(CLAIM_ROUNDS):
        index.update(storage.get_all_trials(study._study_id, deepcopy=False))
        mask = choose(claim_round, lost)
        if mask is None:
            every_round_lost = False
            break
        storage.set_trial_system_attr(trial._trial_id, MASK_KEY, mask_text(mask))
        if keeps_claim(study, trial, index, mask):
            return mask, False
        lost.add(mask)
    else:
        every_round_lost = True
    if lost:  # withdraw the lost claim: other trials would wait for it or give way to it
        storage.set_trial_system_attr(trial._trial_id, MASK_KEY, "")
    return None, every_round_lost


def keeps_claim(study: Study, trial: FrozenTrial, index: TrialIndex, mask: Mask) -> bool:
    """Whether ``trial`` keeps ``mask``, which it has just claimed (its claim is written);
    ``index`` is left updated with the study's trials as last read.

    Of two trials claiming one mask, the one whose claim was written later always sees the other
    claim here. The lower trial number wins: a trial that sees a rival with a lower number gives
    the mask up at once. A trial that sees only rivals with higher numbers cannot tell whether
    they checked (and kept the mask) before its own claim was written, or will see its claim and
    give the mask up; so it waits for them to claim something else, and gives the mask up as
    soon as one of them has its path parameters (it kept the mask), or if they do not move
    within ``CLAIM_WAIT_S``. A mask is never kept twice, and two trials that claim
    one mask at the same moment settle it in one round (the lower number keeps it).
    """
    storage = study._storage
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        index.update(storage.get_all_trials(study._study_id, deepcopy=False))
        completed, rivals = index.rivals(trial.number, mask)
        if completed:
            return False  # a complete trial has it
        if not rivals:
            return True
        if min(t.number for t in rivals) < trial.number or time.monotonic() >= deadline:
            return False
        if any(t.state == TrialState.COMPLETE or all(p in t.params for p in index.paths) for t in rivals):
            return False  # a rival has its parameters: it kept the mask (no need to wait)
        time.sleep(CLAIM_POLL_S)
