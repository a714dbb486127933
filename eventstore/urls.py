"""Event store read API (the staff event feed)."""

urlpatterns: list = []
