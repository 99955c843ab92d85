"""Automation conditions the assets share (the retraining policy is in ``assets.training``)."""

import dagster as dg


def eager_except(*deps: str) -> dg.AutomationCondition:
    """``eager()``, except that an update of ``deps`` alone does not trigger it (they must still be present
    and not in progress). Declared where an asset follows one input through another: the embeddings follow
    a new mosaic, not the features that a new mosaic always comes after."""
    updated = dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets(*deps))
    return dg.AutomationCondition.eager().replace("any_deps_updated", updated)
