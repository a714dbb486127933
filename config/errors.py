"""The one error shape of the API: problem details (RFC 9457) for every 4xx and 5xx."""
