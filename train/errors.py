"""The training tools' one error: a problem with the user's request (data folders, classes, frozen blocks),
whose message says what to fix. Building the network can still raise the export tool's ExportError."""


class TrainError(Exception):
    pass
