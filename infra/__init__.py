"""Infrastructure: settings, topic creation, migrations, embedded broker and database, CLI."""
