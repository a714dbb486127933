"""Forgetting a person: the erased status, the erase/export permissions, and an email
reservation that holds a keyed hash of the address instead of the address."""

from django.db import migrations, models


def hash_reserved_emails(apps, schema_editor):
    from eventstore.personal import keyed_hash

    EmailReservation = apps.get_model("users", "EmailReservation")
    db = schema_editor.connection.alias
    for reservation in EmailReservation.objects.using(db).all():
        address = reservation.email_hash
        EmailReservation.objects.using(db).filter(email_hash=address).update(
            email_hash=keyed_hash(address)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("users", "0002_api_token_owner_scope_expiry"),
    ]

    operations = [
        migrations.RenameField(
            model_name="emailreservation", old_name="email", new_name="email_hash"
        ),
        migrations.RunPython(hash_reserved_emails, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="userrecord",
            name="status",
            field=models.TextField(
                choices=[("active", "Active"), ("deleted", "Deleted"), ("erased", "Erased")],
                default="active",
            ),
        ),
        migrations.AlterModelOptions(
            name="userrecord",
            options={
                "ordering": ["-created_at", "id"],
                "permissions": [
                    ("erase_user", "Can erase a user's personal data"),
                    ("export_user", "Can export everything stored about a user"),
                ],
                "verbose_name": "user (read model)",
                "verbose_name_plural": "users (read model)",
            },
        ),
    ]
