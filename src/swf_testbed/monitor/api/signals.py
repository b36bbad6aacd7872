"""Keep the facet counts right when messages are deleted (admin, retention)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from swf_testbed.monitor.api import facets
from swf_testbed.monitor.api.models import WorkflowMessage


@receiver(post_delete, sender=WorkflowMessage)
def _uncount_deleted_message(
    sender: type[WorkflowMessage], instance: WorkflowMessage, **kwargs: Any
) -> None:
    facets.add_counts([instance], sign=-1)
