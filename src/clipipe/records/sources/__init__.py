"""Record sources; importing this package registers them."""
from clipipe.records.sources import command, file, http, sql  # noqa: F401
from clipipe.records.sources import kafka  # noqa: F401  (aiokafka is imported only when it runs)
