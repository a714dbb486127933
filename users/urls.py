"""Users API routes."""

urlpatterns: list = []
