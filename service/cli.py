"""``offshelf serve``: every flag is also an environment variable, e.g. --max-batch-size or OFFSHELF_MAX_BATCH_SIZE.

``--help`` names both; a bad setting is one line on stderr naming it and what it allows, and exit code 2, the
usage code of argparse and of the client commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import CliApp, CliSettingsSource

from offshelf.service import logs
from offshelf.service.settings import ServiceSettings

EXIT_USAGE = 2
NO_RUNTIME = (
    "offshelf serve: onnxruntime is not installed; pip install 'offshelf[cpu]', or 'offshelf[gpu]' on a host with an "
    "NVIDIA GPU"
)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(
            ServiceSettings,
            cli_args=sys.argv[1:] if argv is None else argv,
            cli_settings_source=CliSettingsSource(
                ServiceSettings, cli_show_env_vars=True, add_argument_method=add_argument
            ),
        )
    except ValidationError as err:
        for error in err.errors():
            print(f"offshelf serve: {explain(error)}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level)
    try:  # here, not at the top: onnxruntime comes from an extra, and its absence deserves a sentence
        from offshelf.service.server import serve
    except ModuleNotFoundError as err:
        if err.name != "onnxruntime":
            raise
        print(NO_RUNTIME, file=sys.stderr)
        return 1
    return serve(settings)


def add_argument(parser: argparse.ArgumentParser, *names: str, **options: Any) -> argparse.Action:
    """pydantic-settings' add_argument with a readable metavar: the field's own (settings.py) or its type in
    capitals, where pydantic-settings shows the type's name (int, float, Path)."""
    field = ServiceSettings.model_fields.get(options.get("dest", ""))
    if field is not None and not options["metavar"].startswith("{"):  # {a,b}: the choices, readable already
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        options["metavar"] = str(extra.get("metavar", options["metavar"].upper()))
    return parser.add_argument(*names, **options)


def explain(error: ErrorDetails) -> str:
    """One line naming the setting, as a flag and an environment variable, and what it allows."""
    name = str(error["loc"][0]) if error["loc"] else ""
    setting = f"--{name.replace('_', '-')} / {ServiceSettings.model_config.get('env_prefix', '')}{name.upper()}"
    if error["type"] == "missing":
        return f"{setting} is required"
    # pydantic says what is allowed as "Input should be greater than or equal to 1", "Input should be a valid
    # integer", ...
    return f"{setting} {error['msg'].replace('Input should be', 'must be', 1)}, not {error['input']!r}"


if __name__ == "__main__":
    sys.exit(main())
