from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("testapp", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="BatchLog",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("pid", models.IntegerField()),
                ("started", models.FloatField()),
                ("finished", models.FloatField()),
                ("events", models.IntegerField()),
            ],
            options={"db_table": "testapp_batch_log"},
        ),
    ]
