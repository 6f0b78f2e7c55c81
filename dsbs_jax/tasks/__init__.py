"""Importing this module registers the SeqIO tasks and mixtures of every task card.

Built-in cards live in `dsbs_jax/tasks/cards/` (the top-level `tasks/` folder); folders listed
in $DSBS_CARDS add a user's own. Works from Python (`import dsbs_jax.tasks`), from gin, and for
seqio's scripts (`--module_import=dsbs_jax.tasks`). No data or vocabulary is read here.
"""

from dsbs_jax.data.cards import all_cards
from dsbs_jax.data.tasks import register_card_tasks

REGISTERED: dict[str, list[str]] = {
    name: register_card_tasks(card) for name, card in sorted(all_cards().items())
}
