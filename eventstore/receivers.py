"""After events commit, wake the partitions of the subscribers that handle their types."""

from typing import Any

from django.dispatch import receiver

from eventstore import subscribers, wakeups
from eventstore.signals import events_appended


@receiver(events_appended, dispatch_uid="eventstore.wake_subscribers")
def wake_interested_subscribers(
    sender: Any, stream_id: str, event_types: list[str], **kwargs: Any
) -> None:
    targets = [
        (subscriber.name, subscribers.partition_for(subscriber, stream_id).number)
        for subscriber in subscribers.interested_in(event_types)
    ]
    if targets:
        wakeups.wake(targets)
