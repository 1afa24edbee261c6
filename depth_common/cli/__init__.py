"""The command line: ``python -m depth_common <command>`` (parser, commands) and task start-up timing."""
