"""Record sources; importing this package registers them."""
from clipipe.records.sources import file, http, sql  # noqa: F401
