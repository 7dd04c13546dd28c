"""The one error every dataset reader, writer and importer raises."""

from trainables.errors import InputError


class DatasetError(InputError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message always starts with the file (or folder) at fault and says what is wrong, in one line,
    so a command-line tool can print it as is.
    """
