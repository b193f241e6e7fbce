"""The export tool's one error: a problem with the user's request, whose message says what to fix."""


class ExportError(Exception):
    pass
