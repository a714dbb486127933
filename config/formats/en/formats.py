"""Date and time formats of the admin (Django's format syntax): one timestamp layout,
ISO-like and sortable, with its time zone, wherever a page shows one."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"
