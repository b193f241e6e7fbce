"""``offshelf serve``: every flag is also an environment variable, e.g. --max-batch-size or OFFSHELF_MAX_BATCH_SIZE."""

from __future__ import annotations

import sys

from pydantic_settings import CliApp

from offshelf.service import logs
from offshelf.service.server import serve
from offshelf.service.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    settings = CliApp.run(ServiceSettings, cli_args=sys.argv[1:] if argv is None else argv)
    logs.configure(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
