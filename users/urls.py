"""Users API routes."""

from django.urls import path

from users.api import UserDetailView, UserEventsView, UserListView

urlpatterns = [
    path("users", UserListView.as_view(), name="user-list"),
    path("users/<str:user_id>", UserDetailView.as_view(), name="user-detail"),
    path("users/<str:user_id>/events", UserEventsView.as_view(), name="user-events"),
]
