"""Record steps; importing this package registers them."""
from clipipe.records.steps import exclude, filter, sample, select, transform  # noqa: F401
