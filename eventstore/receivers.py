"""After events commit, wake the subscribers that handle their types."""

from typing import Any

from django.dispatch import receiver

from eventstore import subscriptions, wakeups
from eventstore.signals import events_appended


@receiver(events_appended, dispatch_uid="eventstore.wake_subscribers")
def wake_interested_subscribers(sender: Any, event_types: list[str], **kwargs: Any) -> None:
    names = [subscriber.name for subscriber in subscriptions.interested_in(event_types)]
    if names:
        wakeups.wake(names)
