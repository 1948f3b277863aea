"""Record steps; importing this package registers them."""
from clipipe.records.steps import exclude, filter, route, sample, select, transform  # noqa: F401
