"""JobQL's schedules beside django-celery-beat's PeriodicTask (made by makemigrations)."""

import django.db.models.deletion
import uuid
from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]

    initial = True

    dependencies = [
        ('django_celery_beat', '0019_alter_periodictasks_options'),
    ]

    operations = [
        migrations.CreateModel(
            name='ScheduleOwner',
            fields=[
                ('owner', models.CharField(max_length=255, primary_key=True, serialize=False)),
            ],
        ),
        migrations.CreateModel(
            name='Schedule',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('owner', models.CharField(max_length=255)),
                ('name', models.CharField(max_length=100)),
                ('input', models.JSONField(default=dict, help_text='The input as clients read it.')),
                ('timezone', models.CharField(default='UTC', max_length=64)),
                ('created_at', models.DateTimeField()),
                ('updated_at', models.DateTimeField()),
                ('last_run_at', models.DateTimeField(blank=True, null=True)),
                ('last_job_id', models.CharField(blank=True, max_length=64, null=True)),
                ('periodic_task', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='jobql', to='django_celery_beat.periodictask')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('owner', 'name'), name='jobql_schedule_owner_name')],
            },
        ),
    ]
