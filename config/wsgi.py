"""WSGI entry point (gunicorn serves ``config.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

from config import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Before the handler loads its middleware: the Django instrumentation adds its own.
tracing.setup("web")
application = get_wsgi_application()
