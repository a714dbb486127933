"""Users API routes."""

from django.urls import path

from users.api import UserDetailView, UserEventsView, UserListView
from users.personal_data_api import UserEraseView, UserExportView

urlpatterns = [
    path("users", UserListView.as_view(), name="user-list"),
    path("users/<str:user_id>", UserDetailView.as_view(), name="user-detail"),
    path("users/<str:user_id>/events", UserEventsView.as_view(), name="user-events"),
    path("users/<str:user_id>/erase", UserEraseView.as_view(), name="user-erase"),
    path("users/<str:user_id>/export", UserExportView.as_view(), name="user-export"),
]
