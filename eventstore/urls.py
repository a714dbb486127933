"""Event store API routes (staff only)."""

from django.urls import path

from eventstore.api import EventFeedView, StreamView

urlpatterns = [
    path("events", EventFeedView.as_view(), name="event-feed"),
    path("streams/<str:stream_id>", StreamView.as_view(), name="stream-detail"),
]
