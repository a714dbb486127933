"""Settings, read from environment variables (documented one by one in ``.env.example``).

Precedence: the process environment, then ``.env``, then ``.data/embedded.env``, which
``scripts/up.sh`` writes when it starts the embedded PostgreSQL and Redis because no
``DATABASE_URL`` / ``REDIS_URL`` was given, then (outside production only)
``.data/personal-data.env``, the development keys of personal data up.sh makes once.
"""

import ipaddress
from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF
from kombu import Queue

from config import logs

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".data"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
environ.Env.read_env(DATA_DIR / "embedded.env", overwrite=False)

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
PRODUCTION = DJANGO_ENV == "production"

_INSECURE_KEY = "django-insecure-development-only-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="" if PRODUCTION else _INSECURE_KEY)
if PRODUCTION and (not SECRET_KEY or SECRET_KEY.startswith("django-insecure")):
    raise environ.ImproperlyConfigured("SECRET_KEY must be set to a strong value in production")

if not PRODUCTION:
    environ.Env.read_env(DATA_DIR / "personal-data.env", overwrite=False)

DEBUG = env.bool("DEBUG", default=not PRODUCTION)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "eventstore",
    "users",
    "sagas",
]

MIDDLEWARE = [
    # First: every answer, the guards' too, carries the request and correlation ids.
    "config.request_context.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
    "config.middleware.BodySizeLimitMiddleware",
    "config.middleware.NulByteGuardMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during a login into its answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# The event store needs PostgreSQL (xid8, advisory locks, triggers); there is no
# SQLite fallback. Without DATABASE_URL, scripts/up.sh provides an embedded server.
if "DATABASE_URL" not in env:
    raise environ.ImproperlyConfigured(
        "DATABASE_URL is not set: run scripts/up.sh (it starts an embedded PostgreSQL "
        "under .data/) or point DATABASE_URL at a PostgreSQL server"
    )
DATABASES = {"default": env.db_url("DATABASE_URL")}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# No JIT compilation: these are short OLTP statements, but the lag count's estimate crosses
# jit_above_cost on a large feed, and compiling then costs many times the query itself.
_pg_options = DATABASES["default"]["OPTIONS"].get("options", "")
DATABASES["default"]["OPTIONS"]["options"] = f"{_pg_options} -c jit=off".strip()
# PostgreSQL prepares the statements of the cursors that ask for it (the append, the
# projections, the user read) once per session instead of parsing and planning them on
# every call. Turn off behind a pooler in transaction mode, where sessions are shared.
if env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
    DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The same backend; its health check skips the round trip while the socket is quiet.
    DATABASES["default"]["ENGINE"] = "config.postgres"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Brute-force protection of password logins (the admin's; the API takes tokens only): a
# username is locked out from one address after this many failures in a row, for the
# cool-off; a success clears the count. Staff unlock in the admin (Axes > Access
# attempts: delete the row) or with manage.py axes_reset_username USERNAME.
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("ADMIN_LOGIN_COOLOFF_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "config.clientip.client_ip"
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
AXES_VERBOSE = False  # no banner from every process that starts; failures are still logged
# --- Personal data (eventstore.personal; README, "Forgetting a person") -------------------
# Master keys (base64 of 32 bytes, comma-separated): the first wraps new person keys,
# every one listed unwraps; `manage.py rotate_master_key` re-wraps under the first.
PERSONAL_DATA_MASTER_KEYS = env.list("PERSONAL_DATA_MASTER_KEYS", default=[])
# Secret of the keyed hashes that stand in for personal values (the email reservation).
PERSONAL_DATA_HMAC_KEY = env.str("PERSONAL_DATA_HMAC_KEY", default="")
if PRODUCTION and not (PERSONAL_DATA_MASTER_KEYS and PERSONAL_DATA_HMAC_KEY):
    raise environ.ImproperlyConfigured(
        "PERSONAL_DATA_MASTER_KEYS and PERSONAL_DATA_HMAC_KEY must be set in production"
    )
# The person keys in a database of their own, so that a copy of the events alone holds
# no key (migrate it with `manage.py migrate --database personal_keys`).
if env.str("PERSONAL_KEYS_DATABASE_URL", default=""):
    DATABASES["personal_keys"] = env.db_url("PERSONAL_KEYS_DATABASE_URL")
    DATABASES["personal_keys"]["CONN_MAX_AGE"] = DATABASES["default"]["CONN_MAX_AGE"]
    DATABASES["personal_keys"]["CONN_HEALTH_CHECKS"] = True
DATABASE_ROUTERS = ["eventstore.routers.PersonalKeysRouter"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# One timestamp format with its time zone in every admin page (config/formats/en).
FORMAT_MODULE_PATH = ["config.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=DATA_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

# Content-Security-Policy of the admin and the API docs (django-csp): nothing from other
# origins; scripts only from this site or inline with the response's nonce
# ({{ request.csp_nonce }}). Inline styles stay allowed: the admin's templates, Swagger UI
# and ReDoc set style attributes. The JSON API sends no policy (config/middleware.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Bodies larger than this are refused before any view sees them.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=64 * 1024)

# --- Redis and Celery -------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if not REDIS_URL:
    raise environ.ImproperlyConfigured(
        "REDIS_URL is not set: run scripts/up.sh (it starts an embedded Redis under "
        ".data/) or point REDIS_URL at a Redis server"
    )

# Django's cache (wake-up de-duplication, idempotency keys, throttling) shares that
# Redis; redis-py spells a unix socket "unix://", kombu "redis+socket://".
CACHES = {
    "default": {
        "BACKEND": "config.cache.RedisCache",
        "LOCATION": REDIS_URL.replace("redis+socket://", "unix://", 1),
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="users"),
        "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=300)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=360)
CELERY_TASK_ALWAYS_EAGER = False
# Celery's Django fix-up closes the database connection around every task unless this is
# set: a new PostgreSQL connection (a server process forked, authentication) per task
# cost more than most of our tasks do. With it, a worker process keeps its connection for
# this many tasks; config/celery.py checks it before each task as Django does per request.
# 0: a new connection for every task.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000) or None
# A command must succeed once its events commit, even with the broker down: publishing
# a wake-up fails fast instead of retrying inside the request (the safety net catches up).
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=1.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=1.0),
    "socket_timeout": 5.0,
    "visibility_timeout": 3600,
}
# The Celery queue of saga steps that send mail; scripts/up.sh serves it with a thread
# pool. A worker started without --queues serves both queues.
MAIL_QUEUE = env.str("MAIL_QUEUE", default="mail")
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = (Queue("celery"), Queue(MAIL_QUEUE))
SUBSCRIBER_SAFETY_NET_SECONDS = env.float("SUBSCRIBER_SAFETY_NET_SECONDS", default=5.0)
# Partition counts that override the subscribers' own, e.g. "users=4,welcome-saga=2". A
# change takes 'manage.py repartition NAME' (or a replay) before the subscriber runs again.
SUBSCRIBER_PARTITIONS = {
    name.strip(): int(count)
    for name, count in env.dict("SUBSCRIBER_PARTITIONS", default={}).items()
}
# A read-your-writes wait answers at once when its event is older than this and its
# partition has not moved for as long: the subscriber is stalled, not busy.
SUBSCRIBER_STALL_SECONDS = env.float("SUBSCRIBER_STALL_SECONDS", default=10.0)
# One task catches a subscriber up for at most this long, then re-queues itself.
SUBSCRIBER_TASK_TIME_BUDGET_SECONDS = env.float("SUBSCRIBER_TASK_TIME_BUDGET_SECONDS", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "wake-all-subscribers": {
        "task": "eventstore.tasks.wake_all_subscribers",
        "schedule": timedelta(seconds=SUBSCRIBER_SAFETY_NET_SECONDS),
        "options": {"expires": SUBSCRIBER_SAFETY_NET_SECONDS},
    },
    "purge-idempotency-keys": {
        "task": "users.tasks.purge_idempotency_keys",
        "schedule": timedelta(hours=1),
    },
    "sweep-due-sagas": {
        "task": "sagas.tasks.sweep_due_sagas",
        "schedule": timedelta(seconds=SUBSCRIBER_SAFETY_NET_SECONDS),
        "options": {"expires": SUBSCRIBER_SAFETY_NET_SECONDS},
    },
}

# --- REST API -----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.negotiation.ContentNegotiation",
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "users.authentication.TokenScopeAllows",
    ],
    # The last class authenticates no one: it rate-limits, per address, the requests the
    # others did not authenticate, before permissions refuse them (401) and so before
    # DEFAULT_THROTTLE_CLASSES would run. Bad tokens count there too, before their lookup.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "users.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "config.throttling.AnonymousRateLimit",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["config.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("THROTTLE_ANON_RATE", default="60/minute"),
        "user": env.str("THROTTLE_USER_RATE", default="6000/minute"),
    },
    "EXCEPTION_HANDLER": "config.errors.problem_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 500,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Proxies (addresses or networks) whose X-Forwarded-For is believed: rate limits and admin
# lockouts key on the client address they report (config/clientip.py). Empty: none.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise environ.ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network (e.g. 10.0.0.0/8)"
        ) from None
# Each process trusts a token it has checked for this long: the bound on revocation in
# other processes (0: look every token up on every request).
API_TOKEN_CACHE_SECONDS = env.float("API_TOKEN_CACHE_SECONDS", default=5.0)
# A repeated POST with the same Idempotency-Key is recognised for this long.
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
# GET ?wait_for=<position> waits at most this long for the read model to catch up.
READ_YOUR_WRITES_TIMEOUT_SECONDS = env.float("READ_YOUR_WRITES_TIMEOUT_SECONDS", default=2.0)
# How many requests of one web process may wait for the read model at once; the others
# answer at once (Read-Model-Caught-Up says where it is), keeping threads free.
READ_YOUR_WRITES_MAX_WAITERS = env.int("READ_YOUR_WRITES_MAX_WAITERS", default=2)

SPECTACULAR_SETTINGS = {
    "TITLE": "Event-sourced user service",
    "DESCRIPTION": "Users as event streams: commands in, events stored, read models out.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No validator badge: Swagger UI would fetch it from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/v1",
    # The credentials clients send; AnonymousRateLimit is an authentication class only to
    # run before permissions, and has nothing to document.
    "AUTHENTICATION_WHITELIST": [
        "users.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

# --- Email (the welcome saga) ----------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
# Where django.core.mail.backends.filebased.EmailBackend writes (one file per connection).
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(DATA_DIR / "mail"))
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="welcome@users.local")
# Seconds a kept SMTP connection may sit unused before the next message opens a new one.
EMAIL_CONNECTION_IDLE_SECONDS = env.float("EMAIL_CONNECTION_IDLE_SECONDS", default=30.0)
WELCOME_DELAY_SECONDS = env.float("WELCOME_DELAY_SECONDS", default=1.0)
# One address gets at most one welcome email in this many seconds, whatever users are
# created and deleted with it.
WELCOME_EMAIL_COOLDOWN_SECONDS = env.float("WELCOME_EMAIL_COOLDOWN_SECONDS", default=86400.0)
SITE_NAME = env.str("SITE_NAME", default="the user service")

# --- Security behind TLS (see README, "Production") -------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$"]

# --- Metrics (config/metrics.py; README, "Observability: metrics") -----------------------
# Off: no request, task or event is counted and /metrics answers 404 (the benchmark's
# reference run, bench/metrics_cost.py).
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
# A bearer token for Prometheus; empty: only staff with METRICS_PERMISSION may scrape.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PERMISSION = "eventstore.view_metrics"
if METRICS_ENABLED:
    MIDDLEWARE.insert(0, "config.metrics.RequestMetricsMiddleware")

# --- Logs, correlation, traces (config/logs.py, config/tracing.py; README "Observability") --
# json: one JSON object per line (production's default); console: readable lines (DEBUG's).
LOG_FORMAT = env.str("LOG_FORMAT", default="console" if DEBUG else "json")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = logs.logging_config(LOG_FORMAT, LOG_LEVEL)
# Traces go to this OTLP collector (http://host:4318 for http/protobuf, or grpc with
# OTEL_EXPORTER_OTLP_PROTOCOL=grpc); unset, no tracing code is loaded.
OTEL_EXPORTER_OTLP_ENDPOINT = env.str("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
