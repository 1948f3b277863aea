"""Record sources; importing this package registers them."""
from clipipe.records.sources import command, file, http, sql  # noqa: F401
