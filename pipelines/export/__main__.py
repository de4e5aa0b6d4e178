"""`python -m pipelines.export`: see pipelines/export/command.py."""

from pipelines.export.command import main

main()
