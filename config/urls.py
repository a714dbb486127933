"""Top-level URL map: probes, admin, API docs and the versioned API."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from config import errors, health, metrics

# Django tries the patterns in order: the probes (one string each), then the API, which
# takes nearly all the traffic, then the admin and the docs. The prefixes are disjoint,
# so the order changes nothing but the work an API request spends trying the others.
urlpatterns = [
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    path("metrics", metrics.MetricsView.as_view(), name="metrics"),
    path("v1/", include("users.urls")),
    path("v1/", include("eventstore.urls")),
    # Whatever DEBUG says, an unknown API URL is a problem+json 404, never Django's HTML
    # debug page: API clients parse what they get.
    re_path(r"^v1(?:/|$)", errors.api_not_found, name="api-not-found"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file: the CSP allows no
    # inline script without a nonce.
    path("api/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("", RedirectView.as_view(pattern_name="swagger-ui"), name="home"),
]

handler400 = "config.errors.bad_request"
handler403 = "config.errors.permission_denied"
handler404 = "config.errors.not_found"
handler500 = "config.errors.server_error"
