"""The person keys of personal data (eventstore.personal); routed to the keys database
when PERSONAL_KEYS_DATABASE_URL is set (eventstore.routers)."""

import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("eventstore", "0006_partitions_and_parking"),
    ]

    operations = [
        migrations.CreateModel(
            name="PersonalKey",
            fields=[
                ("subject", models.TextField(primary_key=True, serialize=False)),
                (
                    "wrapped_key",
                    models.BinaryField(
                        blank=True,
                        help_text="Nonce and AES-GCM ciphertext; NULL once erased.",
                        null=True,
                    ),
                ),
                (
                    "master_key_id",
                    models.TextField(
                        blank=True, default="", help_text="Which master key wraps it."
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                ("erased_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "personal data key",
                "db_table": "personal_keys",
            },
        ),
    ]
