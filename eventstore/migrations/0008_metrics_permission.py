"""The permission to read /metrics (config/metrics.py), on the subscribers' model."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("eventstore", "0007_personal_keys"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="checkpoint",
            options={
                "ordering": ["name", "partition"],
                "permissions": [("view_metrics", "Can read the service's metrics (/metrics)")],
                "verbose_name": "subscriber",
                "verbose_name_plural": "subscribers",
            },
        ),
    ]
